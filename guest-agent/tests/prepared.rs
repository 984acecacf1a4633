//! Prepared container inits (Request::PrepareInit): a container whose spec matches takes
//! the init made ahead of time over and gets the same confinement as one made on the
//! spot; any other spec, and every container after the first, is made as usual.
//! Needs root, like the other agent tests.

mod common;

use std::path::Path;
use std::time::Duration;

use agent_protocol::oci_spec::runtime::{Mount, Spec};
use agent_protocol::{ErrorCode, ExitStatus};
use common::*;

/// Clock ticks since boot (USER_HZ is 100 on Linux).
fn uptime_ticks() -> u64 {
    let s = std::fs::read_to_string("/proc/uptime").unwrap();
    let secs: f64 = s.split_whitespace().next().unwrap().parse().unwrap();
    (secs * 100.0) as u64
}

/// When `pid` started, in clock ticks since boot.
fn start_ticks(pid: i32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after_comm = &stat[stat.rfind(')').unwrap() + 2..];
    after_comm.split(' ').nth(19).unwrap().parse().unwrap()
}

/// What the container shows of its confinement: devices, masked and read-only paths,
/// PID 1, hostname, a bind mount made after the prepared mounts.
const CHECK: &str = "stat -c '%n %F %a %t:%T' /dev/null /dev/tty; readlink /dev/ptmx; \
    stat -c '%n %F' /proc/keys; ls -A /sys/firmware | wc -l; echo pid $$; hostname; \
    cat /data/f; grep -c ' /dev/pts ' /proc/self/mounts; grep CapBnd /proc/self/status; \
    echo x > /proc/sys/kernel/domainname 2>/dev/null || echo proc-sys-ro";

/// The default spec's bounding set: CAP_KILL (5), CAP_NET_BIND_SERVICE (10) and
/// CAP_AUDIT_WRITE (29).
const DEFAULT_BOUNDING: &str = "0000000020000420";

fn want(hostname: &str) -> String {
    format!(
        "/dev/null character special file 666 1:3\n/dev/tty character special file 666 5:0\n\
         pts/ptmx\n/proc/keys character special file\n0\npid 1\n{hostname}\nshared\n1\n\
         CapBnd:\t{DEFAULT_BOUNDING}\nproc-sys-ro\n"
    )
}

fn with_data_bind(mut s: Spec, src: &Path) -> Spec {
    let mut m = s.mounts().clone().unwrap();
    let bind: Mount = serde_json::from_value(serde_json::json!({
        "destination": "/data", "source": src, "options": ["rbind", "ro"]
    }))
    .unwrap();
    m.push(bind);
    s.set_mounts(Some(m));
    s
}

/// Runs a container; returns its output and whether its init was started before the
/// create (that is, was prepared).
fn run_checked(agent: &Agent, id: &str, s: Spec, root: &Path) -> (Run, bool) {
    let before = uptime_ticks();
    let mut prepared = false;
    let run = run_inspect(&agent.endpoint, id, s, root, |pid| {
        prepared = start_ticks(pid) + 50 < before;
    });
    (run, prepared)
}

/// An agent with an init prepared for the default spec (another process and hostname, no
/// bind), started measurably before what follows; a busybox rootfs and a directory to bind.
fn prepared_agent() -> (Agent, TempDir, TempDir) {
    let agent = Agent::start();
    let root = busybox_rootfs();
    let data = TempDir::new("data");
    std::fs::write(data.path().join("f"), "shared\n").unwrap();
    agent
        .client()
        .prepare_init(spec(&["true"], "template", None))
        .unwrap();
    std::thread::sleep(Duration::from_millis(1200));
    (agent, root, data)
}

fn assert_ok(r: &Run, hostname: &str) {
    assert_eq!(
        (r.out(), r.exit.status),
        (want(hostname), ExitStatus::Code(0)),
        "stderr: {}",
        String::from_utf8_lossy(&r.stderr)
    );
}

/// The spec's OOM score adjustment and a shared `/` (rootfsPropagation), on top of
/// [`CHECK`], for a spec that asks for both.
const CHECK_OOM_PROPAGATION: &str = "cat /proc/self/oom_score_adj; \
    awk '$5 == \"/\" && $7 ~ /^shared:/ {print \"root shared\"}' /proc/self/mountinfo";

fn with_oom_and_shared_root(mut s: Spec) -> Spec {
    let mut p = s.process().clone().unwrap();
    p.set_args(Some(vec![
        "sh".into(),
        "-c".into(),
        format!("{CHECK}; {CHECK_OOM_PROPAGATION}"),
    ]));
    p.set_oom_score_adj(Some(500));
    s.set_process(Some(p));
    let mut l = s.linux().clone().unwrap();
    l.set_rootfs_propagation(Some("shared".into()));
    s.set_linux(Some(l));
    s
}

#[test]
fn a_matching_container_takes_the_prepared_init_over_and_is_confined_the_same() {
    let (agent, root, data) = prepared_agent();
    let run = |name: &str| {
        let s = spec(&["true"], name, None);
        let s = with_oom_and_shared_root(with_data_bind(s, data.path()));
        let (r, prepared) = run_checked(&agent, &unique(name), s, root.path());
        let want = format!("{}500\nroot shared\n", want(name));
        assert_eq!(
            (r.out(), r.exit.status),
            (want, ExitStatus::Code(0)),
            "stderr: {}",
            String::from_utf8_lossy(&r.stderr)
        );
        prepared
    };
    assert!(
        run("first"),
        "the matching container did not take the prepared init"
    );
    // The prepared init is used once; the next container is made on the spot and shows
    // the same.
    assert!(!run("second"), "a second container got a prepared init");
}

#[test]
fn another_skeleton_is_created_as_usual_and_leaves_the_prepared_init() {
    let (agent, root, data) = prepared_agent();

    // One more masked path: another skeleton.
    let mut other = with_data_bind(spec(&["sh", "-c", CHECK], "other", None), data.path());
    let mut linux = other.linux().clone().unwrap();
    let mut masked = linux.masked_paths().clone().unwrap();
    masked.push("/proc/cpuinfo".into());
    linux.set_masked_paths(Some(masked));
    other.set_linux(Some(linux));
    let (r, prepared) = run_checked(&agent, &unique("other"), other, root.path());
    assert_ok(&r, "other");
    assert!(!prepared);

    let s = with_data_bind(spec(&["sh", "-c", CHECK], "match", None), data.path());
    let (r, prepared) = run_checked(&agent, &unique("match"), s, root.path());
    assert_ok(&r, "match");
    assert!(
        prepared,
        "the prepared init was gone after another spec's create"
    );
}

#[test]
fn preparing_what_cannot_be_prepared_or_twice_is_refused() {
    let agent = Agent::start();
    let mut c = agent.client();
    let mut joined = spec(&["true"], "h", None);
    let mut linux = joined.linux().clone().unwrap();
    let mut ns = linux.namespaces().clone().unwrap();
    ns[0].set_path(Some("/proc/self/ns/pid".into()));
    linux.set_namespaces(Some(ns));
    joined.set_linux(Some(linux));
    let e = c.prepare_init(joined).unwrap_err();
    let e = e.agent_error().unwrap();
    assert_eq!(e.code, ErrorCode::NotSupported);
    assert!(e.message.contains("joins an existing"), "{}", e.message);

    c.prepare_init(spec(&["true"], "h", None)).unwrap();
    let e = c.prepare_init(spec(&["true"], "h", None)).unwrap_err();
    assert_eq!(e.agent_error().unwrap().code, ErrorCode::InvalidState);
}
