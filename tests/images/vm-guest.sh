#!/usr/bin/env bash
# Makes a bootable VM disk for tests, from Debian packages only (nothing is
# downloaded from elsewhere): a FAT disk with no partition table whose boot
# sector is syslinux's, holding Debian's kernel and an initramfs of
# busybox-static whose /init prints MARKER (with its boot id, CPUs and
# memory) on the serial console, then keeps
# printing a heartbeat until it is shut down.
# Usage: tests/images/vm-guest.sh OUT.raw [MARKER]
# Needs: syslinux, mtools, dosfstools, cpio, busybox-static, apt-get download
# of linux-image-amd64 (or a kernel at ATOLL_GUEST_KERNEL).
set -euo pipefail
out=$1
marker=${2:-atoll-guest-up}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

kernel=${ATOLL_GUEST_KERNEL:-}
if [ -z "$kernel" ]; then
  # The kernel package's file, unpacked, not installed: the host keeps its own.
  pkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
  (cd "$work" && apt-get download -qq "$pkg" >/dev/null)
  dpkg-deb -x "$work"/linux-image-*.deb "$work/kernel"
  kernel=$(ls "$work"/kernel/boot/vmlinuz-* | head -n1)
fi

mkdir -p "$work/root"/{bin,dev,proc,sys}
cp /bin/busybox "$work/root/bin/busybox"
cat > "$work/root/init" <<INIT
#!/bin/busybox sh
/bin/busybox mount -t devtmpfs devtmpfs /dev
exec > /dev/ttyS0 2>&1
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sysfs /sys
echo "$marker: boot \$(/bin/busybox cat /proc/sys/kernel/random/boot_id), \$(/bin/busybox nproc) cpus, \$(/bin/busybox awk '/MemTotal/ {print \$2}' /proc/meminfo) kB"
# An ACPI power button press (libvirt's shutdown) powers the guest off.
/bin/busybox mkdir -p /etc/acpi/PWRF
printf '#!/bin/busybox sh\n/bin/busybox poweroff -f\n' > /etc/acpi/PWRF/00000080
/bin/busybox chmod +x /etc/acpi/PWRF/00000080
/bin/busybox acpid -d >/dev/null 2>&1 &
n=0
while true; do n=\$((n + 1)); echo "heartbeat \$n"; /bin/busybox sleep 5; done
INIT
chmod +x "$work/root/init"
(cd "$work/root" && find . | cpio -o -H newc --quiet | gzip -1 > "$work/initrd.gz")

cat > "$work/syslinux.cfg" <<CFG
DEFAULT guest
PROMPT 0
TIMEOUT 0
LABEL guest
  KERNEL vmlinuz
  APPEND initrd=initrd.gz console=ttyS0 quiet panic=-1
CFG
size_kib=$(( ($(stat -c %s "$kernel") + $(stat -c %s "$work/initrd.gz")) / 1024 + 4096 ))
rm -f "$out"
mkfs.vfat -C "$out" "$size_kib" >/dev/null
syslinux --install "$out"
mcopy -i "$out" "$kernel" ::vmlinuz
mcopy -i "$out" "$work/initrd.gz" ::initrd.gz
mcopy -i "$out" "$work/syslinux.cfg" ::syslinux.cfg
echo raw
