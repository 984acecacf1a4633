#!/usr/bin/env bash
# Build the boot-test initramfs: an uncompressed newc cpio holding
#   /init         images/test-init (static, no libc; prints the boot marker)
#   /dev/console  character device 5:1
# Usage: images/build-test-initramfs.sh [output.cpio]
# Default output: images/out/test-initramfs.cpio. Last line of stdout: its
# absolute path. Re-running is cheap and leaves an unchanged file untouched.
#
# The archive is written by a few lines of Python rather than cpio(1) so that
# it needs no staging directory, no mknod and no root, and is byte-for-byte
# reproducible (fixed inode numbers, owners and mtimes).
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

mkdir -p "$(dirname "$out")"
out=$(cd "$(dirname "$out")" && pwd)/$(basename "$out")
tmp=$(mktemp "$out.XXXXXX")
trap 'rm -f "$tmp"' EXIT

python3 - "$init_bin" "$tmp" <<'PY'
import sys

init_path, out_path = sys.argv[1], sys.argv[2]
init = open(init_path, "rb").read()

def pad4(n):
    return (4 - n % 4) % 4

def entry(ino, name, mode, data=b"", nlink=1, rmajor=0, rminor=0):
    name_b = name.encode() + b"\0"
    # newc header: magic then 13 eight-digit hex fields.
    fields = [ino, mode, 0, 0, nlink, 0, len(data), 0, 0, rmajor, rminor,
              len(name_b), 0]
    hdr = b"070701" + b"".join(b"%08x" % f for f in fields)
    rec = hdr + name_b
    rec += b"\0" * pad4(len(rec))
    rec += data + b"\0" * pad4(len(data))
    return rec

S_IFDIR, S_IFCHR, S_IFREG = 0o040000, 0o020000, 0o100000
archive = b"".join([
    entry(1, "dev", S_IFDIR | 0o755, nlink=2),
    entry(2, "dev/console", S_IFCHR | 0o600, rmajor=5, rminor=1),
    entry(3, "init", S_IFREG | 0o755, init),
    entry(0, "TRAILER!!!", 0, nlink=1),
])
open(out_path, "wb").write(archive)
PY

if cmp -s "$tmp" "$out"; then
    echo "[initramfs] up to date" >&2
else
    chmod 0644 "$tmp"
    mv -f "$tmp" "$out"
    echo "[initramfs] wrote $(stat -c %s "$out") bytes (init: $(stat -c %s "$init_bin") bytes)" >&2
fi
echo "$out"
