#!/bin/sh
# Builds the static, size-optimised guest agent and prints its path and size.
# The binary goes into the guest initramfs as /init (see README.md).
set -eu
cd "$(dirname "$0")/.."
target=x86_64-unknown-linux-gnu
# Non-PIE: a static-pie binary carries ~240 KiB of relocations.
RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static -C relocation-model=static" \
    cargo build --quiet -p guest-agent --profile guest --target "$target"
bin="$(pwd)/target/$target/guest/guest-agent"
if ! file "$bin" 2>/dev/null | grep -qE "statically linked|static-pie linked"; then
    ldd "$bin" 2>&1 | grep -q "not a dynamic executable" || { echo "error: $bin is not static" >&2; exit 1; }
fi
echo "$bin"
echo "$(stat -c %s "$bin") bytes"
