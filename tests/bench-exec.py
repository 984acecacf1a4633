#!/usr/bin/env python3
"""Exec benchmark: what an `exec` in a running container costs the first and the second
time, and what a host write into a bind mount looks like from the guest.

Each round creates and starts a container (busybox `sleep 1000`, a read-write bind mount
of a host directory on /data) from a template, then:
  1. `exec /bin/true` (the first exec of busybox beside the running `sleep`),
  2. `exec /bin/true` again,
  3. `exec sh -c 'cat /data/old; ls /data; cat /data/new'`: the guest reads the file, the
     directory and the missing name before the host changes them,
  4. the host rewrites /data/old (same size, new bytes) and writes a new /data/new,
     then `exec cat /data/old /data/new`, whose output must be the new contents.
Per exec: the host's wall time of `sandbox-vm exec` and the exec'd process's own guest
major page faults (its rusage, which the agent prints when tracing: the bundle's VM has
`sandbox_vm.trace` on its command line, so the template is built with it too). Medians
over the rounds.

usage: tests/bench-exec.py [--runs N] [--sandbox-vm PATH] [--keep-template DIR]
       (root; eval "$(scripts/setup.sh)" first)
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

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
APPLETS = ["sh", "true", "sleep", "cat"]
REAPED = re.compile(r"reaped (\d+): its pf=(\d+) majflt=(\d+)")


def make_bundle(d, sandbox_vm, data):
    return busybox_bundle(
        d, sandbox_vm, ["sleep", "1000"], APPLETS, extra_dirs=["data"],
        annotations={"io.sandbox-vm.kernel-params": "sandbox_vm.trace"},
        mounts=[{"destination": "/data", "type": "bind", "source": data, "options": ["rbind", "rw"]}])


def reaped(console):
    """The (minor, major) faults of every process the agent reaped so far, in order."""
    try:
        text = open(console, errors="replace").read()
    except OSError:
        return []
    return [(int(m.group(2)), int(m.group(3))) for m in REAPED.finditer(text)]


def timed_exec(svm, root, cid, args):
    """Runs `exec` and returns (seconds, stdout, the exec'd process's major faults)."""
    console = os.path.join(root, cid, "console.log")
    before = len(reaped(console))
    start = time.monotonic()
    r = subprocess.run([svm, "--root", root, "exec", cid] + args, stdin=subprocess.DEVNULL,
                       capture_output=True, text=True)
    secs = time.monotonic() - start
    if r.returncode != 0:
        print(f"  exec {args}: exit {r.returncode}: {r.stderr.strip()[-300:]}", flush=True)
    # The reap mark is written before the exit reaches the host; allow the console a moment.
    deadline = time.monotonic() + 5
    while len(reaped(console)) <= before and time.monotonic() < deadline:
        time.sleep(0.05)
    marks = reaped(console)[before:]
    return secs, r.stdout, (marks[-1][1] if marks else None)


def one_round(svm, root, bundle, data, rnd):
    cid = f"exec-{rnd}"
    with open(os.path.join(data, "old"), "w") as f:
        f.write(f"old {rnd:04}\n")
    subprocess.run([svm, "--root", root, "create", "--bundle", bundle, cid], check=True,
                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    try:
        subprocess.run([svm, "--root", root, "start", cid], check=True)
        # The container's own `sleep` maps busybox first.
        time.sleep(3)
        first = timed_exec(svm, root, cid, ["/bin/true"])
        second = timed_exec(svm, root, cid, ["/bin/true"])
        timed_exec(svm, root, cid, ["sh", "-c", "cat /data/old; ls /data; cat /data/new; true"])
        # Past the guest's attribute cache time under cache=auto (1 s).
        time.sleep(1.5)
        want = f"new {rnd:04}\nnew file {rnd}\n"
        with open(os.path.join(data, "old"), "w") as f:
            f.write(f"new {rnd:04}\n")
        with open(os.path.join(data, "new"), "w") as f:
            f.write(f"new file {rnd}\n")
        read = timed_exec(svm, root, cid, ["cat", "/data/old", "/data/new"])
        seen = read[1] == want
        if not seen:
            print(f"  round {rnd}: the guest read {read[1]!r}, the host wrote {want!r}", flush=True)
        os.remove(os.path.join(data, "new"))
        return first, second, read, seen
    finally:
        subprocess.run([svm, "--root", root, "delete", "--force", cid], capture_output=True)


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else float("nan")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--sandbox-vm", default=os.path.join(ROOT, "target/release/sandbox-vm"))
    ap.add_argument("--keep-template", help="template directory to use and keep (default: a temporary one)")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        os.environ["SANDBOX_VM_TEMPLATE_DIR"] = a.keep_template or os.path.join(d, "templates")
        data = os.path.join(d, "data")
        os.makedirs(data)
        bundle = make_bundle(os.path.join(d, "bundle"), a.sandbox_vm, data)
        root = os.path.join(d, "root")
        os.makedirs(root)
        start = time.monotonic()
        subprocess.run([a.sandbox_vm, "template", "--bundle", bundle], check=True, stdout=subprocess.DEVNULL)
        print(f"template ready in {time.monotonic() - start:.1f} s", flush=True)
        rounds = []
        for rnd in range(a.runs):
            r = one_round(a.sandbox_vm, root, bundle, data, rnd)
            print(f"round {rnd + 1}: " + ", ".join(
                f"{name} {t:.2f} s majflt {m}" for name, (t, _, m) in zip(("exec 1", "exec 2", "bind read"), r[:3]))
                + f", host write seen: {r[3]}", flush=True)
            rounds.append(r)
        print()
        for i, name in enumerate(("first exec /bin/true", "second exec /bin/true", "cat after host write")):
            print(f"{name:22} median {med([r[i][0] for r in rounds]):6.2f} s, "
                  f"major faults median {med([r[i][2] for r in rounds])} "
                  f"({[r[i][2] for r in rounds]})")
        seen = sum(r[3] for r in rounds)
        print(f"host writes seen in the guest: {seen} of {len(rounds)}")
    return 0 if seen == len(rounds) else 1


if __name__ == "__main__":
    sys.exit(main())
