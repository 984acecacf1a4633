//! End to end: `sandbox-vm boot` runs the project's guest kernel and test init, which
//! prints its marker and reboots; the VMM exits 0. Slow on emulating hosts (about a
//! minute), so it is one boot.
//!
//! Needs the kernel (`guest-kernel-config/build.sh`) and the test initramfs
//! (`images/build-test-initramfs.sh`); `tests/run.sh` builds both and sets
//! SANDBOX_VM_KERNEL / SANDBOX_VM_TEST_INITRD.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Instant;
use test_support::artifacts::{image, kernel};

const MARKER: &str = "SANDBOX-VM-INIT-OK uptime_ms=";

#[test]
fn real_kernel_boots_to_init_and_reboots_cleanly() {
    let (k, i) = (
        kernel(),
        image("SANDBOX_VM_TEST_INITRD", "test-initramfs.cpio"),
    );
    let start = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_sandbox-vm"))
        .args(["boot", "--mem-mib", "128", "--kernel"])
        .arg(&k)
        .arg("--initrd")
        .arg(&i)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut marker_at = None;
    let mut console = Vec::new();
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        if marker_at.is_none() && line.contains(MARKER) {
            marker_at = Some(start.elapsed());
        }
        console.push(line);
    }
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let console = console.join("\n");
    assert!(
        out.status.success(),
        "VMM exited {:?}\nstderr: {stderr}\nconsole:\n{console}",
        out.status
    );
    let at = marker_at.unwrap_or_else(|| panic!("no init marker; console:\n{console}"));
    let line = console.lines().find(|l| l.contains(MARKER)).unwrap();
    let uptime_ms: u64 = line
        .split(MARKER)
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad marker line {line:?}"));
    assert!(uptime_ms > 0);
    assert!(!console.contains("SANDBOX-VM-INIT-FAIL"), "{console}");
    eprintln!(
        "e2e boot: init marker after {:.1} s wall (guest uptime {:.1} s); {stderr}",
        at.as_secs_f64(),
        uptime_ms as f64 / 1000.0
    );
}
