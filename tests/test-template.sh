#!/usr/bin/env bash
# Builds the templates the e2e tests restore their sandboxes from: a guest booted once to
# agent-ready and snapshotted (`sandbox-vm template`), for the VM a default bundle gets,
# and the same with one NIC (`--network`) for pods on a network (CNI, netavark) with one
# interface. Every test whose VM matches one (same kernel, guest image, command line and
# shape) then restores instead of booting; the others (writable disks, other kernel
# parameters, io.sandbox-vm.template=off) boot cold. Kept between runs under $SANDBOX_VM_TEMPLATE_DIR
# (a hit takes a second); templates of other kernels or images older than a day go.
# Needs the environment scripts/setup.sh prints.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${SANDBOX_VM_TEMPLATE_DIR:?export SANDBOX_VM_TEMPLATE_DIR first}"
bin=target/release/sandbox-vm
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/rootfs/bin" "$SANDBOX_VM_TEMPLATE_DIR"
cp /bin/busybox "$work/rootfs/bin/busybox"
(cd "$work" && "$OLDPWD/$bin" spec)
start=$SECONDS
dir=$("$bin" template --bundle "$work")
echo "[template] $dir ($((SECONDS - start)) s)" >&2
start=$SECONDS
net=$("$bin" template --bundle "$work" --network)
echo "[template] with a NIC: $net ($((SECONDS - start)) s)" >&2
find "$SANDBOX_VM_TEMPLATE_DIR" -mindepth 1 -maxdepth 1 -type d ! -path "$dir" ! -path "$net" -mtime +0 \
    -exec rm -rf {} + -exec echo "[template] removed old {}" \; >&2
