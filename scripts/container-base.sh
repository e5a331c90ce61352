#!/usr/bin/env bash
# Builds a local stand-in for node:24-bookworm-slim when no container registry is reachable:
# a Debian bookworm rootfs from debootstrap, the Node 24 binary from the npm registry's `node`
# package (node_modules/node, a dev dependency) and npm from the registry, user `node` (uid 1000).
# Usage: scripts/container-base.sh [image-name]   (default localhost/outbox-node24-base)
set -euo pipefail
cd "$(dirname "$0")/.."
IMAGE="${1:-localhost/outbox-node24-base}"
WORK="${CONTAINER_WORK:-/tmp/outbox-container}"
STORAGE=(--storage-driver vfs)
mkdir -p "$WORK"

if buildah "${STORAGE[@]}" inspect --type image "$IMAGE" >/dev/null 2>&1; then
  echo "base image $IMAGE exists"
  exit 0
fi
if [ ! -x "$WORK/rootfs/bin/sh" ]; then
  debootstrap --variant=minbase bookworm "$WORK/rootfs" http://deb.debian.org/debian
fi
ROOTFS="$WORK/rootfs"
NODE_BIN="$(readlink -f node_modules/node/bin/node)"
"$NODE_BIN" --version | grep -q '^v24\.' || { echo "node_modules/node is not Node 24; run npm ci" >&2; exit 1; }
install -m 0755 "$NODE_BIN" "$ROOTFS/usr/local/bin/node"
rm -rf "$ROOTFS/usr/local/lib/node_modules/npm" && mkdir -p "$ROOTFS/usr/local/lib/node_modules"
(cd "$WORK" && rm -f npm-*.tgz && npm pack npm@10 --silent >/dev/null && tar -xzf npm-*.tgz && rm -rf "$ROOTFS/usr/local/lib/node_modules/npm" && mv package "$ROOTFS/usr/local/lib/node_modules/npm")
ln -sf ../lib/node_modules/npm/bin/npm-cli.js "$ROOTFS/usr/local/bin/npm"
ln -sf ../lib/node_modules/npm/bin/npx-cli.js "$ROOTFS/usr/local/bin/npx"
chroot "$ROOTFS" /bin/sh -c 'id node >/dev/null 2>&1 || useradd --uid 1000 --create-home --shell /bin/sh node'
cp /etc/resolv.conf "$ROOTFS/etc/resolv.conf"
# Trust what this host trusts (e.g. a TLS-inspecting proxy in front of the npm registry).
EXTRA_ENV=()
if [ -f /etc/ssl/certs/ca-certificates.crt ]; then
  mkdir -p "$ROOTFS/etc/ssl/certs" && cp /etc/ssl/certs/ca-certificates.crt "$ROOTFS/etc/ssl/certs/ca-certificates.crt"
  EXTRA_ENV=(--env NODE_EXTRA_CA_CERTS=/etc/ssl/certs/ca-certificates.crt)
fi
ctr=$(buildah "${STORAGE[@]}" from scratch)
mnt=$(buildah "${STORAGE[@]}" mount "$ctr")
cp -a "$ROOTFS/." "$mnt/"
buildah "${STORAGE[@]}" umount "$ctr" >/dev/null
buildah "${STORAGE[@]}" config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "${EXTRA_ENV[@]}" --cmd node "$ctr"
buildah "${STORAGE[@]}" commit "$ctr" "$IMAGE" >/dev/null
buildah "${STORAGE[@]}" rm "$ctr" >/dev/null
echo "built base image $IMAGE"
