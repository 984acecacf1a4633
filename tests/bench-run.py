#!/usr/bin/env python3
"""OCI runtime benchmark: `run` of a busybox bundle executing /bin/true, with sandbox-vm,
runc and crun in the same run (interleaved, same bundle), and the host memory of one idle
sandbox (RSS and PSS of its monitor process: the VMM with the guest RAM it touched).

crun 1.8 refuses this host's hybrid cgroup layout; it is run inside a private mount
namespace with the empty cgroup2 mount at /sys/fs/cgroup/unified removed, and that
namespace's setup is outside the timed loop.

usage: tests/bench-run.py [--vm-runs N] [--runs N]   (root; eval "$(scripts/setup.sh)" first)
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
APPLETS = ["sh", "true", "sleep"]


def make_bundle(d, sandbox_vm, args):
    rootfs = os.path.join(d, "rootfs")
    for sub in ["bin", "proc", "sys", "dev", "tmp", "etc"]:
        os.makedirs(os.path.join(rootfs, sub), exist_ok=True)
    shutil.copy("/bin/busybox", os.path.join(rootfs, "bin/busybox"))
    for a in APPLETS:
        os.symlink("busybox", os.path.join(rootfs, "bin", a))
    subprocess.run([sandbox_vm, "spec"], cwd=d, check=True)
    path = os.path.join(d, "config.json")
    spec = json.load(open(path))
    spec["process"]["terminal"] = False
    spec["process"]["args"] = args
    json.dump(spec, open(path, "w"), indent=1)
    return d


def time_runs(cmd_for, n):
    times = []
    for i in range(n):
        start = time.monotonic()
        r = subprocess.run(cmd_for(i), stdin=subprocess.DEVNULL, capture_output=True, text=True)
        t = time.monotonic() - start
        if r.returncode != 0:
            print(f"  run failed ({r.returncode}): {r.stderr.strip()[-300:]}", file=sys.stderr)
            continue
        times.append(t)
    return times


def crun_loop(bundle, root, n):
    script = (f"umount /sys/fs/cgroup/unified 2>/dev/null; "
              f"for i in $(seq {n}); do "
              f"s=$(date +%s%N); crun --root {root} run --bundle {bundle} crun-$i >/dev/null || exit 1; "
              f"e=$(date +%s%N); echo $((e - s)); done")
    r = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True)
    if r.returncode != 0:
        print(f"  crun failed: {r.stderr.strip()[-300:]}", file=sys.stderr)
    return [int(x) / 1e9 for x in r.stdout.split()]


def idle_memory(sandbox_vm, root, bundle):
    """Create and start a sleeping container; read its monitor's RSS/PSS; delete it."""
    cid = "bench-idle"
    pidfile = os.path.join(root, "idle.pid")
    subprocess.run([sandbox_vm, "--root", root, "create", "--bundle", bundle, "--pid-file", pidfile, cid],
                   check=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        subprocess.run([sandbox_vm, "--root", root, "start", cid], check=True)
        time.sleep(10)
        pid = int(open(pidfile).read().strip())
        pids = [pid] + [int(p) for p in subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()]
        rss = pss = 0
        for p in pids:
            for line in open(f"/proc/{p}/smaps_rollup"):
                if line.startswith("Rss:"):
                    rss += int(line.split()[1])
                elif line.startswith("Pss:"):
                    pss += int(line.split()[1])
        return rss, pss, len(pids)
    finally:
        subprocess.run([sandbox_vm, "--root", root, "delete", "--force", cid], capture_output=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vm-runs", type=int, default=3)
    ap.add_argument("--runs", type=int, default=20, help="runs for runc and crun")
    ap.add_argument("--sandbox-vm", default=os.path.join(ROOT, "target/release/sandbox-vm"))
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        bundle = make_bundle(os.path.join(d, "bundle"), a.sandbox_vm, ["/bin/true"])
        idle = make_bundle(os.path.join(d, "idle"), a.sandbox_vm, ["sleep", "1000"])
        roots = {k: os.path.join(d, k) for k in ["svm", "runc", "crun"]}
        for r in roots.values():
            os.makedirs(r)
        results = {"runc": [], "crun": [], "sandbox-vm": []}
        for rnd in range(a.vm_runs):
            results["runc"] += time_runs(lambda i: ["runc", "--root", roots["runc"], "run", "--bundle", bundle, f"r{rnd}-{i}"], a.runs // a.vm_runs or 1)
            results["crun"] += crun_loop(bundle, roots["crun"], a.runs // a.vm_runs or 1)
            results["sandbox-vm"] += time_runs(lambda i: [a.sandbox_vm, "--root", roots["svm"], "run", "--bundle", bundle, f"s{rnd}"], 1)
            print(f"round {rnd + 1}: sandbox-vm {results['sandbox-vm'][-1:]} s", flush=True)
        print()
        med = {}
        for k, v in results.items():
            if v:
                med[k] = statistics.median(v)
                print(f"{k:11} run /bin/true: median {med[k] * 1000:9.1f} ms over {len(v)} runs")
            else:
                print(f"{k:11} no successful run")
        for k in ("runc", "crun"):
            if k in med and "sandbox-vm" in med:
                print(f"ratio sandbox-vm / {k} = {med['sandbox-vm'] / med[k]:.0f}x")
        rss, pss, n = idle_memory(a.sandbox_vm, roots["svm"], idle)
        print(f"idle sandbox (sleep 1000): host RSS {rss / 1024:.1f} MiB, PSS {pss / 1024:.1f} MiB "
              f"over {n} process(es) (VMM + guest RAM it touched)")
    return 0 if len(med) == 3 else 1


if __name__ == "__main__":
    sys.exit(main())
