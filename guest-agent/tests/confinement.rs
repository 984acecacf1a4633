//! What a container may touch: a directory rootfs (as from the virtio-fs share) read-only
//! and read-write, bind mounts of share files and directories (ro gives EROFS, rw works
//! both ways and live), maskedPaths and readonlyPaths, and the OCI seccomp profile.
//! Needs root, like the other agent tests.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use agent_protocol::oci_spec::runtime::{
    LinuxSeccomp, LinuxSeccompAction, LinuxSyscallBuilder, Mount, MountBuilder, Spec,
};
use agent_protocol::{ErrorCode, ExitStatus, StdioConfig, StreamKind};
use common::*;

fn with_root_readonly(mut s: Spec, ro: bool) -> Spec {
    let mut r = s.root().clone().unwrap_or_default();
    r.set_readonly(Some(ro));
    s.set_root(Some(r));
    s
}

fn bind(src: &Path, dest: &str, ro: bool) -> Mount {
    let mode = if ro { "ro" } else { "rw" };
    MountBuilder::default()
        .destination(dest)
        .source(src)
        .typ("bind")
        .options(vec!["rbind".to_string(), mode.to_string()])
        .build()
        .unwrap()
}

fn with_mounts(mut s: Spec, extra: Vec<Mount>) -> Spec {
    let mut m = s.mounts().clone().unwrap_or_default();
    m.extend(extra);
    s.set_mounts(Some(m));
    s
}

fn ok(r: &Run) {
    assert_eq!(
        r.exit.status,
        ExitStatus::Code(0),
        "stdout: {}\nstderr: {}",
        r.out(),
        String::from_utf8_lossy(&r.stderr)
    );
}

#[test]
fn directory_rootfs_read_only_and_read_write() {
    let agent = Agent::start();
    let root = busybox_rootfs();
    // No mount points in the directory: the agent creates them before the root turns
    // read-only (in the container's view only: the directory itself stays writable).
    for d in ["proc", "sys", "dev"] {
        std::fs::remove_dir(root.path().join(d)).unwrap();
    }
    let cmd = "grep ' / ' /proc/mounts; echo x > /probe && echo wrote";
    let ro = run(
        &agent,
        &unique("dir-ro"),
        with_root_readonly(spec(&["sh", "-c", cmd], "h", None), true),
        root.path(),
    );
    assert_eq!(ro.exit.status, ExitStatus::Code(1));
    assert!(ro.out().contains(" ro,"), "{}", ro.out());
    assert!(!ro.out().contains("wrote"), "{}", ro.out());
    let err = String::from_utf8_lossy(&ro.stderr);
    assert!(err.contains("Read-only file system"), "{err}");
    assert!(root.path().join("proc").is_dir());
    std::fs::write(root.path().join("host-still-writes"), "y").unwrap();

    let rw = run(
        &agent,
        &unique("dir-rw"),
        with_root_readonly(spec(&["sh", "-c", cmd], "h", None), false),
        root.path(),
    );
    ok(&rw);
    assert!(
        rw.out().contains(" rw,") && rw.out().ends_with("wrote\n"),
        "{}",
        rw.out()
    );
    assert_eq!(std::fs::read(root.path().join("probe")).unwrap(), b"x\n");

    // The same read-only root when entered with MS_MOVE + chroot (an initramfs agent).
    let no_pivot = Agent::start_with(&["--no-pivot"]);
    let cmd = "echo y > /probe2 && echo wrote";
    let ro = run(
        &no_pivot,
        &unique("dir-ro-nopivot"),
        with_root_readonly(spec(&["sh", "-c", cmd], "h", None), true),
        root.path(),
    );
    assert_eq!(ro.exit.status, ExitStatus::Code(1), "{}", ro.out());
    let err = String::from_utf8_lossy(&ro.stderr);
    assert!(err.contains("Read-only file system"), "{err}");
}

#[test]
fn bind_mounts_of_share_files_and_directories() {
    let agent = Agent::start();
    let root = busybox_rootfs();
    // Laid out as the runtime lays out a container's mount sources in the share.
    let share = TempDir::new("share");
    let (dir_src, file_src) = (share.path().join("mounts/0"), share.path().join("mounts/1"));
    std::fs::create_dir_all(&dir_src).unwrap();
    std::fs::write(dir_src.join("x"), "from-host\n").unwrap();
    std::fs::write(&file_src, "file-from-host\n").unwrap();
    let ro_dir = TempDir::new("ro-src");
    std::fs::write(ro_dir.path().join("x"), "ro-content\n").unwrap();
    let ro_file = share.path().join("mounts/3");
    std::fs::write(&ro_file, "ro-file\n").unwrap();

    let script = "set -e; cat /ro/x /etc/ro-file /data/x /etc/rw-file; \
        echo no > /ro/y 2>/dev/null || echo ro-dir-refused; \
        echo no > /etc/ro-file 2>/dev/null || echo ro-file-refused; \
        echo from-container > /data/c; echo appended >> /etc/rw-file; \
        echo ready; while [ ! -f /data/late ]; do sleep 0.05; done; cat /data/late";
    let s = with_mounts(
        spec(&["sh", "-c", script], "h", None),
        vec![
            bind(ro_dir.path(), "/ro", true),
            bind(&ro_file, "/etc/ro-file", true),
            bind(&dir_src, "/data", false),
            bind(&file_src, "/etc/rw-file", false),
        ],
    );
    let id = unique("binds");
    let mut c = agent.client();
    c.create_container(create_req(&id, s, root.path(), StdioConfig::OUTPUT))
        .unwrap();
    let out = reader(agent.attach(&id, None, StreamKind::Stdout));
    let err = reader(agent.attach(&id, None, StreamKind::Stderr));
    c.start_container(&id).unwrap();
    // The container is running: a file the host writes now shows up in it.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !dir_src.join("c").exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    std::fs::write(dir_src.join("late"), "late-from-host\n").unwrap();
    let exit = c.wait(&id, None).unwrap();
    let (out, err) = (out.join().unwrap(), err.join().unwrap());
    let out = String::from_utf8(out).unwrap();
    assert_eq!(
        exit.status,
        ExitStatus::Code(0),
        "{out}{}",
        String::from_utf8_lossy(&err)
    );
    assert_eq!(
        out,
        "ro-content\nro-file\nfrom-host\nfile-from-host\nro-dir-refused\nro-file-refused\n\
         ready\nlate-from-host\n"
    );
    c.remove_container(&id, false).unwrap();
    // Container writes reached the host.
    assert_eq!(
        std::fs::read_to_string(dir_src.join("c")).unwrap(),
        "from-container\n"
    );
    assert_eq!(
        std::fs::read_to_string(&file_src).unwrap(),
        "file-from-host\nappended\n"
    );
    assert!(!ro_dir.path().join("y").exists());
    assert_eq!(std::fs::read_to_string(&ro_file).unwrap(), "ro-file\n");
}

#[test]
fn read_only_bind_write_fails_with_erofs() {
    let agent = Agent::start();
    let root = busybox_rootfs();
    let src = TempDir::new("erofs-src");
    // `sh` reports the errno text of the failed open.
    let s = with_mounts(
        spec(&["sh", "-c", "echo no > /ro/y"], "h", None),
        vec![bind(src.path(), "/ro", true)],
    );
    let r = run(&agent, &unique("erofs"), s, root.path());
    assert_ne!(r.exit.status, ExitStatus::Code(0));
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(err.contains("Read-only file system"), "{err}");
}

#[test]
fn masked_and_readonly_paths() {
    let agent = Agent::start();
    let root = busybox_rootfs();
    std::fs::create_dir_all(root.path().join("secret-dir")).unwrap();
    std::fs::write(root.path().join("secret-dir/key"), "k").unwrap();
    std::fs::write(root.path().join("secret-file"), "s").unwrap();
    std::fs::create_dir_all(root.path().join("ro-dir")).unwrap();
    std::fs::write(root.path().join("ro-dir/f"), "readable\n").unwrap();
    let script = "cat /secret-file; ls /secret-dir; cat /ro-dir/f; \
        echo > /secret-dir/new 2>/dev/null || echo masked-dir-ro; \
        echo > /ro-dir/f 2>/dev/null || echo ro-dir-ro; \
        echo x > /proc/sys/kernel/hostname 2>/dev/null || echo proc-sys-ro; \
        echo > /writable && echo root-rw";
    let mut s = with_root_readonly(spec(&["sh", "-c", script], "h", None), false);
    let mut linux = s.linux().clone().unwrap();
    linux.set_masked_paths(Some(vec![
        "/secret-file".into(),
        "/secret-dir".into(),
        "/does/not/exist".into(),
    ]));
    linux.set_readonly_paths(Some(vec![
        "/ro-dir".into(),
        "/proc/sys".into(),
        "/missing".into(),
    ]));
    s.set_linux(Some(linux));
    let r = run(&agent, &unique("masked"), s, root.path());
    ok(&r);
    assert_eq!(
        r.out(),
        "readable\nmasked-dir-ro\nro-dir-ro\nproc-sys-ro\nroot-rw\n"
    );
    // Masking hid, it did not change the rootfs.
    assert_eq!(
        std::fs::read_to_string(root.path().join("secret-file")).unwrap(),
        "s"
    );
}

fn podman_profile() -> LinuxSeccomp {
    serde_json::from_str(include_str!("fixtures/podman-seccomp.json")).unwrap()
}

/// Allows everything except `mkdir`/`mkdirat`, which get `act` (with `errno`).
fn deny_mkdir(act: LinuxSeccompAction, errno: Option<u32>) -> LinuxSeccomp {
    let mut rule = LinuxSyscallBuilder::default()
        .names(vec!["mkdir".to_string(), "mkdirat".to_string()])
        .action(act);
    if let Some(e) = errno {
        rule = rule.errno_ret(e);
    }
    let mut s = LinuxSeccomp::default();
    s.set_default_action(LinuxSeccompAction::ScmpActAllow);
    s.set_syscalls(Some(vec![rule.build().unwrap()]));
    s
}

fn with_seccomp(mut s: Spec, profile: LinuxSeccomp, no_new_privs: bool) -> Spec {
    let mut linux = s.linux().clone().unwrap();
    linux.set_seccomp(Some(profile));
    s.set_linux(Some(linux));
    let mut p = s.process().clone().unwrap();
    p.set_no_new_privileges(Some(no_new_privs));
    s.set_process(Some(p));
    s
}

#[test]
fn podman_default_seccomp_profile_runs_ordinary_work() {
    let agent = Agent::start();
    let root = busybox_rootfs();
    let cmd = "mkdir /dev/shm/d && echo made; id -u; hostname";
    let mut s = with_seccomp(
        spec(&["sh", "-c", cmd], "sc", None),
        podman_profile(),
        false,
    );
    // podman's labels too: the guest has no LSM, so they are ignored with a warning.
    let mut p = s.process().clone().unwrap();
    p.set_apparmor_profile(Some("containers-default-0.50.1".into()));
    p.set_selinux_label(Some("system_u:system_r:container_t:s0:c1,c2".into()));
    s.set_process(Some(p));
    let r = run(&agent, &unique("podman-sc"), s, root.path());
    ok(&r);
    assert_eq!(r.out(), "made\n0\nsc\n");
}

#[test]
fn seccomp_denials_errno_kill_and_exec() {
    let agent = Agent::start();
    let root = busybox_rootfs();
    let mkdir = || spec(&["sh", "-c", "mkdir /dev/shm/d"], "h", None);
    // EPERM (the default errno), installed before the identity change (no NO_NEW_PRIVS).
    let s = with_seccomp(
        mkdir(),
        deny_mkdir(LinuxSeccompAction::ScmpActErrno, None),
        false,
    );
    let r = run(&agent, &unique("sc-eperm"), s, root.path());
    assert_eq!(r.exit.status, ExitStatus::Code(1));
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(err.contains("Operation not permitted"), "{err}");
    // errnoRet EACCES, installed last (with NO_NEW_PRIVS).
    let profile = deny_mkdir(LinuxSeccompAction::ScmpActErrno, Some(libc::EACCES as u32));
    let r = run(
        &agent,
        &unique("sc-eacces"),
        with_seccomp(mkdir(), profile, true),
        root.path(),
    );
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(err.contains("Permission denied"), "{err}");
    // SCMP_ACT_KILL: mkdir dies of SIGSYS.
    let profile = deny_mkdir(LinuxSeccompAction::ScmpActKill, None);
    let s = with_seccomp(spec(&["mkdir", "/dev/shm/d"], "h", None), profile, true);
    let r = run(&agent, &unique("sc-kill"), s, root.path());
    assert_eq!(r.exit.status, ExitStatus::Signal(libc::SIGSYS));

    // Exec'd processes get the container's filter too.
    let id = unique("sc-exec");
    let mut c = agent.client();
    let profile = deny_mkdir(LinuxSeccompAction::ScmpActErrno, None);
    let s = with_seccomp(spec(&["sleep", "600"], "h", None), profile, false);
    c.create_container(create_req(&id, s, root.path(), StdioConfig::NONE))
        .unwrap();
    c.start_container(&id).unwrap();
    c.exec(
        &id,
        "m",
        process(&["mkdir", "/dev/shm/e"]),
        StdioConfig::OUTPUT,
    )
    .unwrap();
    let _out = reader(agent.attach(&id, Some("m"), StreamKind::Stdout));
    let err = reader(agent.attach(&id, Some("m"), StreamKind::Stderr));
    assert_eq!(c.wait(&id, Some("m")).unwrap().status, ExitStatus::Code(1));
    let err = String::from_utf8(err.join().unwrap()).unwrap();
    assert!(err.contains("Operation not permitted"), "{err}");
    c.remove_container(&id, true).unwrap();

    // An action the guest cannot provide is refused at create, clearly.
    let s = with_seccomp(
        mkdir(),
        deny_mkdir(LinuxSeccompAction::ScmpActNotify, None),
        false,
    );
    let e = c
        .create_container(create_req(
            &unique("sc-notify"),
            s,
            root.path(),
            StdioConfig::NONE,
        ))
        .unwrap_err();
    let e = e.agent_error().unwrap();
    assert_eq!(e.code, ErrorCode::NotSupported);
    assert!(e.message.contains("SCMP_ACT_NOTIFY"), "{}", e.message);
}

#[test]
fn default_devices_masked_and_read_only_paths() {
    let agent = Agent::start();
    let root = busybox_rootfs();
    let cmd = "stat -c '%n %F %a %t:%T' /dev/null /dev/zero /dev/full /dev/random /dev/urandom /dev/tty; \
               for l in fd stdin stdout stderr ptmx; do readlink /dev/$l; done; \
               stat -c '%n %F' /proc/timer_list /proc/keys; ls -A /sys/firmware | wc -l; \
               umask; echo x > /proc/sys/kernel/domainname";
    let r = run(
        &agent,
        &unique("devs"),
        spec(&["sh", "-c", cmd], "h", None),
        root.path(),
    );
    let want = "/dev/null character special file 666 1:3\n\
                /dev/zero character special file 666 1:5\n\
                /dev/full character special file 666 1:7\n\
                /dev/random character special file 666 1:8\n\
                /dev/urandom character special file 666 1:9\n\
                /dev/tty character special file 666 5:0\n\
                /proc/self/fd\n/proc/self/fd/0\n/proc/self/fd/1\n/proc/self/fd/2\npts/ptmx\n\
                /proc/timer_list character special file\n\
                /proc/keys character special file\n\
                0\n\
                0022\n";
    assert_eq!(
        r.out(),
        want,
        "stderr: {}",
        String::from_utf8_lossy(&r.stderr)
    );
    // The exact modes come from a cleared umask during setup; the process gets the
    // agent's back (0022 above). /proc/sys stays read-only.
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(err.contains("Read-only file system"), "{err}");
    assert_eq!(r.exit.status, ExitStatus::Code(1));
}
