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
buildah "${STORAGE[@]}" bud --isolation chroot --network host --layers=false --format docker \
  --build-arg NODE_IMAGE="$NODE_IMAGE" -t "$TAG" -f Dockerfile . >/tmp/outbox-smoke-build.log 2>&1 \
  || { tail -40 /tmp/outbox-smoke-build.log; exit 1; }
buildah "${STORAGE[@]}" inspect --format '{{.Docker.Config.Healthcheck.Test}} user={{.Docker.Config.User}}' "$TAG"

# podman with runc; in sandboxes where runc may not set podman's default rlimits ("error setting
# rlimits ... operation not permitted"), without those defaults; failing that, buildah's chroot.
if ! podman "${STORAGE[@]}" run --rm --network host "$TAG" --version >/dev/null 2>&1; then
  printf '[containers]\ndefault_ulimits = []\n' > /tmp/outbox-containers.conf
  export CONTAINERS_CONF=/tmp/outbox-containers.conf
fi
if podman "${STORAGE[@]}" run --rm --network host "$TAG" --version >/dev/null 2>&1; then
  RUNNER=podman
else
  RUNNER=buildah
  buildah "${STORAGE[@]}" rm outbox-smoke >/dev/null 2>&1 || true
  buildah "${STORAGE[@]}" from --name outbox-smoke "$TAG" >/dev/null
fi
echo "== runner: $RUNNER"
# in_image <args...>: run `outbox-dispatcher <args>` inside the image by name (as
# `kubectl exec deploy/outbox-dispatcher -- outbox-dispatcher ...` does), in the foreground.
in_image() {
  if [ "$RUNNER" = podman ]; then podman "${STORAGE[@]}" run --rm --network host "${ENVS[@]}" --entrypoint outbox-dispatcher "$TAG" "$@"
  else buildah "${STORAGE[@]}" run --isolation chroot --network host "${ENVS[@]}" outbox-smoke -- outbox-dispatcher "$@"; fi
}

echo "== database $DB"
psql "$ADMIN_URL" -qc "CREATE DATABASE $DB"
DB_URL="${ADMIN_URL%/*}/$DB"
DAEMON_PID=""
cleanup() {
  [ -n "$DAEMON_PID" ] && kill -9 "$DAEMON_PID" 2>/dev/null || true
  podman "${STORAGE[@]}" rm -f outbox-smoke >/dev/null 2>&1 || true
  buildah "${STORAGE[@]}" rm outbox-smoke >/dev/null 2>&1 || true
  psql "$ADMIN_URL" -qc "DROP DATABASE IF EXISTS $DB WITH (FORCE)" || true
}
trap cleanup EXIT
ENVS=()
echo "== outbox-dispatcher on the image's PATH: $(in_image --version)"
# Migrations ship in the image: run them from it, as the owner.
in_image migrate --database-url "$DB_URL"
# Two logins, as deployed: the daemon's (app_background) and a producer's (app_producer). The
# daemon refuses a login that is both (the producer policy demands a tenant context).
psql "$DB_URL" -qc "DO \$\$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'outbox_smoke') THEN CREATE ROLE outbox_smoke LOGIN PASSWORD 'smoke'; END IF; IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'outbox_smoke_producer') THEN CREATE ROLE outbox_smoke_producer LOGIN PASSWORD 'smoke'; END IF; END \$\$; GRANT app_background TO outbox_smoke; REVOKE app_producer FROM outbox_smoke; GRANT app_producer TO outbox_smoke_producer;"
WORKER_URL="$(echo "$DB_URL" | sed -E 's#//[^@/]+@#//outbox_smoke:smoke@#')"
PRODUCER_URL="$(echo "$DB_URL" | sed -E 's#//[^@/]+@#//outbox_smoke_producer:smoke@#')"
ENVS=(-e "DATABASE_URL=$WORKER_URL" -e "METRICS_PORT=$PORT" -e 'OUTBOX_ROUTES={"routes":[{"match":"*","sink":{"type":"log"}}]}')

echo "== run the daemon from the image"
LOG=/tmp/outbox-smoke-daemon.log
if [ "$RUNNER" = podman ]; then
  podman "${STORAGE[@]}" run -d --name outbox-smoke --network host "${ENVS[@]}" "$TAG" >/dev/null
  (podman "${STORAGE[@]}" logs -f outbox-smoke >"$LOG" 2>&1 &)
else
  buildah "${STORAGE[@]}" run --isolation chroot --network host "${ENVS[@]}" outbox-smoke -- outbox-dispatcher run >"$LOG" 2>&1 &
  DAEMON_PID=$!
fi
for _ in $(seq 1 60); do curl -fs "http://127.0.0.1:$PORT/healthz" >/dev/null && break; sleep 0.5; done
echo "healthz: $(curl -fs "http://127.0.0.1:$PORT/healthz")"
for _ in $(seq 1 40); do grep -q '"msg":"outbox dispatcher running"' "$LOG" && break; sleep 0.25; done
grep -q '"msg":"outbox dispatcher running"' "$LOG"
ID=$(in_image enqueue --database-url "$PRODUCER_URL" --type smoke.test --tenant 11111111-1111-4111-8111-111111111111 --json | node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>console.log(JSON.parse(s).inserted[0]))')
for _ in $(seq 1 60); do grep -q "\"eventId\":\"$ID\"" "$LOG" && break; sleep 0.5; done
grep "\"eventId\":\"$ID\"" "$LOG" | grep -q 'event delivered to log sink'
echo "dispatched $ID from inside the image"
if [ "$RUNNER" = podman ]; then
  podman "${STORAGE[@]}" stop -t 30 outbox-smoke >/dev/null
  podman "${STORAGE[@]}" logs outbox-smoke 2>/dev/null | grep -q '"msg":"shutdown complete"'
  echo "graceful shutdown on SIGTERM (tini as PID 1), exit code $(podman "${STORAGE[@]}" inspect outbox-smoke --format '{{.State.ExitCode}}')"
else
  kill -TERM "$DAEMON_PID"; wait "$DAEMON_PID" || true; DAEMON_PID=""
  echo "(buildah run does not forward SIGTERM; tini does in a real container runtime)"
fi
echo "container smoke test passed"

if [ "$RUNNER" = podman ] && [ "${SKIP_TESTCONTAINERS:-}" != 1 ]; then
  echo "== testcontainers through podman's Docker-compatible socket"
  SOCK=/tmp/outbox-podman.sock
  podman "${STORAGE[@]}" system service --time=0 "unix://$SOCK" >/tmp/outbox-podman-service.log 2>&1 &
  SERVICE_PID=$!
  for _ in $(seq 1 40); do [ -S "$SOCK" ] && break; sleep 0.25; done
  OUTBOX_IMAGE="$TAG" DOCKER_HOST="unix://$SOCK" TESTCONTAINERS_RYUK_DISABLED=true TEST_DATABASE_URL="$ADMIN_URL" \
    npx vitest run test/container.test.ts
  kill "$SERVICE_PID" 2>/dev/null || true
fi
