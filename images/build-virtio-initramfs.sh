#!/usr/bin/env bash
# Builds the virtio e2e test initramfs: /init = virtio-check (tests/guest), a static binary.
# Usage: images/build-virtio-initramfs.sh [out.cpio]; prints the cpio's path last.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
out=${1:-"$root/images/out/virtio-check.cpio"}
echo "[initramfs] building virtio-check (static)" >&2
(cd "$root" && RUSTFLAGS="-C target-feature=+crt-static" \
  cargo build --quiet --profile guest --target x86_64-unknown-linux-gnu -p guest-tests --bin virtio-check)
"$root/images/mkinitramfs.py" "$out" "$root/target/x86_64-unknown-linux-gnu/guest/virtio-check"
