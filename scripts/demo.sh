#!/usr/bin/env bash
# The main job on a fresh machine: set up and build everything, boot our guest kernel with
# the test init (it prints `SANDBOX-VM-INIT-OK uptime_ms=N`; the VMM exits 0), then run a
# busybox container in its own microVM with `sandbox-vm run bundle/`: it prints the
# sandbox's kernel release (not the host's), the size of its own kernel log, and its own
# process list.
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(scripts/setup.sh)"
svm=target/release/sandbox-vm

echo "[demo] 1/2 booting $SANDBOX_VM_KERNEL with the test init" >&2
"$svm" boot --kernel "$SANDBOX_VM_KERNEL" --initrd "$SANDBOX_VM_TEST_INITRD" --mem-mib 128

echo "[demo] 2/2 sandbox-vm run bundle/ (a busybox container in a microVM)" >&2
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
bundle="$work/bundle"
mkdir -p "$bundle/rootfs/bin"
cp /bin/busybox "$bundle/rootfs/bin/busybox"
for applet in sh uname ps cat echo dmesg grep; do ln -s busybox "$bundle/rootfs/bin/$applet"; done
(cd "$bundle" && "$OLDPWD/$svm" spec)
python3 - "$bundle/config.json" <<'PY'
import json, sys
path = sys.argv[1]
spec = json.load(open(path))
spec["process"]["terminal"] = False
spec["process"]["args"] = ["sh", "-c",
    "echo \"sandbox kernel: $(uname -sr)\"; echo \"sandbox kernel log: $(dmesg | grep -c .) lines\"; ps"]
json.dump(spec, open(path, "w"), indent=2)
PY
echo "host kernel:    $(uname -sr)"
"$svm" run "$bundle"
