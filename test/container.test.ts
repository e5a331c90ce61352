import { GenericContainer, Wait, type StartedTestContainer } from 'testcontainers';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createTestDatabase, produce, statusCounts, tenantId, waitFor, type TestDatabase } from './support/db.ts';
import { freePort } from './support/ports.ts';

// The built image, driven by testcontainers. Runs when OUTBOX_IMAGE names a local image
// (scripts/container-smoke.sh builds localhost/outbox-dispatcher:smoke) and a Docker API is
// reachable: Docker on a laptop, or podman's Docker-compatible socket here
// (`podman system service`, DOCKER_HOST=unix:///…, TESTCONTAINERS_RYUK_DISABLED=true).

const image = process.env.OUTBOX_IMAGE;

describe.skipIf(!image)('the container image', () => {
  let db: TestDatabase;
  let container: StartedTestContainer | undefined;
  beforeAll(async () => {
    db = await createTestDatabase();
  });
  afterAll(async () => {
    await container?.stop({ timeout: 30_000 });
    await db.drop();
  });

  it('starts as a non-root user, reports healthy, and dispatches an event', async () => {
    const port = await freePort();
    container = await new GenericContainer(image!)
      .withNetworkMode('host')
      .withEnvironment({
        DATABASE_URL: db.workerUrl,
        METRICS_PORT: String(port),
        OUTBOX_ROUTES: JSON.stringify({ routes: [{ match: '*', sink: { type: 'log' } }] }),
      })
      .withWaitStrategy(Wait.forLogMessage(/outbox dispatcher running/))
      .withStartupTimeout(60_000)
      .start();
    expect((await container.exec(['whoami'])).output.trim()).toBe('node');
    expect(await (await fetch(`http://127.0.0.1:${port}/healthz`)).json()).toEqual({ status: 'ok' });
    const [id] = await produce(db.producerUrl, tenantId(), [{ type: 'container.test' }]);
    await waitFor(async () => (await statusCounts(db)).done === 1, { what: 'event dispatched by the container' });
    const logs = await new Promise<string>((resolve) => {
      let out = '';
      void container!.logs().then((s) => {
        s.on('data', (d: Buffer | string) => (out += d.toString()));
        setTimeout(() => resolve(out), 1000);
      });
    });
    expect(logs).toContain(`"eventId":"${id}"`);
  }, 120_000);
});
