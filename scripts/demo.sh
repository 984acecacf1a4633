#!/usr/bin/env bash
# The main job on a fresh machine: set up, build, and boot our guest kernel with the test
# init in a microVM. The guest prints `SANDBOX-VM-INIT-OK uptime_ms=N` and reboots; the VMM
# exits 0.
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(scripts/setup.sh)"
echo "[demo] booting $SANDBOX_VM_KERNEL (this host may take a minute or more)" >&2
exec target/release/sandbox-vm boot --kernel "$SANDBOX_VM_KERNEL" \
  --initrd "$SANDBOX_VM_TEST_INITRD" --mem-mib 128
