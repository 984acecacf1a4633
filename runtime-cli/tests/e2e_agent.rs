//! E2E for the guest agent in a booted guest (one shared boot): the guest boots from the
//! agent disk (root=/dev/vda, /init = guest-agent), a busybox rootfs is a second virtio-blk
//! disk, and the host drives the agent over hybrid vsock (`CONNECT 1024`).
//! - bad requests (unknown container, missing rootfs device, invalid spec) get error
//!   replies while the agent keeps serving;
//! - a container from the block-device rootfs prints its output and exits 3; the host gets
//!   both, and the kernel it reports is the guest's, not the host's;
//! - Shutdown ends the VM cleanly (VMM exit 0).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use agent_protocol::oci_spec::runtime::{Process, Spec};
use agent_protocol::{
    attach_stdio, Client, CreateContainer, CreateSandbox, Endpoint, ErrorCode, ExitStatus, Rootfs,
    StdioConfig, StreamId, StreamKind,
};
use test_support::artifacts::{image, kernel};
use test_support::host::kernel_release;
use test_support::rootfs::{busybox_rootfs, BUNDLE_APPLETS};

/// A busybox root filesystem (the runtime tests' bundle rootfs) as an ext4 image.
fn busybox_ext4(dir: &Path) -> PathBuf {
    let root = dir.join("bundle/rootfs");
    busybox_rootfs(&root, BUNDLE_APPLETS);
    let img = dir.join("rootfs.ext4");
    let st = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-O", "^has_journal", "-d"])
        .arg(&root)
        .arg(&img)
        .arg("16M")
        .status()
        .expect("mkfs.ext4 (apt-get install e2fsprogs)");
    assert!(st.success());
    img
}

fn spec(args: &[&str]) -> Spec {
    let mut p = Process::default();
    p.set_args(Some(args.iter().map(|s| s.to_string()).collect()));
    let mut s = Spec::default();
    s.set_process(Some(p));
    s.set_hostname(Some("e2e".into()));
    s
}

fn connect(ep: &Endpoint, deadline: Instant) -> Client {
    loop {
        if let Ok(mut c) = Client::connect(ep) {
            if c.ping().is_ok() {
                return c;
            }
        }
        assert!(Instant::now() < deadline, "the guest agent never answered");
        thread::sleep(Duration::from_millis(500));
    }
}

fn read_all(mut s: agent_protocol::Stream) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut v = Vec::new();
        s.read_to_end(&mut v).unwrap();
        String::from_utf8_lossy(&v).into_owned()
    })
}

/// `boot --disk` gives disks the serial `disk<index>`: the rootfs is the second disk.
const ROOTFS_SERIAL: &str = "disk1";

#[test]
fn agent_runs_a_container_from_a_block_device_in_the_guest() {
    let agent_disk = image("SANDBOX_VM_AGENT_DISK", "agent.ext4");
    let dir = std::env::temp_dir().join(format!("sandbox-vm-e2e-agent-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let rootfs = busybox_ext4(&dir);
    let uds = dir.join("vsock.sock");
    let console = dir.join("console.log");
    let start = Instant::now();
    let mut vmm = Command::new(env!("CARGO_BIN_EXE_sandbox-vm"))
        .args(["boot", "--kernel"])
        .arg(kernel())
        .arg("--disk")
        .arg(format!("{}:ro", agent_disk.display()))
        .arg("--disk")
        .arg(&rootfs)
        .arg("--vsock-uds")
        .arg(&uds)
        .arg("--serial")
        .arg(&console)
        .args([
            "--cmdline",
            "console=ttyS0 quiet mitigations=off root=/dev/vda ro rootfstype=ext4 init=/init",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let ep = Endpoint::HybridVsock {
        path: uds.clone(),
        port: 1024,
    };
    let mut c = connect(&ep, start + Duration::from_secs(600));
    let info = c.ping().unwrap();
    eprintln!(
        "e2e agent: answering {:.1} s after VMM start, agent {} RSS {} KiB",
        start.elapsed().as_secs_f64(),
        info.version,
        info.rss_kib
    );
    assert!(info.rss_kib > 0);
    c.create_sandbox(CreateSandbox {
        sandbox_id: "e2e".into(),
        hostname: Some("sandbox".into()),
        shares: vec![],
    })
    .unwrap();

    // Bad requests get error replies; the agent keeps serving.
    let e = c.start_container("no-such-container").unwrap_err();
    assert_eq!(
        e.agent_error().map(|e| e.code),
        Some(ErrorCode::NotFound),
        "{e}"
    );
    let missing = CreateContainer {
        container_id: "missing-rootfs".into(),
        spec: Box::new(spec(&["true"])),
        rootfs: Rootfs::BlockDevice {
            serial: "no-such-disk".into(),
            fstype: "ext4".into(),
            options: vec![],
        },
        stdio: StdioConfig::NONE,
    };
    let e = c.create_container(missing).unwrap_err();
    assert!(e.agent_error().is_some(), "{e}");
    let mut no_args = spec(&[]);
    no_args.set_process(None);
    let invalid = CreateContainer {
        container_id: "invalid-spec".into(),
        spec: Box::new(no_args),
        rootfs: Rootfs::BlockDevice {
            serial: ROOTFS_SERIAL.into(),
            fstype: "ext4".into(),
            options: vec![],
        },
        stdio: StdioConfig::NONE,
    };
    let e = c.create_container(invalid).unwrap_err();
    assert_eq!(
        e.agent_error().map(|e| e.code),
        Some(ErrorCode::InvalidArgument),
        "{e}"
    );
    c.ping().expect("agent still serving after bad requests");

    // The real container.
    let id = "c1";
    c.create_container(CreateContainer {
        container_id: id.into(),
        spec: Box::new(spec(&[
            "sh",
            "-c",
            "echo hi; uname -r; echo oops >&2; exit 3",
        ])),
        rootfs: Rootfs::BlockDevice {
            serial: ROOTFS_SERIAL.into(),
            fstype: "ext4".into(),
            options: vec![],
        },
        stdio: StdioConfig::OUTPUT,
    })
    .unwrap();
    let stream = |kind| StreamId {
        container_id: id.into(),
        exec_id: None,
        stream: kind,
    };
    let out = read_all(attach_stdio(&ep, stream(StreamKind::Stdout)).unwrap());
    let err = read_all(attach_stdio(&ep, stream(StreamKind::Stderr)).unwrap());
    let t = Instant::now();
    c.start_container(id).unwrap();
    let exit = c.wait(id, None).unwrap();
    let (out, err) = (out.join().unwrap(), err.join().unwrap());
    eprintln!(
        "e2e agent: container ran in {:.1} s: {out:?}",
        t.elapsed().as_secs_f64()
    );
    assert_eq!(exit.status, ExitStatus::Code(3));
    assert_eq!(err, "oops\n");
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some("hi"));
    let guest_release = lines.next().expect("uname -r output");
    assert!(
        guest_release.starts_with("6.12"),
        "guest kernel {guest_release}"
    );
    assert_ne!(guest_release, kernel_release());
    c.remove_container(id, false).unwrap();

    c.shutdown().unwrap();
    let status = vmm.wait().unwrap();
    let mut stderr = String::new();
    vmm.stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(
        status.success(),
        "VMM: {stderr}\nconsole: {}",
        std::fs::read_to_string(&console).unwrap_or_default()
    );
    assert!(!uds.exists(), "vsock socket left behind");
    let _ = std::fs::remove_dir_all(&dir);
}
