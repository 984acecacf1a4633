//! A live sandbox end to end, through the `sandbox` library and the real guest kernel and
//! agent, in one boot: two containers from different rootfs directories are added one
//! after the other and run at once; a read-write directory bind works both ways (and live:
//! a new file and a rewrite of a file the guest already read, both written on the host
//! after start, are seen inside); a read-only bind refuses writes with EROFS; a second
//! exec of busybox takes no major page fault (the rootfs share keeps its pages); afterwards
//! no process or mount is left.
//!
//! Needs root, /dev/kvm, virtiofsd, the guest kernel and the guest image (see
//! `scripts/setup.sh`).

mod plan_host;

use std::io::Read;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::Instant;

use sandbox::oci::translate::RootfsMode;
use sandbox::stdio::HostIo;
use sandbox::template::TemplateUse;
use sandbox::{PodPlan, RealHost, Role, Sandbox, SandboxOps};
use test_support::fresh_dir;
use test_support::rootfs::busybox_bundle;

/// `sandbox-vm` (for `spec`), built beside this test.
fn bin() -> String {
    test_support::artifacts::built_binary("sandbox-vm")
        .display()
        .to_string()
}

fn spec_of(bundle: &Path, mounts: serde_json::Value) -> oci_spec::runtime::Spec {
    let path = bundle.join("config.json");
    let mut c: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let list = c["mounts"].as_array_mut().unwrap();
    list.extend(mounts.as_array().unwrap().iter().cloned());
    serde_json::from_value(c).unwrap()
}

/// A pipe for a process's stdout and stderr; the read end is returned.
fn output_pipe() -> (HostIo, std::fs::File) {
    let (r, w): (OwnedFd, OwnedFd) = nix::unistd::pipe().unwrap();
    let io = HostIo {
        stdin: None,
        stdout: Some(w.try_clone().unwrap()),
        stderr: Some(w),
    };
    (io, std::fs::File::from(r))
}

/// Reads until `marker` appears (or the writers close); returns what was read.
fn read_until(f: &mut std::fs::File, marker: &str) -> String {
    let mut out = String::new();
    let mut buf = [0u8; 4096];
    while !out.contains(marker) {
        match f.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.push_str(&String::from_utf8_lossy(&buf[..n])),
        }
    }
    out
}

/// Runs `args` in container `id` as exec `exec_id`; returns its output (it must exit 0).
fn exec_output(sb: &Sandbox, id: &str, exec_id: &str, args: &[&str]) -> String {
    let mut p = oci_spec::runtime::Process::default();
    p.set_args(Some(args.iter().map(|a| a.to_string()).collect()));
    let (io, mut out) = output_pipe();
    let (_, pumps) = sb.exec(id, exec_id, p, io).unwrap();
    let exit = sb.wait(id, Some(exec_id)).unwrap();
    for p in pumps.outputs {
        p.join().unwrap();
    }
    let got = read_until(&mut out, "\u{0}");
    assert_eq!(exit.status.as_shell_status(), 0, "{args:?}: {got}");
    got
}

/// The major page faults of an exec'd busybox `cat /proc/self/stat`, as it counted them
/// itself (field 12 of its own stat: every fault since it was made, its exec included).
fn exec_major_faults(sb: &Sandbox, id: &str, exec_id: &str) -> u64 {
    let stat = exec_output(sb, id, exec_id, &["cat", "/proc/self/stat"]);
    let (_, after_comm) = stat.rsplit_once(')').expect("a stat line");
    // Fields from the 3rd (state) on; majflt is the 12th.
    let majflt = after_comm.split_whitespace().nth(12 - 3);
    majflt.and_then(|f| f.parse().ok()).expect(&stat)
}

fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    sandbox::share::mount_points(&info)
        .into_iter()
        .filter(|p| p.starts_with(dir))
        .collect()
}

#[test]
fn two_containers_share_one_vm_with_live_binds() {
    let dir = fresh_dir("svm-e2e-sandbox");
    let a = busybox_bundle(
        &bin(),
        &dir.join("a"),
        &["sh", "-c", "echo a-up; exec sleep 1000"],
    );
    let b = busybox_bundle(
        &bin(),
        &dir.join("b"),
        &[
            "sh",
            "-c",
            "cat /rw/from-host; echo from-guest > /rw/from-guest; \
             echo x > /ro/new; cat /ro/ro-file; echo b-done; exec sleep 1000",
        ],
    );
    let (rw, ro) = (dir.join("rw"), dir.join("ro"));
    std::fs::create_dir_all(&rw).unwrap();
    std::fs::create_dir_all(&ro).unwrap();
    std::fs::write(rw.join("from-host"), "host says hi\n").unwrap();
    std::fs::write(ro.join("ro-file"), "read only\n").unwrap();
    let spec_a = spec_of(&a, serde_json::json!([]));
    let spec_b = spec_of(
        &b,
        serde_json::json!([
            {"destination": "/rw", "type": "bind", "source": rw, "options": ["rbind", "rw"]},
            {"destination": "/ro", "type": "bind", "source": ro, "options": ["rbind", "ro"]},
        ]),
    );

    let state = dir.join("state");
    let mut plan = PodPlan::new(
        "a",
        &spec_a,
        &a.join("rootfs"),
        Role::Pod,
        &state,
        &plan_host::host(),
        &RealHost,
    )
    .unwrap();
    assert_eq!(plan.mode, RootfsMode::Share);
    plan.template = TemplateUse::Off;
    let t = Instant::now();
    let sb = Sandbox::create(&plan).unwrap();
    eprintln!("sandbox up after {:.1} s", t.elapsed().as_secs_f64());
    let host_pids = sb.host_pids().unwrap();
    assert_eq!(host_pids.len(), 3, "the VMM and a virtiofsd per share");

    let (io_a, mut out_a) = output_pipe();
    let (pid_a, pumps_a) = sb.add_container(plan.first.clone(), io_a).unwrap();
    sb.start("a").unwrap();
    assert!(read_until(&mut out_a, "a-up").contains("a-up"));
    eprintln!(
        "container a running after {:.1} s",
        t.elapsed().as_secs_f64()
    );

    let plan_b = plan
        .member("b", &spec_b, &b.join("rootfs"), pid_a as u32, &RealHost)
        .unwrap();
    let (io_b, mut out_b) = output_pipe();
    let (_, pumps_b) = sb.add_container(plan_b, io_b).unwrap();
    sb.start("b").unwrap();
    let got = read_until(&mut out_b, "b-done");
    eprintln!(
        "container b output after {:.1} s:\n{got}",
        t.elapsed().as_secs_f64()
    );
    assert!(got.contains("host says hi"), "host → container: {got}");
    assert!(got.contains("Read-only file system"), "ro bind: {got}");
    assert!(got.contains("read only"), "ro bind is readable: {got}");
    assert_eq!(
        std::fs::read_to_string(rw.join("from-guest")).unwrap(),
        "from-guest\n",
        "container → host"
    );
    assert!(!ro.join("new").exists());

    // Both run at once: a's sleep is still there while b runs (b's shell may not have
    // exec'd its own sleep yet).
    let procs_a = sb.processes("a").unwrap();
    let procs_b = sb.processes("b").unwrap();
    assert!(procs_a.iter().any(|p| p.command == "sleep"), "{procs_a:?}");
    assert!(!procs_b.is_empty(), "{procs_b:?}");

    // Exec without re-reading: the second exec of busybox finds all of it in the guest's
    // page cache (the first may still read pages that b's shell and sleep never touched).
    let first = exec_major_faults(&sb, "b", "f1");
    let second = exec_major_faults(&sb, "b", "f2");
    eprintln!("busybox exec major faults: first {first}, second {second}");
    assert_eq!(
        second, 0,
        "the second exec read busybox from the host again"
    );

    // Live: host writes after the container started are seen inside: a new file, and a
    // rewrite (same size) of the file b's shell read at its start.
    std::fs::write(rw.join("later"), "written later\n").unwrap();
    std::fs::write(rw.join("from-host"), "host says yo\n").unwrap();
    let got = exec_output(&sb, "b", "x1", &["cat", "/rw/later", "/rw/from-host"]);
    assert_eq!(got, "written later\nhost says yo\n");

    for id in ["a", "b"] {
        sb.signal(id, None, libc::SIGKILL, true).unwrap();
        let e = sb.wait(id, None).unwrap();
        assert_eq!(e.status.as_shell_status(), 128 + libc::SIGKILL);
        sb.remove_container(id, false).unwrap();
    }
    for p in pumps_a.outputs.into_iter().chain(pumps_b.outputs) {
        p.join().unwrap();
    }
    sb.stop().unwrap();
    eprintln!("all done after {:.1} s", t.elapsed().as_secs_f64());
    assert!(mounts_under(&dir).is_empty(), "{:?}", mounts_under(&dir));
    for pid in host_pids {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "process {pid} outlived the sandbox"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
