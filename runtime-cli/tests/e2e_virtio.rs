//! Host half of the virtio e2e test: one guest boot with a virtio-blk disk, virtio-vsock and
//! virtio-rng; the guest half (`tests/guest/src/virtio_check.rs`, PID 1 of the virtio test
//! initramfs) reports each step on the console. Checks:
//! - the guest reads the disk the host wrote (its checksum matches the host's);
//! - the guest writes to the disk and the host sees the bytes after the run;
//! - the guest reads /dev/hwrng;
//! - the guest connects to the host over vsock (`<uds>_5000`) and data flows both ways;
//! - the host connects into a guest listener with `CONNECT 6000` and data flows both ways.
//!
//! A second boot runs the same guest under a jailed VMM (`vmm --jail`, uid 65534) in a
//! state directory like a sandbox's (0700 root): the guest's connection to host port 5000
//! still reaches the host's listener, which no other uid can connect to.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use test_support::artifacts::{image, kernel};
use test_support::host::connect_as;

const HOST_BYTES: usize = 1 << 20;
const GUEST_OFFSET: usize = 1 << 20;
const GUEST_BYTES: usize = 64 << 10;

fn fnv1a(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// Serves one guest connection on `<uds>_5000`: reads a line, answers, closes.
fn serve_guest_connection(listener: UnixListener) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut line = String::new();
        BufReader::new(s.try_clone().unwrap())
            .read_line(&mut line)
            .unwrap();
        s.write_all(format!("host got: {}\n", line.trim_end()).as_bytes())
            .unwrap();
        line
    })
}

/// Connects into the guest's port 6000 once it listens; returns (OK line, guest reply).
fn connect_into_guest(uds: PathBuf, deadline: Instant) -> thread::JoinHandle<(String, String)> {
    thread::spawn(move || loop {
        assert!(
            Instant::now() < deadline,
            "guest never accepted CONNECT 6000"
        );
        if let Ok(mut s) = UnixStream::connect(&uds) {
            s.write_all(b"CONNECT 6000\n").unwrap();
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut ok = String::new();
            // A refused connection (guest not listening yet) is closed by the VMM.
            if r.read_line(&mut ok).is_ok() && ok.starts_with("OK ") {
                s.write_all(b"ping from host\n").unwrap();
                let mut reply = String::new();
                r.read_line(&mut reply).unwrap();
                return (ok, reply);
            }
        }
        thread::sleep(Duration::from_millis(500));
    })
}

fn step<'a>(console: &'a str, name: &str) -> &'a str {
    let prefix = format!("VC {name} ");
    let line = console
        .lines()
        .find(|l| l.starts_with(&prefix))
        .unwrap_or_else(|| panic!("no {name} step; console:\n{console}"));
    line.strip_prefix(&format!("{prefix}ok "))
        .unwrap_or_else(|| panic!("step failed: {line}\nconsole:\n{console}"))
}

#[test]
fn guest_uses_blk_vsock_and_rng() {
    let kernel = kernel();
    let initrd = image("SANDBOX_VM_VIRTIO_INITRD", "virtio-check.cpio");
    let dir = std::env::temp_dir().join(format!("sandbox-vm-e2e-virtio-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let disk = dir.join("disk.img");
    let host_data: Vec<u8> = (0..HOST_BYTES as u64)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let mut image = host_data.clone();
    image.resize(4 << 20, 0);
    std::fs::write(&disk, &image).unwrap();
    let uds = dir.join("v.sock");
    let guest_conn = serve_guest_connection(UnixListener::bind(dir.join("v.sock_5000")).unwrap());
    let into_guest = connect_into_guest(uds.clone(), Instant::now() + Duration::from_secs(600));

    let out = Command::new(env!("CARGO_BIN_EXE_sandbox-vm"))
        .args(["boot", "--rng", "--kernel"])
        .arg(&kernel)
        .arg("--initrd")
        .arg(&initrd)
        .arg("--disk")
        .arg(&disk)
        .arg("--vsock-uds")
        .arg(&uds)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let console = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "VMM: {stderr}\nconsole:\n{console}");
    assert!(console.contains("VC done"), "{console}");

    assert_eq!(
        step(&console, "blk-read"),
        format!("fnv={:016x}", fnv1a(&host_data))
    );
    assert_eq!(step(&console, "blk-write"), format!("bytes={GUEST_BYTES}"));
    let after = std::fs::read(&disk).unwrap();
    for (i, b) in after[GUEST_OFFSET..GUEST_OFFSET + GUEST_BYTES]
        .iter()
        .enumerate()
    {
        assert_eq!(*b, (i * 7 % 251) as u8, "guest write at byte {i}");
    }
    assert_eq!(after[..HOST_BYTES], host_data[..], "host data intact");

    let distinct: usize = step(&console, "rng")
        .strip_prefix("bytes=64 distinct=")
        .and_then(|n| n.parse().ok())
        .unwrap();
    assert!(
        distinct > 16,
        "64 random bytes with only {distinct} distinct values"
    );

    assert_eq!(guest_conn.join().unwrap(), "hello from the guest\n");
    assert_eq!(
        step(&console, "vsock-out"),
        "reply=host got: hello from the guest"
    );
    let (ok, reply) = into_guest.join().unwrap();
    let port: u64 = ok.trim_end().strip_prefix("OK ").unwrap().parse().unwrap();
    assert!(port >= 1 << 30, "host-side port {port}");
    assert_eq!(reply, "PING FROM HOST\n");
    assert_eq!(step(&console, "vsock-in"), "got=ping from host");

    // The VMM removed its socket; the test's own listener file is ours to remove.
    assert!(!Path::new(&uds).exists(), "vsock socket left behind");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Waits until the console file holds `needle` (the guest is slow here).
fn wait_console(console: &Path, needle: &str, vmm: &mut std::process::Child) -> String {
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let text = std::fs::read_to_string(console).unwrap_or_default();
        if text.contains(needle) {
            return text;
        }
        if let Some(st) = vmm.try_wait().unwrap() {
            panic!("the VMM ended ({st}) before {needle:?}; console:\n{text}");
        }
        assert!(Instant::now() < deadline, "no {needle:?}; console:\n{text}");
        thread::sleep(Duration::from_millis(500));
    }
}

/// The jailed VMM of the test and its directory: whatever happens, nothing stays.
struct JailedRun {
    dir: PathBuf,
    vmm: Option<std::process::Child>,
}

impl Drop for JailedRun {
    fn drop(&mut self) {
        if let Some(mut vmm) = self.vmm.take() {
            // The jailed child dies with its parent (PR_SET_PDEATHSIG); the cgroup stays.
            let _ = vmm.kill();
            let _ = vmm.wait();
        }
        sandbox::jail::remove_cgroup(&self.dir.join("jail"));
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn a_jailed_vmm_delivers_guest_connections_to_a_listener_no_other_uid_reaches() {
    use std::os::unix::fs::PermissionsExt;
    let kernel = kernel();
    let initrd = image("SANDBOX_VM_VIRTIO_INITRD", "virtio-check.cpio");
    let dir = std::env::temp_dir().join(format!("svm-e2e-jail-vsock-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    // As a sandbox's state directory is laid out (sandbox::SandboxPaths).
    let uds = dir.join("vsock/vsock.sock");
    sandbox::jail::create_vsock_dir(&uds, true).unwrap();
    let listener = sandbox::jail::listen_guest_port(&uds, 5000).unwrap();
    let port_sock = dir.join("vsock/vsock.sock_5000");
    for uid in [sandbox::jail::UID, 1000] {
        assert_eq!(connect_as(uid, &port_sock), libc::EACCES, "uid {uid}");
    }
    let guest_conn = serve_guest_connection(listener);

    let console = dir.join("console.log");
    let mut vm = vmm_api::config::VmConfig::new(&kernel);
    vm.initrd = Some(initrd);
    vm.serial = vmm_api::config::SerialOutput::File(console.clone());
    vm.vsock = Some(vmm_api::config::VsockConfig {
        guest_cid: 3,
        uds_path: uds.clone(),
    });
    vm.rng = true;
    let config = dir.join("vm.json");
    std::fs::write(&config, serde_json::to_string(&vm).unwrap()).unwrap();
    let started = Instant::now();
    let vmm = Command::new(test_support::artifacts::built_binary("sandbox-vm-vmm"))
        .arg("--config")
        .arg(&config)
        .arg("--api-sock")
        .arg(dir.join("vmm.sock"))
        .arg("--jail")
        .arg(dir.join("jail"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut run = JailedRun {
        dir: dir.clone(),
        vmm: Some(vmm),
    };
    let vmm = run.vmm.as_mut().unwrap();

    let text = wait_console(&console, "VC vsock-out ", vmm);
    eprintln!(
        "jailed VMM: the guest's connection was served {:.1} s after start",
        started.elapsed().as_secs_f64()
    );
    // Without a reachable listener the VMM resets the guest's connection ("connect:
    // Connection reset by peer") and the listener thread never returns: check the guest first.
    assert_eq!(
        step(&text, "vsock-out"),
        "reply=host got: hello from the guest"
    );
    assert_eq!(guest_conn.join().unwrap(), "hello from the guest\n");
    // Host -> guest through the jailed VMM's own socket, so the guest finishes and reboots.
    let deadline = Instant::now() + Duration::from_secs(600);
    let (ok, reply) = connect_into_guest(uds.clone(), deadline).join().unwrap();
    assert!(ok.starts_with("OK "), "{ok}");
    assert_eq!(reply, "PING FROM HOST\n");
    let status = loop {
        if let Some(st) = vmm.try_wait().unwrap() {
            break st;
        }
        assert!(Instant::now() < deadline, "the guest never rebooted");
        thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(status.code(), Some(0));
    run.vmm = None;
    // The jailed VMM could remove its own socket from its directory.
    assert!(!uds.exists(), "vsock socket left behind");
}
