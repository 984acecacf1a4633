#!/usr/bin/env python3
"""Boot benchmark: time from process start to the test init's marker line, for sandbox-vm and
for QEMU `-M microvm` booting the same kernel, initramfs and command line, interleaved in
one run. Prints each measurement, the medians and the ratio (these hosts are noisy: compare
ratios, not absolute numbers).

usage: tests/bench-boot.py [--rounds N] [--kernel K] [--initrd I] [--mem-mib M] [--timeout S]
Defaults come from SANDBOX_VM_KERNEL / SANDBOX_VM_TEST_INITRD (see scripts/setup.sh).
"""
import argparse
import os
import statistics
import subprocess
import sys
import time

MARKER = b"SANDBOX-VM-INIT-OK uptime_ms="
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def time_to_marker(cmd, timeout):
    """Runs cmd, returns (seconds to marker or None, guest uptime ms or None, exit code)."""
    start = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    found, uptime, buf = None, None, b""
    try:
        while True:
            if time.monotonic() - start > timeout:
                proc.kill()
                break
            chunk = proc.stdout.read1(4096)
            if not chunk:
                break
            buf += chunk
            if found is None and MARKER in buf:
                line_end = buf.find(b"\n", buf.find(MARKER))
                if line_end < 0:
                    continue
                found = time.monotonic() - start
                tail = buf[buf.find(MARKER) + len(MARKER):line_end].split()
                uptime = int(tail[0]) if tail and tail[0].isdigit() else None
            buf = buf[-256:] if found is not None else buf
        code = proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return found, uptime, code


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--kernel", default=os.environ.get("SANDBOX_VM_KERNEL"))
    ap.add_argument("--initrd", default=os.environ.get("SANDBOX_VM_TEST_INITRD"))
    ap.add_argument("--mem-mib", type=int, default=128)
    ap.add_argument("--timeout", type=float, default=900)
    ap.add_argument("--sandbox-vm", default=os.path.join(ROOT, "target/release/sandbox-vm"))
    a = ap.parse_args()
    if not a.kernel or not a.initrd:
        sys.exit("bench-boot: need --kernel and --initrd (or run: eval \"$(scripts/setup.sh)\")")

    cmdline = subprocess.check_output(
        [a.sandbox_vm, "boot", "--kernel", a.kernel, "--print-cmdline"], text=True).strip()
    ours = [a.sandbox_vm, "boot", "--kernel", a.kernel, "--initrd", a.initrd,
            "--mem-mib", str(a.mem_mib), "--vcpus", "1"]
    # QEMU's best configuration here (guest-kernel-config/README.md): host CPU without the
    # ARCH_CAPABILITIES MSR (this KVM refuses QEMU's write of it), an RTC and an i8042 like
    # ours, no option ROMs.
    qemu = ["qemu-system-x86_64", "-M", "microvm,x-option-roms=off,rtc=on,isa-serial=on",
            "-enable-kvm", "-cpu", "host,arch-capabilities=off", "-smp", "1", "-m", str(a.mem_mib),
            "-nodefaults", "-no-user-config", "-nographic", "-serial", "stdio", "-no-reboot",
            "-device", "i8042", "-kernel", a.kernel, "-initrd", a.initrd, "-append", cmdline]
    print(f"kernel {a.kernel}\ninitrd {a.initrd} ({os.path.getsize(a.initrd)} bytes)\n"
          f"guest command line (both): {cmdline}\n", flush=True)

    results = {"sandbox-vm": [], "qemu-microvm": []}
    for r in range(a.rounds):
        for name, cmd in (("sandbox-vm", ours), ("qemu-microvm", qemu)):
            t, up, code = time_to_marker(cmd, a.timeout)
            shown = f"{t:.1f} s" if t is not None else "no marker"
            ups = f", guest uptime {up / 1000:.1f} s" if up is not None else ""
            print(f"round {r + 1} {name:13} {shown}{ups}, exit {code}", flush=True)
            if t is not None:
                results[name].append(t)

    print()
    med = {k: statistics.median(v) for k, v in results.items() if v}
    for k in results:
        print(f"{k:13} median {med[k]:.1f} s over {len(results[k])}" if k in med else f"{k:13} no successful boot")
    if len(med) == 2:
        print(f"ratio sandbox-vm / qemu-microvm = {med['sandbox-vm'] / med['qemu-microvm']:.2f}")
    return 0 if len(med) == 2 else 1


if __name__ == "__main__":
    sys.exit(main())
