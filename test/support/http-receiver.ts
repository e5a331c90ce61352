import http from 'node:http';
import type { AddressInfo } from 'node:net';

export interface Received {
  headers: http.IncomingHttpHeaders;
  body: string;
  json: { id: string; eventType: string; restaurantId: string; payload: Record<string, unknown>; createdAt: string; attempt: number };
  at: number;
}

export type Responder = (r: Received) => { status: number; headers?: Record<string, string>; body?: string; delayMs?: number } | Promise<{ status: number; headers?: Record<string, string>; body?: string; delayMs?: number }>;

/** A real HTTP server on loopback that records every request and answers via `respond`. */
export async function startReceiver(respond: Responder = () => ({ status: 200 })) {
  const received: Received[] = [];
  const sockets = new Set<import('node:net').Socket>();
  let responder = respond;
  const server = http.createServer((req, res) => {
    let body = '';
    req.setEncoding('utf8');
    req.on('data', (c: string) => (body += c));
    req.on('end', async () => {
      let json: Received['json'];
      try {
        json = JSON.parse(body);
      } catch {
        json = undefined as never;
      }
      const r: Received = { headers: req.headers, body, json, at: Date.now() };
      received.push(r);
      const answer = await responder(r);
      const send = () => {
        if (res.destroyed) return;
        res.writeHead(answer.status, answer.headers ?? {});
        res.end(answer.body ?? '');
      };
      if (answer.delayMs) setTimeout(send, answer.delayMs);
      else send();
    });
  });
  server.on('connection', (s) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as AddressInfo).port;
  return {
    url: `http://127.0.0.1:${port}/hook`,
    port,
    received,
    setResponder(r: Responder) {
      responder = r;
    },
    async close() {
      for (const s of sockets) s.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
