//! containerd 1.6 (Debian's, started by the test) runs a detached container through the
//! shim with `ctr` (one boot): exec, ps, kill and the exit status. It has a 1 GiB memory
//! limit: its VM (1 GiB + the guest overhead) runs in the VMM's jail. (`ctr run --rm`
//! against every containerd version is in e2e_versions.)

mod common;

use std::time::{Duration, Instant};

use common::{Containerd, BUSYBOX, RUNTIME};
use test_support::host::kernel_release;
use test_support::text;

const NS: &str = "shim-e2e";

/// Polls `ctr task ls` until the task is STOPPED.
fn wait_stopped(c: &Containerd, id: &str) {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let ls = text(&c.ctr(NS, &["task", "ls"]).stdout);
        if ls
            .lines()
            .any(|l| l.starts_with(id) && l.contains("STOPPED"))
        {
            return;
        }
        assert!(Instant::now() < deadline, "task {id} did not stop: {ls}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn ctr_runs_execs_and_kills_a_container_in_its_own_vm() {
    common::require_host();
    let c = Containerd::start("ctr");
    c.import_images(NS);
    let host = kernel_release();

    // A detached container: exec in it, then kill it and read its status.
    let out = c.ctr(
        NS,
        &[
            "run",
            "-d",
            "--runtime",
            RUNTIME,
            "--memory-limit",
            "1073741824",
            BUSYBOX,
            "long1",
            "sleep",
            "100000",
        ],
    );
    assert!(
        out.status.success(),
        "ctr run -d: {}\n{}",
        text(&out.stderr),
        c.log_tail()
    );
    let exec = c.ctr(
        NS,
        &[
            "task",
            "exec",
            "--exec-id",
            "e1",
            "long1",
            "sh",
            "-c",
            "uname -r; exit 3",
        ],
    );
    // (`ctr run` showing the guest kernel is checked for every containerd version by
    // e2e_versions.)
    let release = text(&exec.stdout).trim().to_string();
    assert!(
        release.contains("sandbox-vm") && release != host,
        "exec output: not our guest kernel: {release:?}"
    );
    assert_eq!(
        exec.status.code(),
        Some(3),
        "exec exit status; {}",
        text(&exec.stderr)
    );
    // The guest has the RAM, and the VMM runs jailed (its pid-namespace child as uid
    // 65534).
    let exec = c.ctr(
        NS,
        &[
            "task",
            "exec",
            "--exec-id",
            "e2",
            "long1",
            "cat",
            "/proc/meminfo",
        ],
    );
    let meminfo = text(&exec.stdout);
    let total = test_support::host::mem_total_kib(&meminfo).expect("MemTotal");
    assert!(
        total > 1 << 20,
        "guest MemTotal {total} KiB for a 1 GiB limit"
    );
    let uids = test_support::host::vmm_uids("/long1/vmm.sock");
    assert!(uids.contains(&65534), "VMM not jailed: uids {uids:?}");
    let ps = text(&c.ctr(NS, &["task", "ps", "long1"]).stdout);
    assert!(
        ps.lines().count() >= 2,
        "task ps lists the container's processes: {ps}"
    );

    let kill = c.ctr(NS, &["task", "kill", "-s", "SIGKILL", "long1"]);
    assert!(
        kill.status.success(),
        "ctr task kill: {}",
        text(&kill.stderr)
    );
    wait_stopped(&c, "long1");
    // ctr 1.6 reports a deleted task's non-zero status as a warning and exits 0.
    let del = c.ctr(NS, &["task", "delete", "long1"]);
    let msg = text(&del.stderr);
    assert!(del.status.success(), "ctr task delete: {msg}");
    assert!(
        msg.contains("exit code 137"),
        "exit status of the SIGKILLed task not reported: {msg}"
    );
    let cdel = c.ctr(NS, &["container", "delete", "long1"]);
    assert!(
        cdel.status.success(),
        "ctr container delete: {}",
        text(&cdel.stderr)
    );

    let left = c.wait_clean(Duration::from_secs(20));
    assert!(left.is_empty(), "left behind: {left:#?}");
}
