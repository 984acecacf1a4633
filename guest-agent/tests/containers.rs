//! Containers from a busybox rootfs, driven through the agent's Unix socket.
//! Needs root (namespaces, mounts, cgroups); fails rather than skips without.

mod common;

use std::io::Write;
use std::time::Duration;

use agent_protocol::oci_spec::runtime::{
    LinuxMemoryBuilder, LinuxPidsBuilder, LinuxResourcesBuilder,
};
use agent_protocol::{Event, ExitStatus, StdioConfig, StreamKind};
use common::*;

#[test]
fn output_and_exit_status() {
    let agent = Agent::start();
    let root = busybox_rootfs();
    let r = run(
        &agent,
        &unique("echo"),
        spec(&["sh", "-c", "echo hi; echo oops >&2; exit 3"], "h", None),
        root.path(),
    );
    assert_eq!(r.out(), "hi\n");
    assert_eq!(r.stderr, b"oops\n");
    assert_eq!(r.exit.status, ExitStatus::Code(3));
    assert!(!r.exit.oom_killed);
}

#[test]
fn own_hostname_and_pid_1() {
    let agent = Agent::start();
    let root = busybox_rootfs();
    let r = run(
        &agent,
        &unique("ns"),
        spec(&["sh", "-c", "hostname; echo $$"], "box-7", None),
        root.path(),
    );
    assert_eq!(r.out(), "box-7\n1\n");
    assert_eq!(r.exit.status, ExitStatus::Code(0));
}

#[test]
fn large_output_arrives_whole() {
    let agent = Agent::start();
    let root = busybox_rootfs();
    let cmd = "yes abcdefghijklmno | head -c 1048576; head -c 300000 /dev/zero >&2";
    let r = run(
        &agent,
        &unique("big"),
        spec(&["sh", "-c", cmd], "h", None),
        root.path(),
    );
    assert_eq!(
        r.exit.status,
        ExitStatus::Code(0),
        "stderr: {}",
        String::from_utf8_lossy(&r.stderr)
    );
    assert_eq!(r.stdout.len(), 1 << 20);
    assert!(r
        .stdout
        .chunks(16)
        .all(|c| c == &b"abcdefghijklmno\n"[..c.len()]));
    assert_eq!(r.stderr.len(), 300_000);
}

#[test]
fn stdin_is_forwarded() {
    let agent = Agent::start();
    let root = busybox_rootfs();
    let id = unique("cat");
    let mut c = agent.client();
    // Every requested stream must be attached: the exit is reported only
    // after all requested output was delivered.
    let stdio = StdioConfig {
        stdin: true,
        stdout: true,
        stderr: false,
    };
    c.create_container(create_req(
        &id,
        spec(&["cat"], "h", None),
        root.path(),
        stdio,
    ))
    .unwrap();
    let out = reader(agent.attach(&id, None, StreamKind::Stdout));
    let mut input = agent.attach(&id, None, StreamKind::Stdin);
    c.start_container(&id).unwrap();
    input.write_all(b"through the pipe\n").unwrap();
    input.shutdown_write().unwrap();
    let exit = c.wait(&id, None).unwrap();
    assert_eq!(out.join().unwrap(), b"through the pipe\n");
    assert_eq!(exit.status, ExitStatus::Code(0));
    c.remove_container(&id, false).unwrap();
}

#[test]
fn exec_signal_ps_and_events() {
    let agent = Agent::start();
    let root = busybox_rootfs();
    let id = unique("exec");
    let mut c = agent.client();
    let mut events = agent.client();
    events.subscribe_events().unwrap();
    let res = LinuxResourcesBuilder::default()
        .pids(LinuxPidsBuilder::default().limit(64).build().unwrap())
        .build()
        .unwrap();
    c.create_container(create_req(
        &id,
        spec(&["sleep", "600"], "exec-host", Some(res)),
        root.path(),
        StdioConfig::NONE,
    ))
    .unwrap();
    c.start_container(&id).unwrap();

    // An extra process sees the container's hostname and PID namespace.
    let cmd = "echo in $(hostname); cat /proc/1/comm; echo $$";
    let pid = c
        .exec(&id, "e1", process(&["sh", "-c", cmd]), StdioConfig::OUTPUT)
        .unwrap();
    assert!(pid > 1);
    let out = reader(agent.attach(&id, Some("e1"), StreamKind::Stdout));
    let _err = reader(agent.attach(&id, Some("e1"), StreamKind::Stderr));
    let exit = c.wait(&id, Some("e1")).unwrap();
    let out = String::from_utf8(out.join().unwrap()).unwrap();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[..2], ["in exec-host", "sleep"], "{out}");
    assert_ne!(lines[2], "1");
    assert_eq!(exit.status, ExitStatus::Code(0));

    // A second sleep, killed by SIGTERM, is reported as such.
    c.exec(&id, "s2", process(&["sleep", "600"]), StdioConfig::NONE)
        .unwrap();
    // The Exec reply comes when the child's close-on-exec fds are closed,
    // a moment before the kernel renames it: poll briefly.
    let mut procs = vec![];
    for _ in 0..100 {
        procs = c.list_processes(&id).unwrap();
        if procs.iter().filter(|p| p.command == "sleep").count() == 2 {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(
        procs.iter().filter(|p| p.command == "sleep").count(),
        2,
        "{procs:?}"
    );
    let stats = c.stats(&id).unwrap();
    assert!(stats.pids_current.unwrap_or(0) >= 2, "{stats:?}");
    assert_eq!(stats.pids_limit, Some(64));
    c.signal(&id, Some("s2"), libc::SIGTERM, false).unwrap();
    assert_eq!(
        c.wait(&id, Some("s2")).unwrap().status,
        ExitStatus::Signal(libc::SIGTERM)
    );
    // Container init ignores SIGTERM from outside (no handler): SIGKILL it.
    c.signal(&id, None, libc::SIGKILL, false).unwrap();
    assert_eq!(
        c.wait(&id, None).unwrap().status,
        ExitStatus::Signal(libc::SIGKILL)
    );
    c.remove_container(&id, false).unwrap();

    let mut seen = vec![];
    events.set_timeout(Some(Duration::from_secs(10))).unwrap();
    while seen.len() < 3 {
        let Event::Exit {
            container_id,
            exec_id,
            ..
        } = events.next_event().unwrap();
        assert_eq!(container_id, id);
        seen.push(exec_id);
    }
    seen.sort();
    assert_eq!(seen, [None, Some("e1".to_string()), Some("s2".to_string())]);
}

#[test]
fn memory_limit_oom_kill_is_reported() {
    let v1 = std::path::Path::new("/sys/fs/cgroup/memory/memory.limit_in_bytes").exists();
    let v2 = std::fs::read_to_string("/sys/fs/cgroup/cgroup.controllers")
        .is_ok_and(|c| c.contains("memory"));
    if !v1 && !v2 {
        eprintln!(
            "SKIPPED memory_limit_oom_kill_is_reported: this host has no cgroup memory controller"
        );
        return;
    }
    let agent = Agent::start();
    let root = busybox_rootfs();
    let id = unique("oom");
    let limit = 32 << 20;
    let res = LinuxResourcesBuilder::default()
        .memory(
            LinuxMemoryBuilder::default()
                .limit(limit)
                .swap(limit)
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();
    let mut c = agent.client();
    let s = spec(
        &["dd", "if=/dev/zero", "of=/dev/null", "bs=256M", "count=1"],
        "h",
        Some(res),
    );
    c.create_container(create_req(&id, s, root.path(), StdioConfig::NONE))
        .unwrap();
    assert_eq!(c.stats(&id).unwrap().memory_limit, Some(limit as u64));
    c.start_container(&id).unwrap();
    let exit = c.wait(&id, None).unwrap();
    assert_eq!(exit.status, ExitStatus::Signal(libc::SIGKILL));
    assert!(exit.oom_killed, "{exit:?}");
    c.remove_container(&id, false).unwrap();
}

#[test]
fn terminal_and_resize() {
    let agent = Agent::start();
    let root = busybox_rootfs();
    let id = unique("tty");
    let mut s = spec(
        &[
            "sh",
            "-c",
            "sleep 0.3; stty size; test -t 0 && echo is-a-tty",
        ],
        "h",
        None,
    );
    let mut p = s.process().clone().unwrap();
    p.set_terminal(Some(true));
    s.set_process(Some(p));
    let mut c = agent.client();
    c.create_container(create_req(&id, s, root.path(), StdioConfig::OUTPUT))
        .unwrap();
    let out = reader(agent.attach(&id, None, StreamKind::Stdout));
    c.resize_tty(&id, None, 33, 111).unwrap();
    c.start_container(&id).unwrap();
    let exit = c.wait(&id, None).unwrap();
    let out = String::from_utf8(out.join().unwrap()).unwrap();
    assert_eq!(out, "33 111\r\nis-a-tty\r\n");
    assert_eq!(exit.status, ExitStatus::Code(0));
    c.remove_container(&id, false).unwrap();
}

#[test]
fn remove_running_container_needs_force() {
    let agent = Agent::start();
    let root = busybox_rootfs();
    let id = unique("rm");
    let mut c = agent.client();
    c.create_container(create_req(
        &id,
        spec(&["sleep", "600"], "h", None),
        root.path(),
        StdioConfig::OUTPUT,
    ))
    .unwrap();
    // Created but never started, with unattached streams: removal still works.
    let id2 = unique("rm-created");
    c.create_container(create_req(
        &id2,
        spec(&["true"], "h", None),
        root.path(),
        StdioConfig::OUTPUT,
    ))
    .unwrap();
    c.start_container(&id).unwrap();
    let err = c.remove_container(&id, false).unwrap_err();
    assert_eq!(
        err.agent_error().unwrap().code,
        agent_protocol::ErrorCode::InvalidState
    );
    c.remove_container(&id, true).unwrap();
    c.remove_container(&id2, true).unwrap();
    assert!(c.list_processes(&id).is_err());
}
