//! Bad input to `sandbox-vm boot` gets one clear line on stderr and a non-zero exit.
//! Runs without a guest kernel (a tiny ELF stands in where one is needed).

use std::path::PathBuf;
use std::process::{Command, Output};

use test_support::host::is_root;
use test_support::TempDir;

const BIN: &str = env!("CARGO_BIN_EXE_sandbox-vm");

fn scratch(name: &str) -> TempDir {
    TempDir::named(&format!("sandbox-vm-cli-{name}"))
}

/// A 64-bit ELF whose one segment (at 2 MiB) asks for 64 MiB of memory.
fn big_elf(dir: &std::path::Path) -> PathBuf {
    let p = dir.join("big.elf");
    let code = [0xf4, 0xeb, 0xfd, 0x90];
    std::fs::write(&p, vmm::testing::tiny_elf(0x20_0000, &code, 64 << 20)).unwrap();
    p
}

/// Asserts a failed run with exactly one stderr line containing `needle`.
fn assert_one_line_error(out: Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "expected failure, got {:?}",
        out.status
    );
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "stderr: {stderr}");
    assert!(stderr.contains(needle), "missing {needle:?} in: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

fn boot(args: &[&str]) -> Output {
    Command::new(BIN).arg("boot").args(args).output().unwrap()
}

#[test]
fn missing_kernel() {
    assert_one_line_error(
        boot(&["--kernel", "/nonexistent/vmlinux"]),
        "does not exist",
    );
}

#[test]
fn unreadable_kernel() {
    // A directory opens but cannot be read as a file.
    assert_one_line_error(boot(&["--kernel", "/"]), "cannot read kernel /");
}

#[test]
fn not_a_kernel() {
    let d = scratch("notkernel");
    let p = d.join("junk");
    std::fs::write(&p, vec![0x41u8; 8192]).unwrap();
    assert_one_line_error(boot(&["--kernel", p.to_str().unwrap()]), "not a kernel");
}

#[test]
fn memory_too_small_for_the_kernel() {
    let d = scratch("small");
    let k = big_elf(&d);
    assert_one_line_error(
        boot(&["--kernel", k.to_str().unwrap(), "--mem-mib", "32"]),
        "too small for kernel",
    );
    assert_one_line_error(
        boot(&["--kernel", k.to_str().unwrap(), "--mem-mib", "1"]),
        "mem_mib must be at least",
    );
}

#[test]
fn zero_vcpus() {
    let d = scratch("vcpus");
    let k = big_elf(&d);
    assert_one_line_error(
        boot(&["--kernel", k.to_str().unwrap(), "--vcpus", "0"]),
        "vcpus must be at least 1",
    );
}

#[test]
fn bad_config_file() {
    let d = scratch("config");
    let c = d.join("vm.json");
    std::fs::write(&c, r#"{"kernel": "/k", "vcpu": 2}"#).unwrap();
    assert_one_line_error(
        boot(&["--config", c.to_str().unwrap()]),
        "invalid VM config",
    );
}

#[test]
fn dev_kvm_absent() {
    assert!(
        is_root(),
        "this test needs root (it hides /dev/kvm in a mount namespace)"
    );
    let d = scratch("nokvm");
    let k = big_elf(&d);
    // An empty /dev in a private mount namespace: no /dev/kvm.
    let script = format!(
        "mount --make-rprivate / && mount -t tmpfs none /dev && exec {} boot --kernel {}",
        BIN,
        k.display()
    );
    let out = Command::new("unshare")
        .args(["-m", "sh", "-c", &script])
        .output()
        .unwrap();
    assert_one_line_error(out, "/dev/kvm does not exist");
}

#[test]
fn dev_kvm_without_permission() {
    assert!(
        is_root(),
        "this test needs root (it drops to an unprivileged uid)"
    );
    let d = scratch("noperm");
    let k = big_elf(&d);
    std::fs::set_permissions(&d, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            BIN,
            "boot",
            "--kernel",
        ])
        .arg(&k)
        .output()
        .unwrap();
    assert_one_line_error(out, "no permission to open /dev/kvm");
}

#[test]
fn output_to_a_closed_pipe_ends_quietly() {
    // `sandbox-vm features | head -c 1`: the reader is gone before the output is written.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = Command::new(BIN)
        .arg("features")
        .stdout(writer)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{:?} stderr: {stderr}", out.status);
    assert!(stderr.is_empty(), "{stderr}");
}
