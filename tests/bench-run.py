#!/usr/bin/env python3
"""OCI runtime benchmark: `run` of a busybox bundle executing /bin/true, with sandbox-vm
cold (annotation io.sandbox-vm.template=off), sandbox-vm from a template (built first with
`sandbox-vm template`), runc and crun in the same run (interleaved, same bundle); the
restore breakdown of a templated sandbox (VMM process: state checked, memory mapped, state
set, vCPUs running; then the agent answering), and the host memory of idle sandboxes: one,
then a fleet of N templated clones against N cold sandboxes (PSS summed over their
monitors, VMMs and virtiofsds: clones share the template's pages in the page cache).

crun 1.8 refuses this host's hybrid cgroup layout; it is run inside a private mount
namespace with the empty cgroup2 mount at /sys/fs/cgroup/unified removed, and that
namespace's setup is outside the timed loop.

usage: tests/bench-run.py [--vm-runs N] [--runs N] [--fleet N] [--fleet-only]
       (root; eval "$(scripts/setup.sh)" first)
"""
import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

from benchlib import busybox_bundle

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
APPLETS = ["sh", "true", "sleep"]


def make_bundle(d, sandbox_vm, args, annotations=None):
    return busybox_bundle(d, sandbox_vm, args, APPLETS, annotations=annotations)


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


def tree_pids(pid):
    out = [pid]
    kids = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    for k in kids:
        out += tree_pids(int(k))
    return out


def pss_kib(pids):
    total = 0
    for p in pids:
        try:
            for line in open(f"/proc/{p}/smaps_rollup"):
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total


def fleet_memory(sandbox_vm, root, bundle, n, tag):
    """Create and start n sleeping containers at once; PSS over all their processes."""
    ids = [f"fleet-{tag}-{i}" for i in range(n)]
    start = time.monotonic()
    # stderr to files, not pipes: each container's monitor keeps create's stdio open.
    errs = [tempfile.TemporaryFile() for _ in ids]
    procs = [subprocess.Popen([sandbox_vm, "--root", root, "create", "--bundle", bundle,
                               "--pid-file", os.path.join(root, f"{c}.pid"), c],
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=e) for c, e in zip(ids, errs)]
    try:
        for c, p, e in zip(ids, procs, errs):
            if p.wait() != 0:
                e.seek(0)
                raise RuntimeError(f"create {c}: {e.read().decode().strip()[-300:]}")
            subprocess.run([sandbox_vm, "--root", root, "start", c], check=True)
        up = time.monotonic() - start
        time.sleep(10)
        pids = []
        for c in ids:
            pids += tree_pids(int(open(os.path.join(root, f"{c}.pid")).read().strip()))
        return pss_kib(pids), up
    finally:
        for c in ids:
            subprocess.run([sandbox_vm, "--root", root, "delete", "--force", c], capture_output=True)


def restore_breakdown(sandbox_vm, root, bundle):
    """One templated create: the VMM's restore steps and when the agent answered."""
    cid = "bench-restore"
    subprocess.run([sandbox_vm, "--root", root, "create", "--bundle", bundle, cid], check=True,
                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        d = os.path.join(root, cid)
        vmm = open(os.path.join(d, "vmm.log")).read()
        mon = open(os.path.join(d, "monitor.log")).read()
        line = next((l for l in vmm.splitlines() if "restored" in l), "no restore line (cold boot?)")
        agent = next((l.split(" ", 1)[1] for l in mon.splitlines() if "agent answered" in l), "?")
        return line.split(": ", 2)[-1], agent
    finally:
        subprocess.run([sandbox_vm, "--root", root, "delete", "--force", cid], capture_output=True)


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
    ap.add_argument("--fleet", type=int, default=10, help="idle sandboxes per kind (0: skip)")
    ap.add_argument("--fleet-only", action="store_true",
                    help="only the fleet memory comparison (builds the template first)")
    ap.add_argument("--sandbox-vm", default=os.path.join(ROOT, "target/release/sandbox-vm"))
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        os.environ["SANDBOX_VM_TEMPLATE_DIR"] = os.path.join(d, "templates")
        off = {"io.sandbox-vm.template": "off"}
        bundle = make_bundle(os.path.join(d, "bundle"), a.sandbox_vm, ["/bin/true"])
        cold_bundle = make_bundle(os.path.join(d, "cold"), a.sandbox_vm, ["/bin/true"], off)
        idle = make_bundle(os.path.join(d, "idle"), a.sandbox_vm, ["sleep", "1000"])
        idle_cold = make_bundle(os.path.join(d, "idle-cold"), a.sandbox_vm, ["sleep", "1000"], off)
        roots = {k: os.path.join(d, k) for k in ["svm", "runc", "crun"]}
        for r in roots.values():
            os.makedirs(r)
        start = time.monotonic()
        subprocess.run([a.sandbox_vm, "template", "--bundle", bundle], check=True, stdout=subprocess.DEVNULL)
        print(f"template built in {time.monotonic() - start:.1f} s", flush=True)
        results = {"runc": [], "crun": [], "sandbox-vm cold": [], "sandbox-vm template": []}
        for rnd in range(0 if a.fleet_only else a.vm_runs):
            results["runc"] += time_runs(lambda i: ["runc", "--root", roots["runc"], "run", "--bundle", bundle, f"r{rnd}-{i}"], a.runs // a.vm_runs or 1)
            results["crun"] += crun_loop(bundle, roots["crun"], a.runs // a.vm_runs or 1)
            results["sandbox-vm cold"] += time_runs(lambda i: [a.sandbox_vm, "--root", roots["svm"], "run", "--bundle", cold_bundle, f"c{rnd}"], 1)
            results["sandbox-vm template"] += time_runs(lambda i: [a.sandbox_vm, "--root", roots["svm"], "run", "--bundle", bundle, f"t{rnd}"], 1)
            print(f"round {rnd + 1}: cold {results['sandbox-vm cold'][-1:]} s, "
                  f"template {results['sandbox-vm template'][-1:]} s", flush=True)
        print()
        med = {}
        for k, v in results.items():
            if v:
                med[k] = statistics.median(v)
                print(f"{k:19} run /bin/true: median {med[k] * 1000:9.1f} ms over {len(v)} runs")
            else:
                print(f"{k:19} no successful run")
        if "sandbox-vm cold" in med and "sandbox-vm template" in med:
            print(f"cold / template = {med['sandbox-vm cold'] / med['sandbox-vm template']:.1f}x")
        for k in ("runc", "crun"):
            if k in med and "sandbox-vm template" in med:
                print(f"ratio sandbox-vm template / {k} = {med['sandbox-vm template'] / med[k]:.0f}x")
        steps, agent = restore_breakdown(a.sandbox_vm, roots["svm"], idle)
        print(f"restore breakdown (ms since the VMM process started): {steps}; {agent} (from create)")
        rss, pss, n = idle_memory(a.sandbox_vm, roots["svm"], idle)
        print(f"idle sandbox (sleep 1000, template): host RSS {rss / 1024:.1f} MiB, PSS {pss / 1024:.1f} MiB "
              f"over {n} process(es) (VMM + guest RAM it touched)")
        if a.fleet:
            for tag, b in (("template", idle), ("cold", idle_cold)):
                pss, up = fleet_memory(a.sandbox_vm, roots["svm"], b, a.fleet, tag)
                print(f"{a.fleet} idle {tag:8} sandboxes: host PSS {pss / 1024:.1f} MiB in all "
                      f"({pss / 1024 / a.fleet:.1f} MiB each), all up after {up:.1f} s", flush=True)
    return 0 if a.fleet_only or len(med) == 4 else 1


if __name__ == "__main__":
    sys.exit(main())
