#!/usr/bin/env python3
"""Rootfs benchmark: how a container's root filesystem reaches the sandbox, measured in one
run, side by side:

1. `create` time and create-to-first-output of a ~190 MB Debian bookworm minbase rootfs
   (mmdebstrap, cached under ~/.cache/sandbox-vm/bench/) through the virtio-fs share
   (the default: no copy) vs through an ext4 copy on virtio-blk
   (annotation io.sandbox-vm.rootfs=block), with a busybox rootfs as the baseline.
2. A 64 MiB file read inside the guest (`dd bs=1M`) through virtio-fs vs virtio-blk, with
   the host's own read of the same file (page cache warm) as the reference.

Every sandbox-vm run boots a VM (about 25 s to the agent on hosts that emulate guest
kernel mode); compare ratios, these machines are noisy.

usage: tests/bench-rootfs.py [--runs N] [--json FILE]
       (root; eval "$(scripts/setup.sh)" first)
"""
import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SVM = os.path.join(ROOT, "target/release/sandbox-vm")
CACHE = os.path.expanduser("~/.cache/sandbox-vm/bench")
APPLETS = ["sh", "echo", "dd", "cat", "true", "sleep", "time"]
BIG = 64 << 20


def log(msg):
    print(f"[bench-rootfs] {msg}", file=sys.stderr, flush=True)


def debian_rootfs():
    """A bookworm minbase tree, made once with mmdebstrap and reused."""
    d = os.path.join(CACHE, "bookworm-minbase")
    if os.path.isfile(os.path.join(d, "etc/os-release")):
        return d
    log("mmdebstrap --variant=minbase bookworm (once; a few minutes)")
    os.makedirs(CACHE, exist_ok=True)
    tmp = d + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    subprocess.run(["mmdebstrap", "--quiet", "--variant=minbase", "bookworm", tmp], check=True)
    os.rename(tmp, d)
    return d


def busybox_rootfs(d):
    rootfs = os.path.join(d, "rootfs")
    for sub in ["bin", "proc", "sys", "dev", "tmp", "etc"]:
        os.makedirs(os.path.join(rootfs, sub), exist_ok=True)
    shutil.copy("/bin/busybox", os.path.join(rootfs, "bin/busybox"))
    for a in APPLETS:
        os.symlink("busybox", os.path.join(rootfs, "bin", a))
    return rootfs


def tree_mb(d):
    r = subprocess.run(["du", "-sm", d], capture_output=True, text=True, check=True)
    return int(r.stdout.split()[0])


def bundle(d, rootfs, args, mode, mounts=()):
    os.makedirs(d, exist_ok=True)
    subprocess.run([SVM, "spec", "--bundle", d], check=True)
    path = os.path.join(d, "config.json")
    spec = json.load(open(path))
    spec["root"] = {"path": rootfs, "readonly": False}
    spec["process"]["terminal"] = False
    spec["process"]["args"] = args
    spec.setdefault("annotations", {})["io.sandbox-vm.rootfs"] = mode
    spec["mounts"] += list(mounts)
    json.dump(spec, open(path, "w"), indent=1)
    return d


def create_and_first_output(root, b, cid):
    """`create`, then `start`; returns (create s, create-to-first-output s, all output)."""
    t0 = time.monotonic()
    out_path = os.path.join(os.path.dirname(root), cid + ".out")
    with open(out_path, "wb") as out:
        subprocess.run([SVM, "--root", root, "create", "--bundle", b, cid], check=True,
                       stdin=subprocess.DEVNULL, stdout=out, stderr=out)
    t_create = time.monotonic() - t0
    try:
        subprocess.run([SVM, "--root", root, "start", cid], check=True)
        first = None
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline:
            text = open(out_path, "rb").read()
            if first is None and text.strip():
                first = time.monotonic() - t0
            state = json.loads(subprocess.run([SVM, "--root", root, "state", cid],
                                              capture_output=True, text=True).stdout or "{}")
            if state.get("status") == "stopped":
                break
            time.sleep(0.05)
        return t_create, first, open(out_path).read()
    finally:
        subprocess.run([SVM, "--root", root, "delete", "--force", cid], capture_output=True)


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else float("nan")


def dd_rate(output):
    """MiB/s from busybox `time dd ...`: 'real 0m 12.34s' (or '1h 2m 3.45s')."""
    m = re.search(r"real\s+(?:(\d+)h\s*)?(?:(\d+)m\s*)?([\d.]+)s", output)
    if not m:
        return None
    secs = int(m.group(1) or 0) * 3600 + int(m.group(2) or 0) * 60 + float(m.group(3))
    return BIG / secs / (1 << 20)


def host_read_rate(path):
    t = time.monotonic()
    with open(path, "rb") as f:
        while f.read(1 << 20):
            pass
    return os.path.getsize(path) / (time.monotonic() - t) / (1 << 20)


def cleanup(work, root):
    """Deletes every container left (which detaches its share's binds), then the scratch
    tree, but never through a mount that is still there (it could be the cached rootfs)."""
    for cid in os.listdir(root) if os.path.isdir(root) else []:
        subprocess.run([SVM, "--root", root, "delete", "--force", cid], capture_output=True)
    left = [l.split()[4] for l in open("/proc/self/mountinfo") if l.split()[4].startswith(work)]
    if left:
        log(f"mounts still under {work}, not removing it: {left}")
    else:
        shutil.rmtree(work, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=1, help="runs per configuration")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench-rootfs.py needs root (mounts, KVM)")
    work = tempfile.mkdtemp(prefix="svm-bench-rootfs-")
    root = os.path.join(work, "root")
    results = {}
    try:
        deb = debian_rootfs()
        bb = busybox_rootfs(os.path.join(work, "bb"))
        sizes = {"busybox": tree_mb(bb), "debian": tree_mb(deb)}
        log(f"rootfs sizes: {sizes}")
        for name, rootfs, prog in [("busybox", bb, ["echo", "first"]),
                                   ("debian", deb, ["/bin/echo", "first"])]:
            for mode in ["share", "block"]:
                creates, firsts = [], []
                for i in range(args.runs):
                    cid = f"{name}-{mode}-{i}"
                    b = bundle(os.path.join(work, cid), rootfs, prog, mode)
                    c, f, out = create_and_first_output(root, b, cid)
                    log(f"{cid}: create {c:.1f} s, first output {f} s: {out.strip()[:60]!r}")
                    creates.append(c)
                    firsts.append(f)
                results[f"{name}/{mode}"] = {"create_s": med(creates), "first_output_s": med(firsts),
                                             "n": len(creates), "rootfs_mb": sizes[name]}

        data = os.path.join(work, "data")
        os.makedirs(data)
        big = os.path.join(bb, "big")
        with open(big, "wb") as f:
            f.write(os.urandom(BIG))
        shutil.copy(big, os.path.join(data, "big"))
        reads = {"host": host_read_rate(big)}
        share_mount = [{"destination": "/data", "type": "bind", "source": data, "options": ["rbind", "ro"]}]
        for mode, mounts, prog in [
            ("virtio-fs", share_mount, ["time", "dd", "if=/data/big", "of=/dev/null", "bs=1M"]),
            ("virtio-blk", [], ["time", "dd", "if=/big", "of=/dev/null", "bs=1M"]),
        ]:
            cid = f"read-{mode}"
            b = bundle(os.path.join(work, cid), bb, prog, "block" if mode == "virtio-blk" else "share", mounts)
            _, _, out = create_and_first_output(root, b, cid)
            reads[mode] = dd_rate(out)
            log(f"{cid}: {out.strip()!r}")
        results["read_64MiB_MiB_per_s"] = reads
    finally:
        cleanup(work, root)

    print("\n| rootfs | size | path | create | create → first output |")
    print("|---|---|---|---|---|")
    for key in ["busybox/share", "busybox/block", "debian/share", "debian/block"]:
        r = results[key]
        name, mode = key.split("/")
        path = "virtio-fs share" if mode == "share" else "ext4 copy (virtio-blk)"
        print(f"| {name} | {r['rootfs_mb']} MB | {path} | {r['create_s']:.2f} s | {r['first_output_s']:.1f} s |")
    bs, ds = results["busybox/share"], results["debian/share"]
    print(f"\ndebian vs busybox create through the share: {ds['create_s'] / bs['create_s']:.2f}× "
          f"(goal ≤ 1.10×); through the ext4 copy: "
          f"{results['debian/block']['create_s'] / results['busybox/block']['create_s']:.2f}×")
    r = results["read_64MiB_MiB_per_s"]
    print("\n| 64 MiB read | MiB/s | vs host |")
    print("|---|---|---|")
    for k in ["host", "virtio-fs", "virtio-blk"]:
        v = r.get(k)
        print(f"| {k} | {v:.2f} | {v / r['host']:.5f}× |" if v else f"| {k} | failed | |")
    if args.json:
        json.dump(results, open(args.json, "w"), indent=1)


if __name__ == "__main__":
    main()
