#!/usr/bin/env bash
# Builds the guest image: a small read-only ext4 disk whose /init is the static guest agent.
# The guest boots from it directly (root=/dev/vda ro rootfstype=ext4 init=/init), with no
# initramfs. On hosts whose KVM emulates guest kernel mode this is much faster than an
# initramfs: the disk's blocks reach the page cache by virtio-blk DMA, while initramfs bytes
# are copied by emulated guest instructions (measured with the 2.7 MB agent: agent accepting
# on vsock after 84 s from the disk vs 137 s from an initramfs, same load).
# `images/mkinitramfs.py OUT.cpio <agent>` still builds the initramfs form.
# Usage: images/build-agent-disk.sh [out.ext4]; needs no root; prints the image path last.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
out=${1:-"$root/images/out/agent.ext4"}
echo "[image] building the static guest agent" >&2
agent=$(bash "$root/guest-agent/build-static.sh" | sed -n 1p)
mkdir -p "$(dirname "$out")"
stamp="$out.sha256"
sum=$(sha256sum "$agent" "$0" | sha256sum | cut -d' ' -f1)
if [[ -f $out && -f $stamp && $(cat "$stamp") == "$sum" ]]; then
  echo "[image] agent disk up to date" >&2
  echo "$out"
  exit 0
fi
stage=$(mktemp -d)
tmp="$out.tmp"
trap 'rm -rf "$stage" "$tmp"' EXIT
mkdir -p "$stage"/{dev,proc,sys,run,tmp,mnt}
install -m 0755 "$agent" "$stage/init"
size_kib=$(( ($(stat -c %s "$agent") / 1024) + 4096 ))
rm -f "$tmp"
mkfs.ext4 -q -F -L sandbox-vm-agent -b 4096 -O ^has_journal -d "$stage" "$tmp" "${size_kib}K"
# The console node, without needing root for mknod.
printf 'cd /dev\nmknod console c 5 1\nsif console mode 020600\n' | debugfs -w -f - "$tmp" >/dev/null 2>&1
debugfs -R "stat /dev/console" "$tmp" 2>/dev/null | grep -q "Type: character" \
  || { echo "build-agent-disk: could not create /dev/console in the image" >&2; exit 1; }
mv "$tmp" "$out"
echo "$sum" > "$stamp"
echo "[image] $(stat -c %s "$out") bytes, agent $(stat -c %s "$agent") bytes" >&2
echo "$out"
