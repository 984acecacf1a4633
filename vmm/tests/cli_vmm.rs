//! `sandbox-vm-vmm`: the VMM as its own process, driven through its API socket. Tiny
//! hand-made guests stand in for a kernel (needs /dev/kvm; a few seconds in all).

use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::time::Duration;

use vmm_api::config::{SerialOutput, VmConfig};
use vmm_api::{ApiClient, VmState};

use test_support::cmd::{poll_until, wait_exit};
use test_support::guests::{COUNTING, CRASHING};
use test_support::runtime::vmm_command;
use test_support::TempDir;

const BIN: &str = env!("CARGO_BIN_EXE_sandbox-vm-vmm");

struct Scratch(TempDir);

impl Scratch {
    fn new(name: &str) -> Self {
        Self(TempDir::named(&format!("sandbox-vm-vmm-{name}")))
    }
    fn sock(&self) -> PathBuf {
        self.0.join("api.sock")
    }
    /// Writes the guest and its VM config; returns the config's path.
    fn guest(&self, code: &[u8]) -> PathBuf {
        let kernel = self.0.join("guest.elf");
        std::fs::write(&kernel, vmm::testing::tiny_elf(0x20_0000, code, 0x1000)).unwrap();
        let mut c = VmConfig::new(kernel);
        c.mem_mib = 16;
        c.serial = SerialOutput::Off;
        let path = self.0.join("vm.json");
        std::fs::write(&path, serde_json::to_string(&c).unwrap()).unwrap();
        path
    }
}

fn spawn_vmm(config: &Path, sock: &Path) -> Child {
    vmm_command(BIN, sock)
        .arg("--config")
        .arg(config)
        .spawn()
        .unwrap()
}

/// Connects once the VMM is ready, giving up if it exits first.
fn connect(child: &mut Child, sock: &Path) -> ApiClient {
    ApiClient::connect_while(sock, Duration::from_secs(30), || {
        child.try_wait().unwrap().is_none()
    })
    .unwrap()
}

/// Waits up to 30 s for the process to exit; kills it (and fails) otherwise.
fn wait(child: &mut Child) -> ExitStatus {
    wait_exit(child, Duration::from_secs(30))
}

fn io_out(client: &mut ApiClient) -> u64 {
    client.metrics().unwrap().exits.io_out
}

/// Waits up to 10 s for the guest's I/O exits to pass `above`.
fn io_out_passes(client: &mut ApiClient, above: u64) -> bool {
    poll_until(Duration::from_secs(10), Duration::from_millis(5), || {
        io_out(client) > above
    })
}

#[test]
fn the_vmm_process_answers_pause_resume_describe_metrics_and_stop() {
    let s = Scratch::new("api");
    let config = s.guest(COUNTING);
    // A stale socket from an earlier run is replaced.
    drop(UnixListener::bind(s.sock()).unwrap());
    let mut child = spawn_vmm(&config, &s.sock());
    let mut client = connect(&mut child, &s.sock());

    let d = client.describe().unwrap();
    assert_eq!((d.state, d.vcpus, d.mem_mib), (VmState::Running, 1, 16));
    assert_eq!(d.pid, child.id());
    assert!(
        d.devices.iter().any(|d| d.kind == "serial"),
        "{:?}",
        d.devices
    );
    assert!(io_out_passes(&mut client, 100), "the guest is not running");

    assert!(client.pause().unwrap().changed);
    let frozen = io_out(&mut client);
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(io_out(&mut client), frozen, "exits while paused");
    assert_eq!(client.describe().unwrap().state, VmState::Paused);
    assert!(client.resume().unwrap().changed);
    assert!(io_out_passes(&mut client, frozen), "no exits after resume");

    assert_eq!(client.stop().unwrap().state, VmState::Stopping);
    let status = wait(&mut child);
    assert_eq!(status.code(), Some(0), "{status:?}");
    assert!(!s.sock().exists(), "the socket outlived the VMM");
}

#[test]
fn sigterm_is_an_orderly_stop() {
    let s = Scratch::new("sigterm");
    let config = s.guest(COUNTING);
    let mut child = spawn_vmm(&config, &s.sock());
    let mut client = connect(&mut child, &s.sock());
    assert!(io_out_passes(&mut client, 10));
    assert!(
        client.pause().unwrap().changed,
        "SIGTERM must also stop a paused VM"
    );
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = wait(&mut child);
    assert_eq!(status.code(), Some(0), "{status:?}");
    assert!(!s.sock().exists());
}

#[test]
fn a_guest_crash_exits_2_and_removes_the_socket() {
    let s = Scratch::new("crash");
    let config = s.guest(CRASHING);
    let mut child = spawn_vmm(&config, &s.sock());
    let status = wait(&mut child);
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("triple-faulted"), "{stderr}");
    assert!(!s.sock().exists());
}

#[test]
fn a_bad_config_exits_1_with_one_line_and_no_socket() {
    let s = Scratch::new("badconfig");
    let bad = s.0.join("bad.json");
    for (text, needle) in [
        ("{\"kernel\": 7}", "invalid VM config"),
        ("{\"kernel\": \"/nonexistent/vmlinux\"}", "does not exist"),
    ] {
        std::fs::write(&bad, text).unwrap();
        let out = Command::new(BIN)
            .arg("--config")
            .arg(&bad)
            .arg("--api-sock")
            .arg(s.sock())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
        assert!(stderr.contains(needle), "{stderr}");
        assert!(!s.sock().exists());
    }
}

fn spawn_restore(dir: &Path, sock: &Path, extra: &[&str]) -> Child {
    vmm_command(BIN, sock)
        .arg("--restore")
        .arg(dir)
        .args(extra)
        .spawn()
        .unwrap()
}

#[test]
fn a_snapshot_restores_in_a_new_vmm_process_and_another_kernel_is_refused() {
    let s = Scratch::new("restore");
    let config = s.guest(COUNTING);
    let mut child = spawn_vmm(&config, &s.sock());
    let mut client = connect(&mut child, &s.sock());
    assert!(io_out_passes(&mut client, 100));
    client.pause().unwrap();
    let snap = s.0.join("snap");
    client.snapshot(&snap).unwrap();
    client.stop().unwrap();
    assert_eq!(wait(&mut child).code(), Some(0));

    // Two processes from the same snapshot at once.
    let socks = [s.0.join("clone0.sock"), s.0.join("clone1.sock")];
    let mut clones: Vec<Child> = socks.iter().map(|p| spawn_restore(&snap, p, &[])).collect();
    for (c, sock) in clones.iter_mut().zip(&socks) {
        let mut client = connect(c, sock);
        let d = client.describe().unwrap();
        assert_eq!((d.state, d.mem_mib), (VmState::Running, 16));
        assert!(
            io_out_passes(&mut client, 100),
            "the restored guest does not run"
        );
        client.stop().unwrap();
    }
    for c in clones {
        let out = c.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{stderr}");
        assert!(
            stderr.contains("memory mapped") && stderr.contains("vCPUs running"),
            "{stderr}"
        );
    }

    let other = s.0.join("other.elf");
    std::fs::write(&other, vmm::testing::tiny_elf(0x20_0000, CRASHING, 0x1000)).unwrap();
    let out = spawn_restore(&snap, &s.sock(), &["--kernel", other.to_str().unwrap()])
        .wait_with_output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("another kernel"), "{stderr}");
    assert!(!s.sock().exists());
}
