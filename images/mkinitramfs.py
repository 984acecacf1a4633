#!/usr/bin/env python3
"""Writes an uncompressed newc initramfs: /dev, /dev/console (5:1), /init from a binary,
and any extra files. Reproducible (fixed inode numbers, owners and mtimes), needs no root
and no staging directory. Uncompressed on purpose: on hosts whose KVM emulates guest kernel
mode, decompressing in the guest costs far more than the bytes it saves.

usage: images/mkinitramfs.py OUT.cpio INIT_BINARY [DEST=SRC ...]
Writes OUT.cpio only if its content changed; prints its absolute path.
"""
import os
import sys

S_IFDIR, S_IFCHR, S_IFREG = 0o040000, 0o020000, 0o100000


def pad4(n):
    return (4 - n % 4) % 4


def entry(ino, name, mode, data=b"", nlink=1, rmajor=0, rminor=0):
    name_b = name.encode() + b"\0"
    # newc: magic, then 13 eight-digit hex fields: ino mode uid gid nlink mtime filesize
    # devmajor devminor rdevmajor rdevminor namesize check.
    fields = [ino, mode, 0, 0, nlink, 0, len(data), 0, 0, rmajor, rminor, len(name_b), 0]
    rec = b"070701" + b"".join(b"%08x" % f for f in fields) + name_b
    rec += b"\0" * pad4(len(rec))
    return rec + data + b"\0" * pad4(len(data))


def main(argv):
    if len(argv) < 3:
        sys.exit(__doc__)
    out, init = argv[1], argv[2]
    parts = [
        entry(1, "dev", S_IFDIR | 0o755, nlink=2),
        entry(2, "dev/console", S_IFCHR | 0o600, rmajor=5, rminor=1),
        entry(3, "init", S_IFREG | 0o755, open(init, "rb").read()),
    ]
    dirs = {"dev"}
    ino = 4
    for spec in argv[3:]:
        dest, _, src = spec.partition("=")
        dest = dest.strip("/")
        if not dest or not src:
            sys.exit(f"mkinitramfs: bad file spec {spec!r} (want DEST=SRC)")
        for i in range(1, dest.count("/") + 1):
            d = "/".join(dest.split("/")[:i])
            if d not in dirs:
                dirs.add(d)
                parts.append(entry(ino, d, S_IFDIR | 0o755, nlink=2))
                ino += 1
        mode = 0o755 if os.access(src, os.X_OK) else 0o644
        parts.append(entry(ino, dest, S_IFREG | mode, open(src, "rb").read()))
        ino += 1
    parts.append(entry(0, "TRAILER!!!", 0))
    archive = b"".join(parts)
    out = os.path.abspath(out)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    if not (os.path.exists(out) and open(out, "rb").read() == archive):
        tmp = out + ".tmp"
        with open(tmp, "wb") as f:
            f.write(archive)
        os.replace(tmp, out)
    print(out)


if __name__ == "__main__":
    main(sys.argv)
