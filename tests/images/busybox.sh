#!/usr/bin/env bash
# Builds a small container image for tests, with no registry: a rootfs holding
# Debian's busybox-static is `docker import`ed, then `docker save`d to OUT (a
# docker-archive that Atoll loads from its own blob). The engine's copy is
# removed again so that Atoll has to load it.
# Usage: tests/images/busybox.sh OUT.tar [TAG]
set -euo pipefail
out=$1
tag=${2:-atoll-test/busybox:1}
busybox=/bin/busybox
linkage=$(ldd "$busybox" 2>&1 || true)
if [ ! -x "$busybox" ] || [[ "$linkage" != *"not a dynamic"* ]]; then
  echo "a static busybox is needed at /bin/busybox (apt-get install busybox-static)" >&2
  exit 2
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/rootfs/bin" "$work/rootfs/tmp" "$work/rootfs/www"
cp "$busybox" "$work/rootfs/bin/busybox"
for applet in sh echo cat sleep ls httpd wget env; do
  ln -s busybox "$work/rootfs/bin/$applet"
done
echo "hello from atoll" > "$work/rootfs/www/index.html"
tar -C "$work/rootfs" -cf "$work/rootfs.tar" .
docker import -c 'CMD ["/bin/sh"]' "$work/rootfs.tar" "$tag" >/dev/null
docker save "$tag" -o "$out"
docker rmi "$tag" >/dev/null
