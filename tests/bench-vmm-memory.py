#!/usr/bin/env python3
"""The VMM process's own memory, idle, outside guest RAM: for each sandbox-vm build given,
create and start a sleeping busybox container (restored from a template when one matches),
wait, and sum RSS, PSS and private dirty over the VMM's processes' mappings, leaving out
guest RAM (every mapping of 64 MiB or more). Builds are measured in turns, --runs times
each, and the medians printed side by side.

usage: tests/bench-vmm-memory.py [--runs N] LABEL=PATH/TO/sandbox-vm [LABEL=PATH ...]
       (root; eval "$(scripts/setup.sh)" and SANDBOX_VM_TEMPLATE_DIR set, as tests/run.sh does)
"""
import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

from benchlib import busybox_bundle

GUEST_RAM_MIN_KIB = 64 << 10


def bundle(d, sandbox_vm):
    return busybox_bundle(d, sandbox_vm, ["sleep", "1000"], ["sh", "sleep"])


def vmm_pids(state_dir):
    """Processes whose command line names this sandbox's VMM control socket."""
    sock = os.path.join(state_dir, "vmm.sock")
    found = []
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            cmd = open(f"/proc/{p}/cmdline", "rb").read().split(b"\0")
        except OSError:
            continue
        if sock.encode() in cmd:
            found.append(int(p))
    return found


def own_memory(pid):
    """(rss, pss, private dirty) KiB of `pid`'s mappings smaller than guest RAM."""
    totals = [0, 0, 0]
    cur = {}

    def flush():
        if cur and cur.get("Size", 0) < GUEST_RAM_MIN_KIB:
            for i, k in enumerate(["Rss", "Pss", "Private_Dirty"]):
                totals[i] += cur.get(k, 0)

    for line in open(f"/proc/{pid}/smaps"):
        if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
            flush()
            cur = {}
            continue
        key, _, rest = line.partition(":")
        parts = rest.split()
        if len(parts) == 2 and parts[1] == "kB":
            cur[key] = int(parts[0])
    flush()
    return tuple(totals)


def measure(sandbox_vm, root, b, i):
    cid = f"vmm-mem-{i}"
    subprocess.run([sandbox_vm, "--root", root, "create", "--bundle", b, cid], check=True,
                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    try:
        subprocess.run([sandbox_vm, "--root", root, "start", cid], check=True)
        time.sleep(10)
        state = os.path.join(root, cid)
        restored = "restored" in open(os.path.join(state, "vmm.log")).read()
        pids = vmm_pids(state)
        if not pids:
            sys.exit(f"{sandbox_vm}: no VMM process found for {state}")
        totals = [sum(x) for x in zip(*(own_memory(p) for p in pids))]
        return totals, restored, len(pids)
    finally:
        subprocess.run([sandbox_vm, "--root", root, "delete", "--force", cid], capture_output=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("builds", nargs="+", help="LABEL=PATH to a sandbox-vm binary")
    a = ap.parse_args()
    builds = [b.split("=", 1) for b in a.builds]
    results = {label: [] for label, _ in builds}
    notes = {}
    with tempfile.TemporaryDirectory(prefix="svm-vmm-mem-") as d:
        b = bundle(os.path.join(d, "bundle"), builds[0][1])
        root = os.path.join(d, "root")
        for i in range(a.runs):
            for label, exe in builds:
                totals, restored, n = measure(exe, root, b, i)
                results[label].append(totals)
                notes[label] = f"{'restored' if restored else 'cold boot'}, {n} process(es)"
    print("VMM's own memory, idle (MiB, medians of %d; guest RAM left out)" % a.runs)
    print(f"{'build':<12} {'RSS':>7} {'PSS':>7} {'priv dirty':>11}  how")
    for label, _ in builds:
        med = [statistics.median(col) / 1024 for col in zip(*results[label])]
        print(f"{label:<12} {med[0]:7.1f} {med[1]:7.1f} {med[2]:11.1f}  {notes[label]}")


if __name__ == "__main__":
    main()
