#!/usr/bin/env bash
# Makes a tiny VM disk for tests, with no download: a qcow2 made by qemu-img
# when it is installed, else a raw file of zeros.
# Usage: tests/images/vm-disk.sh OUT [SIZE_MIB]   (prints the format: qcow2 or raw)
set -euo pipefail
out=$1
size=${2:-16}
if command -v qemu-img >/dev/null; then
  qemu-img create -q -f qcow2 "$out" "${size}M"
  echo qcow2
else
  head -c "$((size << 20))" /dev/zero > "$out"
  echo raw
fi
