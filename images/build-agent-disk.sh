#!/usr/bin/env bash
# Builds the agent as a small read-only ext4 root disk (/init = the static guest agent),
# an opt-in alternative to the initramfs: the guest kernel reads pages of the agent on
# demand through virtio-blk instead of unpacking a 2.6 MiB cpio with emulated copies.
# Use it with SANDBOX_VM_AGENT_DISK=<image> (or the io.sandbox-vm.agent-disk annotation).
# Usage: images/build-agent-disk.sh [out.img]; prints the image's path last.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
out=${1:-"$root/images/out/agent-root.img"}
mkdir -p "$(dirname "$out")"
echo "[agent disk] building the guest agent (static)" >&2
agent=$("$root/guest-agent/build-static.sh" | sed -n 1p)
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage"/{dev,proc,sys,run,tmp,mnt}
cp "$agent" "$stage/init"
rm -f "$out.tmp"
truncate -s $(( ($(stat -c %s "$agent") / 1048576 + 6) * 1048576 )) "$out.tmp"
mkfs.ext4 -q -F -m 0 -O ^has_journal -E root_owner=0:0 -d "$stage" "$out.tmp"
mv "$out.tmp" "$out"
echo "$out"
