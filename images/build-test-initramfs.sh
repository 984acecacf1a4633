#!/usr/bin/env bash
# Build the boot-test initramfs: an uncompressed newc cpio holding
#   /init         images/test-init (static, no libc; prints the boot marker)
#   /dev/console  character device 5:1
# Usage: images/build-test-initramfs.sh [output.cpio]
# Default output: images/out/test-initramfs.cpio. Last line of stdout: its
# absolute path. Re-running is cheap and leaves an unchanged file untouched.
#
# The archive is written by images/mkinitramfs.py (reproducible, no root).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
crate="$here/test-init"
out=${1:-"$here/out/test-initramfs.cpio"}

die() { echo "build-test-initramfs: $*" >&2; exit 1; }

command -v cargo >/dev/null || die "cargo not found; install a Rust toolchain (rustup) first"
command -v python3 >/dev/null || die "python3 not found; apt-get install python3"

echo "[initramfs] building test-init" >&2
# The crate's .cargo/config.toml carries the no-libc static link flags;
# RUSTFLAGS from the environment would replace them.
(cd "$crate" && env -u RUSTFLAGS -u CARGO_ENCODED_RUSTFLAGS \
    cargo build --release --quiet) || die "cargo build of $crate failed"
init_bin="$crate/target/release/test-init"
[[ -f $init_bin ]] || die "cargo did not produce $init_bin"

"$here/mkinitramfs.py" "$out" "$init_bin" | tail -n 1
echo "[initramfs] $(stat -c %s "$out") bytes (init: $(stat -c %s "$init_bin") bytes)" >&2
