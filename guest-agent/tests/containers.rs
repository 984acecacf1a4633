//! Containers from a busybox rootfs, driven through the agent's Unix socket.
//! Needs root (namespaces, mounts, cgroups); fails rather than skips without.

mod common;

use std::io::Write;
use std::time::Duration;

use agent_protocol::oci_spec::runtime::{
    LinuxMemoryBuilder, LinuxNamespaceType, LinuxPidsBuilder, LinuxResources, LinuxResourcesBuilder,
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
    // Container init ignores SIGTERM from outside (no handler): SIGKILL
    // everything.
    c.signal(&id, None, libc::SIGKILL, true).unwrap();
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
    assert!(
        v1 || v2,
        "this host has no cgroup memory controller (v1 memory.limit_in_bytes or v2 \
         cgroup.controllers with memory); the test needs one to limit the container"
    );
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

/// `UpdateContainer` on a running container: new limits in its cgroup; an update the
/// kernel refuses part of (a CPU quota under its 1 ms minimum, written after the shares)
/// leaves every limit as it was, the shares written before it included.
#[test]
fn update_sets_limits_all_or_nothing() {
    let v2 = std::fs::read_to_string("/sys/fs/cgroup/cgroup.controllers")
        .is_ok_and(|c| c.contains("memory"));
    let agent = Agent::start();
    let root = busybox_rootfs();
    let id = unique("update");
    let cgroup = format!("/sandbox-vm-test/{id}");
    let shares_file = match v2 {
        true => format!("/sys/fs/cgroup{cgroup}/cpu.weight"),
        false => format!("/sys/fs/cgroup/cpu{cgroup}/cpu.shares"),
    };
    let res = |v: serde_json::Value| -> LinuxResources { serde_json::from_value(v).unwrap() };
    let mut s = spec(
        &["sleep", "1000"],
        "h",
        Some(res(serde_json::json!({"memory": {"limit": 64 << 20}}))),
    );
    s.linux_mut()
        .as_mut()
        .unwrap()
        .set_cgroups_path(Some(cgroup.clone().into()));
    let mut c = agent.client();
    c.create_container(create_req(&id, s, root.path(), StdioConfig::NONE))
        .unwrap();
    c.start_container(&id).unwrap();
    let shares = || {
        std::fs::read_to_string(&shares_file)
            .unwrap()
            .trim()
            .to_string()
    };
    let before = shares();

    let refused = c.update_container(
        &id,
        res(
            serde_json::json!({"cpu": {"shares": 512, "quota": 1, "period": 100000},
            "memory": {"limit": 48 << 20}, "pids": {"limit": 50}}),
        ),
    );
    let e = refused.unwrap_err().to_string();
    assert!(e.contains("cannot write"), "{e}");
    assert_eq!(
        shares(),
        before,
        "the shares written before the failure were not undone"
    );
    let st = c.stats(&id).unwrap();
    assert_eq!(st.memory_limit, Some(64 << 20));
    assert_eq!(st.pids_limit, None, "pids.max is still max");

    c.update_container(
        &id,
        res(
            serde_json::json!({"cpu": {"shares": 512}, "memory": {"limit": 48 << 20},
            "pids": {"limit": 50}}),
        ),
    )
    .unwrap();
    let st = c.stats(&id).unwrap();
    assert_eq!((st.memory_limit, st.pids_limit), (Some(48 << 20), Some(50)));
    assert_ne!(shares(), before);
    c.remove_container(&id, true).unwrap();
    for ctrl in ["", "memory/", "cpu/", "cpuacct/", "pids/"] {
        let _ = std::fs::remove_dir(format!("/sys/fs/cgroup/{ctrl}sandbox-vm-test"));
    }
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

#[test]
fn user_groups_rlimits_caps_and_no_new_privs() {
    let agent = Agent::start();
    let root = busybox_rootfs();
    let mut s = spec(
        &[
            "sh",
            "-c",
            "id; ulimit -n; grep -E '^(CapBnd|CapEff|NoNewPrivs)' /proc/self/status",
        ],
        "h",
        None,
    );
    let mut p = s.process().clone().unwrap();
    let mut u = p.user().clone();
    u.set_uid(1000);
    u.set_gid(1001);
    u.set_additional_gids(Some(vec![10, 20]));
    p.set_user(u);
    s.set_process(Some(p));
    let r = run(&agent, &unique("user"), s, root.path());
    assert_eq!(
        r.exit.status,
        ExitStatus::Code(0),
        "{}",
        String::from_utf8_lossy(&r.stderr)
    );
    // Default spec: 1024 files; all five capability sets are
    // CAP_AUDIT_WRITE|CAP_KILL|CAP_NET_BIND_SERVICE, and through the ambient
    // set a non-root user keeps them effective across exec.
    assert_eq!(
        r.out(),
        "uid=1000 gid=1001 groups=10,20\n1024\nCapEff:\t0000000020000420\n\
         CapBnd:\t0000000020000420\nNoNewPrivs:\t1\n"
    );
}

#[test]
fn block_device_rootfs() {
    let root = busybox_rootfs();
    // No mount points in the image: the agent must create them although the spec's root is
    // read-only (the container's view of / becomes read-only only at the end of its setup).
    for d in ["proc", "sys", "dev"] {
        std::fs::remove_dir(root.path().join(d)).unwrap();
    }
    let img = TempDir::new("img");
    let file = img.path().join("rootfs.ext4");
    let ok = std::process::Command::new("mkfs.ext4")
        .args(["-q", "-d"])
        .arg(root.path())
        .arg(&file)
        .arg("16M")
        .status()
        .expect("mkfs.ext4 (e2fsprogs) is needed");
    assert!(ok.success());
    let out = std::process::Command::new("losetup")
        .args(["-f", "--show"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "losetup -f found no loop device for the rootfs image (needs root and the loop \
         driver): {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    let dev = String::from_utf8(out.stdout).unwrap().trim().to_string();
    struct Detach(String);
    impl Drop for Detach {
        fn drop(&mut self) {
            let _ = std::process::Command::new("losetup")
                .arg("-d")
                .arg(&self.0)
                .status();
        }
    }
    let _detach = Detach(dev.clone());

    // The disk is found by serial: a stand-in for /sys/block names the loop device.
    let sys_block = TempDir::new("sysblock");
    let name = dev.trim_start_matches("/dev/");
    std::fs::create_dir_all(sys_block.path().join(name)).unwrap();
    std::fs::write(sys_block.path().join(name).join("serial"), "rootfs").unwrap();
    let agent = Agent::start_with(&["--sys-block", sys_block.path().to_str().unwrap()]);
    let id = unique("blk");
    let mut c = agent.client();
    let mut req = create_req(
        &id,
        spec(&["sh", "-c", "grep ' / ' /proc/mounts"], "h", None),
        root.path(),
        StdioConfig::OUTPUT,
    );
    req.rootfs = agent_protocol::Rootfs::BlockDevice {
        serial: "rootfs".into(),
        fstype: "ext4".into(),
        options: vec!["noatime".into()],
    };
    c.create_container(req).unwrap();
    let out = reader(agent.attach(&id, None, StreamKind::Stdout));
    let _err = reader(agent.attach(&id, None, StreamKind::Stderr));
    c.start_container(&id).unwrap();
    assert_eq!(c.wait(&id, None).unwrap().status, ExitStatus::Code(0));
    let out = String::from_utf8(out.join().unwrap()).unwrap();
    assert!(out.contains(" / ext4 ro,"), "{out}");
    c.remove_container(&id, false).unwrap();
    // The agent unmounted the device: it can be detached.
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(&dev), "{dev} still mounted");
}

#[test]
fn no_pivot_moves_rootfs_and_chroots() {
    // The path the guest takes: its initramfs root cannot be pivoted.
    let agent = Agent::start_with(&["--no-pivot"]);
    let root = busybox_rootfs();
    let r = run(
        &agent,
        &unique("nopivot"),
        spec(&["sh", "-c", "ls /; hostname; echo $$"], "np", None),
        root.path(),
    );
    assert_eq!(
        r.exit.status,
        ExitStatus::Code(0),
        "{}",
        String::from_utf8_lossy(&r.stderr)
    );
    assert_eq!(r.out(), "bin\ndev\netc\nproc\nroot\nsys\ntmp\nnp\n1\n");
}

#[test]
fn exec_into_no_pivot_container_sees_its_root() {
    let agent = Agent::start_with(&["--no-pivot"]);
    let root = busybox_rootfs();
    let id = unique("nopivot-exec");
    let mut c = agent.client();
    let s = spec(&["sleep", "600"], "np", None);
    c.create_container(create_req(&id, s, root.path(), StdioConfig::NONE))
        .unwrap();
    c.start_container(&id).unwrap();
    c.exec(&id, "ls", process(&["ls", "/"]), StdioConfig::OUTPUT)
        .unwrap();
    let out = reader(agent.attach(&id, Some("ls"), StreamKind::Stdout));
    let _err = reader(agent.attach(&id, Some("ls"), StreamKind::Stderr));
    assert_eq!(c.wait(&id, Some("ls")).unwrap().status, ExitStatus::Code(0));
    assert_eq!(
        out.join().unwrap(),
        b"bin\ndev\netc\nproc\nroot\nsys\ntmp\n"
    );
    c.remove_container(&id, true).unwrap();
}

#[test]
fn background_child_holding_stdout_does_not_block_exit() {
    let agent = Agent::start();
    let root = busybox_rootfs();
    let id = unique("bg");
    let mut c = agent.client();
    c.create_container(create_req(
        &id,
        spec(&["sleep", "600"], "h", None),
        root.path(),
        StdioConfig::NONE,
    ))
    .unwrap();
    c.start_container(&id).unwrap();
    // The exec'd shell exits at once; its background sleep keeps stdout open.
    c.exec(
        &id,
        "bg",
        process(&["sh", "-c", "echo started; sleep 600 &"]),
        StdioConfig::OUTPUT,
    )
    .unwrap();
    let out = reader(agent.attach(&id, Some("bg"), StreamKind::Stdout));
    let _err = reader(agent.attach(&id, Some("bg"), StreamKind::Stderr));
    let t = std::time::Instant::now();
    assert_eq!(c.wait(&id, Some("bg")).unwrap().status, ExitStatus::Code(0));
    assert!(t.elapsed() < Duration::from_secs(20));
    assert_eq!(out.join().unwrap(), b"started\n");
    c.remove_container(&id, true).unwrap();
}

#[test]
fn a_container_without_a_pid_namespace_gets_the_agents_after_ones_with() {
    // New PID namespaces are made by the (pooled) thread that starts the process; that
    // thread must hand its later children the agent's namespace again.
    let agent = Agent::start();
    let root = busybox_rootfs();
    let agent_ns = std::fs::read_link(format!("/proc/{}/ns/pid", agent.child.id())).unwrap();
    let mut no_pid_ns = spec(&["busybox", "readlink", "/proc/self/ns/pid"], "h", None);
    let mut linux = no_pid_ns.linux().clone().unwrap();
    let ns: Vec<_> = linux
        .namespaces()
        .clone()
        .unwrap_or_default()
        .into_iter()
        .filter(|n| n.typ() != LinuxNamespaceType::Pid)
        .collect();
    linux.set_namespaces(Some(ns));
    no_pid_ns.set_linux(Some(linux));
    for i in 0..3 {
        let own = run(
            &agent,
            &unique(&format!("pidns-{i}")),
            spec(&["busybox", "readlink", "/proc/self/ns/pid"], "h", None),
            root.path(),
        );
        assert_ne!(
            own.out().trim(),
            agent_ns.to_string_lossy(),
            "own PID namespace"
        );
        let shared = run(
            &agent,
            &unique(&format!("nopidns-{i}")),
            no_pid_ns.clone(),
            root.path(),
        );
        assert_eq!(
            shared.out().trim(),
            agent_ns.to_string_lossy(),
            "round {i}: stderr {}",
            String::from_utf8_lossy(&shared.stderr)
        );
    }
}

/// A container with a user namespace: it sees its mappings, is root in them, the
/// host's root's files are nobody's to it, and an exec joins the same namespace.
#[test]
fn a_user_namespace_has_the_specs_mappings_also_for_an_exec() {
    let agent = Agent::start();
    let root = busybox_rootfs();
    let id = unique("userns");
    let mut c = agent.client();
    let mut s = spec(&["sleep", "600"], "h", None);
    let map = |host: u32| {
        serde_json::from_value(serde_json::json!([
            {"containerID": 0, "hostID": host, "size": 65536}
        ]))
        .unwrap()
    };
    let mut linux = s.linux().clone().unwrap();
    let mut ns = linux.namespaces().clone().unwrap();
    ns.push(
        agent_protocol::oci_spec::runtime::LinuxNamespaceBuilder::default()
            .typ(LinuxNamespaceType::User)
            .build()
            .unwrap(),
    );
    linux.set_namespaces(Some(ns));
    linux.set_uid_mappings(Some(map(100000)));
    linux.set_gid_mappings(Some(map(200000)));
    s.set_linux(Some(linux));
    c.create_container(create_req(&id, s, root.path(), StdioConfig::NONE))
        .unwrap();
    c.start_container(&id).unwrap();

    let cmd = "cat /proc/1/uid_map /proc/self/uid_map /proc/self/gid_map; id; stat -c %u /bin";
    c.exec(&id, "e1", process(&["sh", "-c", cmd]), StdioConfig::OUTPUT)
        .unwrap();
    let out = reader(agent.attach(&id, Some("e1"), StreamKind::Stdout));
    let err = reader(agent.attach(&id, Some("e1"), StreamKind::Stderr));
    let exit = c.wait(&id, Some("e1")).unwrap();
    let out = String::from_utf8(out.join().unwrap()).unwrap();
    let err = String::from_utf8(err.join().unwrap()).unwrap();
    assert_eq!(exit.status, ExitStatus::Code(0), "{out}{err}");
    let lines: Vec<Vec<&str>> = out
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(lines[0], ["0", "100000", "65536"], "{out}");
    assert_eq!(
        lines[1], lines[0],
        "the exec is in the init's namespace: {out}"
    );
    assert_eq!(lines[2], ["0", "200000", "65536"], "{out}");
    assert!(lines[3][0].starts_with("uid=0"), "{out}");
    assert_eq!(lines[4], ["65534"], "the host's root is unmapped: {out}");
    c.signal(&id, None, libc::SIGKILL, true).unwrap();
    c.wait(&id, None).unwrap();
    c.remove_container(&id, false).unwrap();
}
