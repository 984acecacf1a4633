#!/bin/sh
# Builds the static probe of `sandbox-vm bench isolation` (it runs in a busybox bundle that
# has no libc) and prints its path. `sandbox-vm bench isolation` finds it through
# $SANDBOX_VM_PROBE, beside its own binary, or at the path printed here.
set -eu
cd "$(dirname "$0")/../.."
target=x86_64-unknown-linux-gnu
RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static -C relocation-model=static" \
    cargo build --quiet -p sandbox-vm-probe --bin sandbox-vm-probe --profile guest --target "$target"
bin="$(pwd)/target/$target/guest/sandbox-vm-probe"
if ! file "$bin" 2>/dev/null | grep -qE "statically linked|static-pie linked"; then
    ldd "$bin" 2>&1 | grep -q "not a dynamic executable" || { echo "error: $bin is not static" >&2; exit 1; }
fi
echo "$bin"
