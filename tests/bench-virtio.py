#!/usr/bin/env python3
"""virtio benchmark: boots the virtio-check guest in bench mode and reports, measured from
inside the guest, virtio-blk sequential read throughput (O_DIRECT, 1 MiB requests), vsock
1-byte round-trip latency and guest-to-host vsock throughput. In the same run it measures a
host-only Unix socket pair doing the same round trips and transfer, and prints the ratios
(the device's overhead; these machines are noisy, so compare ratios).

usage: tests/bench-virtio.py [--blk-mib N] [--rtt-rounds N] [--vsock-kib N]
Needs SANDBOX_VM_KERNEL and SANDBOX_VM_VIRTIO_INITRD (eval "$(scripts/setup.sh)").
"""
import argparse
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def serve(listener, results):
    """First guest connection: echo (round trips). Second: count bytes to EOF, answer."""
    c, _ = listener.accept()
    while True:
        b = c.recv(4096)
        if not b:
            break
        c.sendall(b)
    c.close()
    c, _ = listener.accept()
    n = 0
    while True:
        b = c.recv(1 << 16)
        if not b:
            break
        n += len(b)
    c.sendall(b"%d\n" % n)
    c.close()
    results["host_counted"] = n


def host_rtt(rounds):
    a, b = socket.socketpair()
    def echo():
        for _ in range(rounds):
            b.sendall(b.recv(1))
    t = threading.Thread(target=echo)
    t.start()
    start = time.monotonic()
    for _ in range(rounds):
        a.sendall(b"p")
        a.recv(1)
    us = (time.monotonic() - start) * 1e6 / rounds
    t.join()
    return us


def host_throughput(total):
    a, b = socket.socketpair()
    got = [0]
    def sink():
        while True:
            d = b.recv(1 << 16)
            if not d:
                break
            got[0] += len(d)
    t = threading.Thread(target=sink)
    t.start()
    chunk = b"\x5a" * (64 << 10)
    start = time.monotonic()
    sent = 0
    while sent < total:
        n = min(len(chunk), total - sent)
        a.sendall(chunk[:n])
        sent += n
    a.shutdown(socket.SHUT_WR)
    t.join()
    return sent / (1 << 20) / (time.monotonic() - start)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--blk-mib", type=int, default=16)
    ap.add_argument("--rtt-rounds", type=int, default=200)
    ap.add_argument("--vsock-kib", type=int, default=4096)
    ap.add_argument("--sandbox-vm", default=os.path.join(ROOT, "target/release/sandbox-vm"))
    a = ap.parse_args()
    kernel = os.environ.get("SANDBOX_VM_KERNEL")
    initrd = os.environ.get("SANDBOX_VM_VIRTIO_INITRD")
    if not kernel or not initrd:
        sys.exit('bench-virtio: set SANDBOX_VM_KERNEL and SANDBOX_VM_VIRTIO_INITRD (eval "$(scripts/setup.sh)")')

    with tempfile.TemporaryDirectory() as d:
        disk = os.path.join(d, "disk.img")
        with open(disk, "wb") as f:
            f.write(os.urandom((a.blk_mib + 1) << 20))
        uds = os.path.join(d, "v.sock")
        lst = socket.socket(socket.AF_UNIX)
        lst.bind(uds + "_5000")
        lst.listen(2)
        results = {}
        t = threading.Thread(target=serve, args=(lst, results), daemon=True)
        t.start()
        cmdline = (f"console=ttyS0 quiet mitigations=off bench_blk_mib={a.blk_mib} "
                   f"bench_rtt_rounds={a.rtt_rounds} bench_vsock_kib={a.vsock_kib} -- bench")
        out = subprocess.run([a.sandbox_vm, "boot", "--kernel", kernel, "--initrd", initrd,
                              "--disk", disk + ":ro", "--vsock-uds", uds, "--cmdline", cmdline],
                             capture_output=True, text=True, timeout=3600)
        lines = [l for l in out.stdout.splitlines() if l.startswith("VB ")]
        print("\n".join(lines) or out.stdout[-2000:])
        if out.returncode != 0 or any("FAIL" in l for l in lines) or len(lines) != 3:
            print(out.stderr, file=sys.stderr)
            return 1

    def num(what):
        m = re.search(rf"^VB {what} ([0-9.]+)", "\n".join(lines), re.M)
        return float(m.group(1))

    rtt_host = host_rtt(a.rtt_rounds)
    thr_host = host_throughput(a.vsock_kib << 10)
    print(f"\nvirtio-blk sequential read (guest, O_DIRECT):  {num('blk-seq-read'):.2f} MiB/s")
    print(f"vsock round trip (guest)  {num('vsock-rtt'):.0f} us   | host Unix socketpair {rtt_host:.1f} us "
          f"| ratio {num('vsock-rtt') / rtt_host:.0f}x")
    print(f"vsock throughput (guest)  {num('vsock-throughput'):.2f} MiB/s | host Unix socketpair {thr_host:.0f} MiB/s "
          f"| ratio {thr_host / num('vsock-throughput'):.0f}x slower")
    return 0


if __name__ == "__main__":
    sys.exit(main())
