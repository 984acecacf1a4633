//! podman driving sandbox-vm through conmon, with a busybox rootfs tarball brought in with
//! `podman import` (no registry needed). Needs root and podman (`scripts/setup.sh`
//! installs it). Two boots:
//! - `podman run --rm -v DIR:/data IMAGE sh -c 'uname -sr; cat /data/x'` prints the guest
//!   kernel's release (not the host's) and the host file, through the sandbox's share;
//! - `podman pause` / `podman unpause` of a running container: the VM's vCPUs stop and
//!   start again, and podman sees `paused`, then `running`.

use std::process::{Command, Stdio};

use test_support::artifacts::with_guest;
use test_support::host::kernel_release;
use test_support::ok;
use test_support::podman::PodmanImage;
use test_support::rootfs::BUNDLE_APPLETS;

/// Imports a busybox rootfs as `localhost/<name>`.
fn import(name: &str) -> PodmanImage {
    PodmanImage::import(name, BUNDLE_APPLETS, |_| {})
}

fn podman() -> Command {
    let mut c = Command::new("podman");
    with_guest(&mut c)
        .arg("--runtime")
        .arg(env!("CARGO_BIN_EXE_sandbox-vm"))
        .stdin(Stdio::null());
    c
}

#[test]
fn podman_runs_a_container_in_a_vm_with_a_host_directory() {
    let img = import("sandbox-vm-e2e-busybox");
    let data = img.dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("x"), "hello from the host\n").unwrap();
    let out = podman()
        .arg("run")
        .arg("--rm")
        .arg("-v")
        .arg(format!("{}:/data", data.display()))
        .args([&img.tag, "sh", "-c", "uname -sr; cat /data/x"])
        .output()
        .unwrap();
    let stdout = ok(out, "podman run");
    let host = kernel_release();
    let mut lines = stdout.lines();
    let guest = lines
        .next()
        .and_then(|l| l.strip_prefix("Linux "))
        .expect("uname -sr output");
    assert_ne!(guest, host.trim(), "the container saw the host kernel");
    assert_eq!(lines.next(), Some("hello from the host"), "{stdout}");
}

fn podman_status(name: &str) -> String {
    let out = Command::new("podman")
        .args(["inspect", "-f", "{{.State.Status}}", name])
        .output()
        .unwrap();
    ok(out, "podman inspect").trim().to_string()
}

#[test]
fn podman_pause_and_unpause_stop_and_restart_the_vm() {
    let img = import("sandbox-vm-e2e-pause");
    let name = format!("svm-pause-{}", std::process::id());
    struct Rm<'a>(&'a str);
    impl Drop for Rm<'_> {
        fn drop(&mut self) {
            let _ = Command::new("podman").args(["rm", "-f", self.0]).output();
        }
    }
    let _rm = Rm(&name);
    ok(
        podman()
            .args(["run", "-d", "--name", &name, &img.tag, "sleep", "1000"])
            .output()
            .unwrap(),
        "podman run -d",
    );
    assert_eq!(podman_status(&name), "running");
    ok(
        podman().args(["pause", &name]).output().unwrap(),
        "podman pause",
    );
    assert_eq!(podman_status(&name), "paused");
    ok(
        podman().args(["unpause", &name]).output().unwrap(),
        "podman unpause",
    );
    assert_eq!(podman_status(&name), "running");
    ok(
        podman().args(["rm", "-f", &name]).output().unwrap(),
        "podman rm -f",
    );
}
