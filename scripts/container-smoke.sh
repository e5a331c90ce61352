#!/usr/bin/env bash
# Builds the image with buildah (vfs storage, chroot isolation: no Docker engine needed), runs it
# with podman against a PostgreSQL, and checks /healthz and one dispatched event.
#   DATABASE_ADMIN_URL  superuser URL of the PostgreSQL to test against (default the local 5432)
#   NODE_IMAGE          base image; default: pull node:24-bookworm-slim, else build a local one
set -euo pipefail
cd "$(dirname "$0")/.."
ADMIN_URL="${DATABASE_ADMIN_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
STORAGE=(--storage-driver vfs)
TAG=localhost/outbox-dispatcher:smoke
DB="outbox_smoke_$$"
PORT=$((20000 + RANDOM % 20000))

if [ -z "${NODE_IMAGE:-}" ]; then
  if buildah "${STORAGE[@]}" pull -q docker.io/library/node:24-bookworm-slim >/dev/null 2>&1; then
    NODE_IMAGE=docker.io/library/node:24-bookworm-slim
  else
    echo "no registry reachable: building a local Node 24 base image"
    scripts/container-base.sh localhost/outbox-node24-base
    NODE_IMAGE=localhost/outbox-node24-base
  fi
fi

echo "== build $TAG on $NODE_IMAGE"
buildah "${STORAGE[@]}" bud --isolation chroot --network host --layers=false \
  --build-arg NODE_IMAGE="$NODE_IMAGE" -t "$TAG" -f Dockerfile . >/tmp/outbox-smoke-build.log 2>&1 \
  || { tail -40 /tmp/outbox-smoke-build.log; exit 1; }

echo "== database $DB"
psql "$ADMIN_URL" -qc "CREATE DATABASE $DB"
DB_URL="${ADMIN_URL%/*}/$DB"
cleanup() {
  podman "${STORAGE[@]}" rm -f outbox-smoke >/dev/null 2>&1 || true
  psql "$ADMIN_URL" -qc "DROP DATABASE IF EXISTS $DB WITH (FORCE)" || true
}
trap cleanup EXIT
# Migrations ship in the image: run them from it, as the owner.
podman "${STORAGE[@]}" run --rm --network host --entrypoint node "$TAG" dist/main.js migrate --database-url "$DB_URL"
psql "$DB_URL" -qc "DO \$\$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'outbox_smoke') THEN CREATE ROLE outbox_smoke LOGIN PASSWORD 'smoke'; END IF; END \$\$; GRANT app_background TO outbox_smoke; GRANT app_producer TO outbox_smoke;"
WORKER_URL="$(echo "$DB_URL" | sed -E 's#//[^@/]+@#//outbox_smoke:smoke@#; s#//([^@/]+)/#//outbox_smoke:smoke@\1/#')"

echo "== run"
podman "${STORAGE[@]}" run -d --name outbox-smoke --network host \
  -e DATABASE_URL="$WORKER_URL" -e METRICS_PORT="$PORT" \
  -e OUTBOX_ROUTES='{"routes":[{"match":"*","sink":{"type":"log"}}]}' "$TAG" >/dev/null
for _ in $(seq 1 60); do curl -fs "http://127.0.0.1:$PORT/healthz" >/dev/null && break; sleep 0.5; done
curl -fs "http://127.0.0.1:$PORT/healthz"
podman "${STORAGE[@]}" exec outbox-smoke whoami | grep -qx node && echo "runs as: node"
ID=$(podman "${STORAGE[@]}" exec outbox-smoke node dist/main.js enqueue --type smoke.test --tenant 11111111-1111-4111-8111-111111111111 --json | node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>console.log(JSON.parse(s).inserted[0]))')
for _ in $(seq 1 60); do podman "${STORAGE[@]}" logs outbox-smoke 2>&1 | grep -q "\"eventId\":\"$ID\"" && break; sleep 0.5; done
podman "${STORAGE[@]}" logs outbox-smoke 2>&1 | grep "\"eventId\":\"$ID\"" | grep -q 'event delivered to log sink'
echo "dispatched $ID from inside the container"
podman "${STORAGE[@]}" stop -t 30 outbox-smoke >/dev/null
echo "exit code after SIGTERM: $(podman "${STORAGE[@]}" inspect outbox-smoke --format '{{.State.ExitCode}}')"
echo "container smoke test passed"
