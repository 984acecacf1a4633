//! podman driving sandbox-vm through conmon: `podman --runtime sandbox-vm run --rm IMAGE
//! uname -sr` prints the guest kernel's release. The image is a busybox rootfs tarball
//! brought in with `podman import` (no registry needed). Needs root and podman
//! (`scripts/setup.sh` installs it).

#[path = "common/bundle.rs"]
mod bundle;
mod common;

use std::process::{Command, Stdio};

#[test]
fn podman_runs_a_container_in_a_vm() {
    if Command::new("podman").arg("--version").output().is_err() {
        panic!("podman is not installed (apt-get install podman)");
    }
    let dir = std::env::temp_dir().join(format!("svm-e2e-podman-{}", std::process::id()));
    let b = bundle::busybox_bundle(&dir.join("bundle"), &["true"]);
    let tar = dir.join("rootfs.tar");
    let st = Command::new("tar")
        .arg("-C")
        .arg(b.join("rootfs"))
        .arg("-cf")
        .arg(&tar)
        .arg(".")
        .status()
        .unwrap();
    assert!(st.success());
    let image = "localhost/sandbox-vm-e2e-busybox";
    let st = Command::new("podman")
        .args(["import", "--quiet"])
        .arg(&tar)
        .arg(image)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success(), "podman import");
    let out = Command::new("podman")
        .env("SANDBOX_VM_KERNEL", common::kernel())
        .env(
            "SANDBOX_VM_INITRD",
            common::image("SANDBOX_VM_INITRD", "agent-initramfs.cpio"),
        )
        .arg("--runtime")
        .arg(env!("CARGO_BIN_EXE_sandbox-vm"))
        .args(["run", "--rm", image, "uname", "-sr"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let _ = Command::new("podman").args(["rmi", image]).output();
    let _ = std::fs::remove_dir_all(&dir);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "podman run: {:?}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let host = Command::new("uname").arg("-r").output().unwrap();
    let host = String::from_utf8_lossy(&host.stdout);
    let guest = stdout
        .trim()
        .strip_prefix("Linux ")
        .expect("uname -sr output");
    assert_ne!(guest, host.trim(), "the container saw the host kernel");
}
