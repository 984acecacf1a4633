#!/usr/bin/env bash
# Builds the guest initramfs of the OCI runtime: /init = the static guest agent.
# Usage: images/build-agent-initramfs.sh [out.cpio]; prints the cpio's path last.
# `sandbox-vm` finds images/out/agent-initramfs.cpio by itself (or set SANDBOX_VM_INITRD).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
out=${1:-"$root/images/out/agent-initramfs.cpio"}
mkdir -p "$(dirname "$out")"
echo "[initramfs] building the guest agent (static)" >&2
agent=$("$root/guest-agent/build-static.sh" | sed -n 1p)
"$root/images/mkinitramfs.py" "$out" "$agent"
