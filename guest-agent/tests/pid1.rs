//! The agent as PID 1: run it as the init of fresh PID, mount and UTS
//! namespaces (as in the guest: it mounts /proc, /sys, /dev, cgroups itself),
//! run a container, and shut down. In a PID namespace, reboot(RB_AUTOBOOT)
//! makes the kernel kill the namespace's init with SIGHUP, which stands in
//! for the VM reset.

mod common;

use std::os::unix::process::ExitStatusExt;
use std::process::Command;
use std::time::{Duration, Instant};

use agent_protocol::{Client, CreateSandbox, Endpoint, ExitStatus};
use common::*;
use test_support::cmd::KillOnDrop;

#[test]
fn agent_as_pid1_serves_and_shuts_down() {
    require_root();
    let dir = TempDir::new("pid1");
    let sock = dir.path().join("agent.sock");
    let child = Command::new("unshare")
        .args([
            "--pid",
            "--fork",
            "--kill-child",
            "--mount",
            "--uts",
            "--propagation",
            "private",
        ])
        .arg(agent_bin())
        .arg("--unix")
        .arg(&sock)
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .spawn()
        .expect("unshare (util-linux) is needed for this test");
    // Kills unshare, and with it (--kill-child) the agent, if the test fails.
    let mut child = KillOnDrop(child);
    let ep = Endpoint::Unix(sock);
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut c = loop {
        if let Ok(c) = Client::connect(&ep) {
            break c;
        }
        assert!(Instant::now() < deadline, "agent (PID 1) did not come up");
        std::thread::sleep(Duration::from_millis(20));
    };
    c.create_sandbox(CreateSandbox {
        sandbox_id: "sb".into(),
        hostname: Some("guest-vm".into()),
        shares: vec![],
    })
    .unwrap();

    let root = busybox_rootfs();
    let r = run_at(
        &ep,
        &unique("in-pid1"),
        spec(&["sh", "-c", "hostname; echo $$"], "ctr", None),
        root.path(),
    );
    assert_eq!(r.out(), "ctr\n1\n");
    assert_eq!(r.exit.status, ExitStatus::Code(0));

    c.shutdown().unwrap();
    let status = child.0.wait().unwrap();
    // util-linux unshare re-raises the signal that killed its child.
    assert!(
        status.signal() == Some(libc::SIGHUP) || status.code() == Some(128 + libc::SIGHUP),
        "{status:?}"
    );
}
