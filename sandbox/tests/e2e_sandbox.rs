//! A live sandbox end to end, through the `sandbox` library and the real guest kernel and
//! agent, in one boot: two containers from different rootfs directories are added one
//! after the other and run at once; a read-write directory bind works both ways (and live:
//! a host write after start is seen inside); a read-only bind refuses writes with EROFS;
//! afterwards no process or mount is left.
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
    let [vmm_pid, fsd_pid] = sb.host_pids().unwrap();

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

    // Live: a host write after the container started is seen inside.
    std::fs::write(rw.join("later"), "written later\n").unwrap();
    let mut p = oci_spec::runtime::Process::default();
    p.set_args(Some(vec!["cat".into(), "/rw/later".into()]));
    let (io_x, mut out_x) = output_pipe();
    let (_, pumps_x) = sb.exec("b", "x1", p, io_x).unwrap();
    let exit = sb.wait("b", Some("x1")).unwrap();
    for p in pumps_x.outputs {
        p.join().unwrap();
    }
    assert_eq!(exit.status.as_shell_status(), 0);
    assert_eq!(read_until(&mut out_x, "\n"), "written later\n");

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
    for pid in [vmm_pid, fsd_pid] {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "process {pid} outlived the sandbox"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
