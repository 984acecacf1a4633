#!/usr/bin/env python3
"""Pod network benchmark: TCP throughput (iperf3, both directions) and round-trip time
(ping) from a container to a peer, with sandbox-vm and runc in the same run, same bundle,
same network namespace.

Each iperf3 test moves a fixed amount of data (`-n`), sized per runtime to take seconds
(`--bytes-runc`, `--bytes-vm`), rather than running for a fixed time. A timed upload
(`-t 5`) failed with sandbox-vm: iperf3's client (3.12) sends up to 10 blocks of 128 KiB
between looks at its clock, and a guest that moves about 1 Mbit/s (its kernel is emulated
on hosts without VT-x/AMD-V) took 9-27 s for a "5-second" upload (the server saw nothing
for the first 5-9 s, then ~1 Mbit/s, no retransmits), longer still when other work shared
the CPU. The server closes a timed test's sockets 40 s after its duration (a fixed grace
period), and the client's next write then fails with "unable to write to stream socket:
Broken pipe". A byte-count test has no server deadline.

The test makes two network namespaces: "pod" (veth eth0 10.231.9.2/24, default route via
the peer, as CNI leaves a pod) and "peer" (the other end, 10.231.9.1, running `iperf3 -s`:
the host peer). No traffic leaves them. The rootfs is busybox plus the host's iperf3 and the
libraries `ldd` names (Debian's iperf3 is dynamic).

usage: tests/bench-net.py [--bytes-runc N] [--bytes-vm N] [--runs N]   (root; eval "$(scripts/setup.sh)" first)
"""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
POD_IP, PEER_IP = "10.231.9.2", "10.231.9.1"
MARK = "@@"


def sh(*args):
    subprocess.run(args, check=True)


def make_netns(tag):
    pod, peer = f"svm-bn-{tag}-pod", f"svm-bn-{tag}-peer"
    for ns in (pod, peer):
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        sh("ip", "netns", "add", ns)
        sh("ip", "-n", ns, "link", "set", "lo", "up")
    sh("ip", "-n", pod, "link", "add", "eth0", "type", "veth", "peer", "name", "peer0", "netns", peer)
    sh("ip", "-n", pod, "addr", "add", f"{POD_IP}/24", "dev", "eth0")
    sh("ip", "-n", peer, "addr", "add", f"{PEER_IP}/24", "dev", "peer0")
    sh("ip", "-n", pod, "link", "set", "eth0", "up")
    sh("ip", "-n", peer, "link", "set", "peer0", "up")
    sh("ip", "-n", pod, "route", "add", "default", "via", PEER_IP)
    return pod, peer


def copy_with_libs(binary, rootfs):
    """Copies `binary` and every library ldd lists (and the loader) to the same paths."""
    out = subprocess.run(["ldd", binary], capture_output=True, text=True, check=True).stdout
    paths = [binary] + re.findall(r"(/\S+) \(0x", out)
    for p in paths:
        real = os.path.realpath(p)
        dst = os.path.join(rootfs, p.lstrip("/"))
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        shutil.copy(real, dst)


def make_bundle(d, sandbox_vm, pod_ns):
    rootfs = os.path.join(d, "rootfs")
    for sub in ["bin", "proc", "sys", "dev", "tmp", "etc"]:
        os.makedirs(os.path.join(rootfs, sub), exist_ok=True)
    shutil.copy("/bin/busybox", os.path.join(rootfs, "bin/busybox"))
    for a in ["sh", "ping", "echo"]:
        os.symlink("busybox", os.path.join(rootfs, "bin", a))
    copy_with_libs(shutil.which("iperf3"), rootfs)
    subprocess.run([sandbox_vm, "spec"], cwd=d, check=True)
    path = os.path.join(d, "config.json")
    spec = json.load(open(path))
    spec["process"]["terminal"] = False
    spec["root"]["readonly"] = False  # iperf3 makes a temporary file
    spec["process"]["capabilities"] = {k: ["CAP_NET_RAW"] + v for k, v in spec["process"]["capabilities"].items()}
    nss = [n for n in spec["linux"]["namespaces"] if n["type"] != "network"]
    spec["linux"]["namespaces"] = nss + [{"type": "network", "path": f"/run/netns/{pod_ns}"}]
    json.dump(spec, open(path, "w"), indent=1)
    return d


def set_workload(bundle, nbytes):
    """The container's command: ping, then iperf3 moving `nbytes` up, then down."""
    path = os.path.join(bundle, "config.json")
    spec = json.load(open(path))
    iperf = f"iperf3 -c {PEER_IP} -n {nbytes} -J"
    spec["process"]["args"] = ["sh", "-c",
                               f"ping -c 10 {PEER_IP}; echo {MARK}up; {iperf}; sleep 1; echo {MARK}down; {iperf} -R"]
    json.dump(spec, open(path, "w"), indent=1)


def parse(out):
    """(rtt avg ms, upload Mbit/s, download Mbit/s, iperf's mean TCP RTT ms) from the output;
    a value iperf3 could not measure is None (its error is printed)."""
    m = re.search(r"min/avg/max = [\d.]+/([\d.]+)/", out)
    rtt = float(m.group(1)) if m else None
    parts = out.split(MARK)
    up = json.loads(parts[1][len("up"):])
    down = json.loads(parts[2][len("down"):])
    for name, j in (("upload", up), ("download", down)):
        if "error" in j:
            print(f"  iperf3 {name}: {j['error']}", file=sys.stderr)

    def mbit(j):
        s = j.get("end", {}).get("sum_received")
        return s["bits_per_second"] / 1e6 if s else None

    streams = up.get("end", {}).get("streams") or [{}]
    srtt = streams[0].get("sender", {}).get("mean_rtt")
    return rtt, mbit(up), mbit(down), (srtt / 1000 if srtt else None)


def run(cmd):
    start = time.monotonic()
    r = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    took = time.monotonic() - start
    if os.environ.get("BENCH_NET_RAW"):
        with open(os.environ["BENCH_NET_RAW"], "a") as f:
            f.write(f"== {cmd[0]}\n{r.stdout}\n")
    if r.returncode != 0:
        print(f"  {cmd[0]} failed ({r.returncode}): {r.stderr.strip()[-400:]}\n{r.stdout[-400:]}", file=sys.stderr)
        return None
    try:
        return parse(r.stdout), took
    except (ValueError, KeyError, IndexError) as e:
        print(f"  {cmd[0]}: cannot parse its output ({e!r}):\n{r.stdout[-1500:]}", file=sys.stderr)
        return None


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bytes-runc", default="4G", help="iperf3 -n per direction with runc (default: 4G, seconds at Gbit/s)")
    ap.add_argument("--bytes-vm", default="2M", help="iperf3 -n per direction with sandbox-vm (default: 2M, seconds at Mbit/s)")
    ap.add_argument("--runs", type=int, default=1, help="runs per runtime (a sandbox-vm run boots a VM)")
    ap.add_argument("--sandbox-vm", default=os.path.join(ROOT, "target/release/sandbox-vm"))
    a = ap.parse_args()
    load0 = os.getloadavg()
    pod, peer = make_netns(str(os.getpid()))
    results = {"runc": [], "sandbox-vm": []}
    server = None
    try:
        with tempfile.TemporaryDirectory() as d:
            server_log = os.path.join(d, "iperf3-server.log")
            server = subprocess.Popen(["nsenter", f"--net=/run/netns/{peer}", "iperf3", "-s", "--logfile", server_log],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            bundle = make_bundle(os.path.join(d, "bundle"), a.sandbox_vm, pod)
            for i in range(a.runs):
                cmds = {
                    "runc": (a.bytes_runc, ["runc", "--root", os.path.join(d, "runc"), "run", "--bundle", bundle, f"bn-r{i}"]),
                    "sandbox-vm": (a.bytes_vm, [a.sandbox_vm, "--root", os.path.join(d, "svm"), "run", "--bundle", bundle, f"bn-s{i}"]),
                }
                for k, (nbytes, cmd) in cmds.items():
                    set_workload(bundle, nbytes)
                    r = run(cmd)
                    if r:
                        results[k].append(r[0])
                        print(f"run {i + 1} {k}: {r[0]} ({r[1]:.0f} s)", flush=True)
                    if not r or None in r[0]:
                        with open(server_log) as f:
                            print("  iperf3 server log (last lines):\n" + "".join(f.readlines()[-15:]), file=sys.stderr)
    finally:
        if server:
            server.kill()
            server.wait()
        for ns in (pod, peer):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
    print()
    print(f"iperf3 -n {a.bytes_runc} (runc), {a.bytes_vm} (sandbox-vm) per direction; "
          f"load average before: {load0}, after: {os.getloadavg()}")
    print("| runtime | ping RTT avg (ms) | TCP RTT, iperf3 mean (ms) | upload (Mbit/s) | download (Mbit/s) |")
    print("|---|---|---|---|---|")
    fmt = lambda v: "-" if v is None else f"{v:.3f}" if v < 10 else f"{v:.1f}"
    for k, rs in results.items():
        for rtt, up, down, srtt in rs:
            print(f"| {k} | {fmt(rtt)} | {fmt(srtt)} | {fmt(up)} | {fmt(down)} |")
    return 0 if all(results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
