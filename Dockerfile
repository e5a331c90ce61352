# syntax=docker/dockerfile:1
# outbox-dispatcher: multi-stage build, Node 24 LTS, production dependencies only, non-root.
# NODE_IMAGE lets an offline build use a locally made base (scripts/container-smoke.sh).
ARG NODE_IMAGE=node:24-bookworm-slim

FROM ${NODE_IMAGE} AS build
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY tsconfig.json tsconfig.build.json ./
COPY src ./src
RUN npm run build \
 && npm prune --omit=dev --omit=optional --no-audit --no-fund

FROM ${NODE_IMAGE}
# tini as PID 1: forwards SIGTERM to node and reaps zombies.
RUN apt-get update \
 && apt-get install -y --no-install-recommends tini \
 && rm -rf /var/lib/apt/lists/*
# A small young generation keeps RSS flat (docs/performance.md); `run` itself holds old space at
# 2x the live heap (src/kernel/heap.ts: a V8 flag NODE_OPTIONS does not accept, so it is set in
# the process; the bench runs dist/main.js the same way). Add --max-old-space-size sized to
# (OUTBOX_CONCURRENCY + 2 x OUTBOX_BATCH_SIZE) x your largest payloads to cap it.
ENV NODE_ENV=production \
    METRICS_PORT=9464 \
    NODE_OPTIONS=--max-semi-space-size=8
WORKDIR /app
COPY --from=build --chown=root:root /app/node_modules ./node_modules
COPY --from=build --chown=root:root /app/dist ./dist
COPY --chown=root:root package.json ./
COPY --chown=root:root migrations ./migrations
# The command the docs use (`kubectl exec ... -- outbox-dispatcher events stats`): npm's bin,
# linked where PATH finds it. dist/main.js carries its shebang and exec bit from the build.
RUN ln -s /app/dist/main.js /usr/local/bin/outbox-dispatcher \
 && outbox-dispatcher --version
USER node
EXPOSE 9464
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
  CMD ["node", "-e", "fetch(`http://127.0.0.1:${process.env.METRICS_PORT}/healthz`).then(r => process.exit(r.ok ? 0 : 1), () => process.exit(1))"]
# The image needs DATABASE_URL and OUTBOX_ROUTES (no embedded PostgreSQL inside).
ENTRYPOINT ["/usr/bin/tini", "--", "outbox-dispatcher"]
CMD ["run"]
