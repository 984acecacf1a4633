#!/usr/bin/env python3
"""Runs OCI runtime-tools validation programs against runc and sandbox-vm, one after the
other in the same run, parses their TAP, prints a table per test and checks every case
runc passes and sandbox-vm does not against known-differences.txt. Called by run.sh."""
import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field

HERE = os.path.dirname(os.path.abspath(__file__))
KNOWN = os.path.join(HERE, "known-differences.txt")
# The CI subset: the lifecycle and kill (3 minutes on a quiet host, 6.5 under a load of 11
# on 2 cores), then namespaces refused or checked before the boot and the host hooks (about
# 70 s quiet). Each program that runs runtimetest in the guest (mounts, uid mappings,
# propagation, oom_score_adj) takes 1.5 to 6 minutes: --all or by name.
CI_TESTS = ["create", "state", "start", "kill", "linux_ns_itype", "linux_ns_path_type",
            "linux_ns_path", "process_capabilities_fail", "hooks_stdin", "poststop"]
KINDS = ("runc-fails", "vm-refuses", "in-guest", "by-design", "fixing")
PROGRAM = "(the program ends cleanly, with its plan and no error)"
POINT = re.compile(r"^(not ok|ok)\b(?:\s+(\d+))?(?:\s+-)?\s*(.*?)\s*(?:#\s*(skip|todo)\b.*)?$", re.I)


def log(msg):
    print(f"[conformance] {msg}", file=sys.stderr, flush=True)


@dataclass
class Result:
    """What one validation program printed and how it ended, for one runtime."""
    points: list = field(default_factory=list)  # (number, description, status)
    exit: str = "0"  # exit status, or "timeout"
    leaks: list = field(default_factory=list)
    seconds: float = 0.0

    def read_tap(self, text):
        """Takes the program's test points, and adds one for the program as a whole: it
        ended, printed its plan and (without test points) reported no error."""
        self.points, plan, errors = parse_tap(text)
        whole = self.exit == "0" and plan and not (errors and not self.points)
        self.points.append((0, PROGRAM, "pass" if whole else "fail"))

    def count(self, status):
        return sum(1 for p in self.points if p[2] == status and p[0] != 0)

    def passed(self):
        """Passing cases by description: runtimetest numbers its checks in map order."""
        return Counter(d for _, d, s in self.points if s == "pass")

    def cell(self):
        text = f"{self.count('pass')}/{self.count('fail')}"
        if self.count("skip"):
            text += f" ({self.count('skip')} skip)"
        if self.exit != "0":
            text += f" exit {self.exit}"
        elif (0, PROGRAM, "fail") in self.points:
            text += " error"
        return text


def parse_tap(text):
    """Test points at the start of a line (nested TAP inside YAML blocks is indented).
    Some programs (the hooks tests) print no test point and report a failure only as an
    `error` in a YAML block: a program without points that does so fails."""
    points, errors, plan, in_yaml = [], 0, False, False
    for line in text.splitlines():
        if line == "  ---":
            in_yaml = True
        elif line == "  ...":
            in_yaml = False
        elif in_yaml and re.match(r'^  "?error"?:', line):
            errors += 1
        plan = plan or bool(re.match(r"^1\.\.\d+", line))
        m = POINT.match(line)
        if not m:
            continue
        word, num, desc, directive = m.groups()
        if directive:
            status = directive.lower()
        else:
            status = "pass" if word == "ok" else "fail"
        points.append((int(num) if num else len(points) + 1, desc.strip(), status))
    return points, plan, errors


@dataclass
class Known:
    test: str
    cases: int  # how many of runc's passing cases may differ; -1 for any number
    kind: str
    reason: str


def load_known(path):
    known = {}
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            parts = line.split(None, 3)
            if len(parts) < 4 or not (parts[1] == "all" or parts[1].isdigit()) \
                    or parts[2].split(":")[0] not in KINDS:
                sys.exit(f"{path}:{lineno}: want `TEST CASES|all {'|'.join(KINDS)} REASON`")
            cases = -1 if parts[1] == "all" else int(parts[1])
            known[parts[0]] = Known(parts[0], cases, parts[2], parts[3])
    return known


def processes_under(path):
    """Processes whose command line, working directory or root mentions path."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        if int(pid) == os.getpid():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
            cwd = os.readlink(f"/proc/{pid}/cwd")
        except OSError:
            continue
        if path in cmd or cwd.startswith(path):
            found.append((int(pid), cmd.strip()))
    return found


def mounts_under(path):
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f]
    return [p for p in points if p == path or p.startswith(path + "/")]


class Runner:
    """Runs validation programs for one runtime, each in a work directory of its own
    (bundles under TMPDIR, the runtime's --root), and cleans up after each."""

    def __init__(self, name, binary, suite, scales, timeout, logdir):
        self.name, self.binary, self.suite = name, binary, suite
        self.scales, self.timeout, self.logdir = scales, timeout, logdir

    def run(self, test):
        work = tempfile.mkdtemp(prefix=f"conformance-{self.name}-")
        root, tmp = os.path.join(work, "root"), os.path.join(work, "tmp")
        os.makedirs(tmp)
        wrapper = os.path.join(work, "runtime")
        calls = os.path.join(self.logdir, f"{test}.{self.name}.calls")
        with open(wrapper, "w") as f:
            # Each call's start time and arguments go to TEST.RUNTIME.calls, for timing.
            f.write(f'#!/bin/sh\necho "$(date +%s.%N) $*" >> "{calls}"\n'
                    f'exec "{self.binary}" --root "{root}" "$@"\n')
        os.chmod(wrapper, 0o755)
        env = dict(os.environ, RUNTIME=wrapper, TMPDIR=tmp, OCI_WAIT_SCALE=str(self.scales[0]),
                   OCI_STOP_WAIT_SCALE=str(self.scales[1]))
        out_path = os.path.join(self.logdir, f"{test}.{self.name}.tap")
        err_path = os.path.join(self.logdir, f"{test}.{self.name}.stderr")
        result = Result()
        start = time.monotonic()
        try:
            with open(out_path, "w") as out, open(err_path, "w") as err:
                proc = subprocess.Popen([os.path.join(self.suite, "validation", test)],
                                        cwd=self.suite, env=env, stdout=out, stderr=err,
                                        stdin=subprocess.DEVNULL, start_new_session=True)
                try:
                    result.exit = str(proc.wait(timeout=self.timeout))
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
                    result.exit = "timeout"
        finally:
            result.leaks = self.clean(work, wrapper)
            result.seconds = time.monotonic() - start
        with open(out_path) as f:
            result.read_tap(f.read())
        return result

    def clean(self, work, wrapper):
        """Deletes every container left in this run's root, then kills and unmounts
        whatever still refers to the work directory; returns what had to be removed."""
        leaks = []
        ids = subprocess.run([wrapper, "list", "-q"], capture_output=True, text=True,
                             timeout=120).stdout.split()
        for cid in ids:
            subprocess.run([wrapper, "delete", "--force", cid], capture_output=True, timeout=300)
        # What a test left and `delete --force` took away is no leak; what is still there is.
        for _ in range(30):
            procs = processes_under(work)
            if not procs:
                break
            time.sleep(1)
        for pid, cmd in procs:
            leaks.append(f"process {pid}: {cmd[:120]}")
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for point in reversed(mounts_under(work)):
            leaks.append(f"mount {point}")
            subprocess.run(["umount", "-l", point], check=False)
        if mounts_under(work):
            leaks.append(f"mounts under {work} could not be unmounted: left in place")
            return leaks
        # Never into another file system, should a mount appear meanwhile.
        subprocess.run(["rm", "-rf", "--one-file-system", work], check=False)
        if os.path.exists(work):
            leaks.append(f"directory {work} could not be removed")
        return leaks


def regressions(runc, vm):
    """runc's passing cases that sandbox-vm did not pass (missing ones included)."""
    return sorted((runc.passed() - vm.passed()).elements())


def verdict(test, runc, vm, known):
    """(ok, word) for one test: a difference is fine only when listed with enough cases."""
    if vm.leaks:
        return False, "LEAK"
    diff = regressions(runc, vm)
    entry = known.get(test)
    if not diff:
        if entry:
            return True, "same (listed: prune?)"
        return True, "same" if vm.count("fail") == runc.count("fail") else "ok"
    if entry and (entry.cases < 0 or len(diff) <= entry.cases):
        return True, f"known: {entry.kind}"
    return False, f"DIFFERS ({len(diff)} case{'s' if len(diff) != 1 else ''})"


def all_tests(suite):
    return sorted(os.listdir(os.path.join(suite, "validation")))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--suite", required=True)
    ap.add_argument("--sandbox-vm", required=True)
    ap.add_argument("--runc", default=shutil.which("runc") or "runc")
    ap.add_argument("--all", action="store_true")
    ap.add_argument("--scale", type=int, default=int(os.environ.get("CONFORMANCE_SCALE", 10)))
    ap.add_argument("--stop-scale", type=int,
                    default=int(os.environ.get("CONFORMANCE_STOP_SCALE", 60)))
    ap.add_argument("--timeout", type=int, default=int(os.environ.get("CONFORMANCE_TIMEOUT", 2400)))
    ap.add_argument("--logdir")
    ap.add_argument("tests", nargs="*")
    a = ap.parse_args()
    tests = all_tests(a.suite) if a.all else (a.tests or CI_TESTS)
    unknown = set(tests) - set(all_tests(a.suite))
    if unknown:
        sys.exit(f"no such validation program: {' '.join(sorted(unknown))}")
    known = load_known(KNOWN)
    logdir = a.logdir or tempfile.mkdtemp(prefix="conformance-logs-")
    os.makedirs(logdir, exist_ok=True)
    log(f"{len(tests)} tests; TAP and stderr in {logdir}")
    # runc's waits are the suite's own; sandbox-vm's are scaled for a VM on this host.
    runners = [Runner("runc", a.runc, a.suite, (1, 1), 300, logdir),
               Runner("sandbox-vm", a.sandbox_vm, a.suite, (a.scale, a.stop_scale), a.timeout,
                      logdir)]
    rows, failed, start = [], [], time.monotonic()
    for test in tests:
        res = []
        for r in runners:
            res.append(r.run(test))
            log(f"{test} {r.name}: {res[-1].cell()} in {res[-1].seconds:.0f} s")
        ok, word = verdict(test, res[0], res[1], known)
        rows.append((test, res[0], res[1], word))
        if not ok:
            failed.append((test, res[0], res[1]))
    print_table(rows)
    print_failures(failed)
    runc_pass = sum(r[1].count("pass") for r in rows)
    vm_pass = sum(r[2].count("pass") for r in rows)
    print(f"\n{len(tests)} tests in {time.monotonic() - start:.0f} s; cases passed: "
          f"runc {runc_pass}, sandbox-vm {vm_pass}; logs in {logdir}")
    # The plain summary line CI reads: tests whose sandbox-vm result is acceptable.
    print(f"conformance: {len(tests) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0


def print_table(rows):
    print(f"\n{'test':<34} {'runc pass/fail':<22} {'sandbox-vm pass/fail':<22} verdict")
    for test, runc, vm, word in rows:
        print(f"{test:<34} {runc.cell():<22} {vm.cell():<22} {word}")


def print_failures(failed):
    for test, runc, vm in failed:
        print(f"\n{test}: sandbox-vm differs from runc and known-differences.txt does not list it")
        diff = regressions(runc, vm)
        for desc in diff[:10]:
            print(f"  runc passes, sandbox-vm does not: {desc}")
        if len(diff) > 10:
            print(f"  ... and {len(diff) - 10} more")
        for leak in vm.leaks:
            print(f"  left behind: {leak}")


if __name__ == "__main__":
    sys.exit(main())
