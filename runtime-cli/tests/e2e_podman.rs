//! podman driving sandbox-vm through conmon, with a busybox rootfs tarball brought in with
//! `podman import` (no registry needed). Needs root and podman (`scripts/setup.sh`
//! installs it). Two boots:
//! - `podman run --rm -v DIR:/data IMAGE sh -c 'uname -sr; cat /data/x'` prints the guest
//!   kernel's release (not the host's) and the host file, through the sandbox's share;
//! - `podman pause` / `podman unpause` of a running container: the VM's vCPUs stop and
//!   start again, and podman sees `paused`, then `running`.

#[path = "common/bundle.rs"]
mod bundle;
mod common;

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

struct Image {
    name: &'static str,
    dir: PathBuf,
}

impl Image {
    /// Imports a busybox rootfs as `name`.
    fn import(name: &'static str) -> Image {
        if Command::new("podman").arg("--version").output().is_err() {
            panic!("podman is not installed (apt-get install podman)");
        }
        let dir = std::env::temp_dir().join(format!("svm-e2e-{name}-{}", std::process::id()));
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
        let st = Command::new("podman")
            .args(["import", "--quiet"])
            .arg(&tar)
            .arg(format!("localhost/{name}"))
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(st.success(), "podman import");
        Image { name, dir }
    }

    fn tag(&self) -> String {
        format!("localhost/{}", self.name)
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        let _ = Command::new("podman")
            .args(["rmi", "-f", &self.tag()])
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn podman() -> Command {
    let mut c = Command::new("podman");
    c.env("SANDBOX_VM_KERNEL", common::kernel())
        .env(
            "SANDBOX_VM_AGENT_DISK",
            common::image("SANDBOX_VM_AGENT_DISK", "agent.ext4"),
        )
        .arg("--runtime")
        .arg(env!("CARGO_BIN_EXE_sandbox-vm"))
        .stdin(Stdio::null());
    c
}

fn ok(out: Output, what: &str) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{what}: {:?}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn podman_runs_a_container_in_a_vm_with_a_host_directory() {
    let img = Image::import("sandbox-vm-e2e-busybox");
    let data = img.dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("x"), "hello from the host\n").unwrap();
    let out = podman()
        .arg("run")
        .arg("--rm")
        .arg("-v")
        .arg(format!("{}:/data", data.display()))
        .args([&img.tag(), "sh", "-c", "uname -sr; cat /data/x"])
        .output()
        .unwrap();
    let stdout = ok(out, "podman run");
    let host = Command::new("uname").arg("-r").output().unwrap();
    let host = String::from_utf8_lossy(&host.stdout);
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
    let img = Image::import("sandbox-vm-e2e-pause");
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
            .args(["run", "-d", "--name", &name, &img.tag(), "sleep", "1000"])
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
