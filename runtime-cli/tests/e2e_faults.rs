//! Faults with the real guest (three boots): `kill -9` of the VMM, `kill -9` of virtiofsd,
//! and a guest kernel panic. Each is reported, and after `delete` nothing of the container
//! is left on the host: no process, mount, socket, state directory or jail cgroup.
//!
//! Needs root, /dev/kvm, the guest kernel and images/out/agent.ext4 (`scripts/setup.sh`).

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output};
use std::time::{Duration, Instant};

use test_support::cmd::output_via_files;
use test_support::fresh_dir;
use test_support::host::footprint;
use test_support::rootfs::{busybox_bundle, edit_config};
use test_support::runtime::oci_command;

const BIN: &str = env!("CARGO_BIN_EXE_sandbox-vm");

struct Env {
    dir: PathBuf,
    root: PathBuf,
    bundle: PathBuf,
}

impl Env {
    fn new(name: &str, annotations: serde_json::Value) -> Env {
        Self::running(name, annotations, &["sleep", "600"])
    }

    /// A busybox bundle whose container runs `args`.
    fn running(name: &str, annotations: serde_json::Value, args: &[&str]) -> Env {
        let dir = fresh_dir(&format!("svm-faults-{name}"));
        let bundle = busybox_bundle(BIN, &dir.join("bundle"), args);
        edit_config(&bundle, |c| c["annotations"] = annotations);
        Env {
            root: dir.join("root"),
            dir,
            bundle,
        }
    }

    fn cli(&self, args: &[&str]) -> Output {
        output_via_files(oci_command(BIN, &self.root).args(args))
    }

    fn create_and_start(&self, id: &str) {
        let b = self.bundle.to_str().unwrap();
        let out = self.cli(&["create", "--bundle", b, id]);
        assert!(out.status.success(), "create: {out:?}");
        let out = self.cli(&["start", id]);
        assert!(out.status.success(), "start: {out:?}");
    }

    /// Like `create_and_start`, with the container's stdout and stderr (which `create`
    /// hands on) going to `log`, and its stdin a pipe: the returned end.
    fn create_and_start_logged(&self, id: &str, log: &Path) -> std::process::ChildStdin {
        let file = std::fs::File::create(log).unwrap();
        let mut create = oci_command(BIN, &self.root)
            .args(["create", "--bundle"])
            .arg(&self.bundle)
            .arg(id)
            .stdin(std::process::Stdio::piped())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap();
        let stdin = create.stdin.take().unwrap();
        let status = create.wait().unwrap();
        assert!(
            status.success(),
            "create: {}",
            std::fs::read_to_string(log).unwrap()
        );
        let out = self.cli(&["start", id]);
        assert!(out.status.success(), "start: {out:?}");
        stdin
    }

    fn status(&self, id: &str) -> String {
        let out = self.cli(&["state", id]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        v["status"].as_str().unwrap_or("?").to_string()
    }

    fn wait_stopped(&self, id: &str) {
        let deadline = Instant::now() + Duration::from_secs(120);
        while self.status(id) != "stopped" {
            assert!(Instant::now() < deadline, "{id} never stopped");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn file(&self, id: &str, name: &str) -> String {
        std::fs::read_to_string(self.root.join(id).join(name)).unwrap_or_default()
    }

    /// `delete`, then nothing of the root may be left.
    fn delete_and_check(&self, id: &str) {
        let out = self.cli(&["delete", "--force", id]);
        assert!(out.status.success(), "delete: {out:?}");
        let left = footprint(&self.root);
        assert!(
            left.processes.is_empty(),
            "processes left: {:?}",
            left.processes
        );
        assert_eq!(left.mounts, 0, "mounts left");
        assert_eq!(left.state_dirs, 0, "state directories left");
        if !left.sockets.is_empty() {
            // Who holds them (ss shows the owning processes), for the failure message.
            let ss = Command::new("ss").args(["-xap"]).output().unwrap();
            let ss = String::from_utf8_lossy(&ss.stdout);
            let holders: Vec<&str> = ss
                .lines()
                .filter(|l| left.sockets.iter().any(|s| l.contains(s.as_str())))
                .collect();
            panic!("sockets left: {:?}; ss: {holders:?}", left.sockets);
        }
        let jail = self.root.join(id).join(sandbox::jail::DIR_NAME);
        let cg = sandbox::jail::cgroup_name(&jail);
        assert!(
            !Path::new("/sys/fs/cgroup/memory").join(&cg).exists(),
            "cgroup left"
        );
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        if let Ok(d) = std::fs::read_dir(&self.root) {
            for e in d.flatten() {
                let id = e.file_name().to_string_lossy().into_owned();
                let _ = self.cli(&["delete", "--force", &id]);
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn pids_of(pattern: &str) -> Vec<i32> {
    let out = Command::new("pgrep")
        .args(["-f", pattern])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

fn kill9(pids: &[i32]) {
    assert!(!pids.is_empty(), "nothing to kill");
    for p in pids {
        // SAFETY: kill(2) on pids we just looked up.
        unsafe { libc::kill(*p, libc::SIGKILL) };
    }
}

#[test]
fn kill_9_of_the_vmm_stops_the_container_with_a_reason_and_delete_cleans_up() {
    let env = Env::new("vmm", serde_json::json!({}));
    env.create_and_start("k1");
    // The VMM boots (`sandbox-vm-vmm --config DIR/vm.json`) or restores a template
    // (`sandbox-vm-vmm --restore TEMPLATE --api-sock DIR/vmm.sock ...`): both name files in
    // the container's directory.
    let dir = env.root.join("k1");
    kill9(&pids_of(&format!("sandbox-vm-vmm .*{}/", dir.display())));
    env.wait_stopped("k1");
    let state: serde_json::Value = serde_json::from_str(&env.file("k1", "state.json")).unwrap();
    assert_eq!(state["exit_status"], 255, "{state}");
    let log = env.file("k1", "monitor.log");
    assert!(log.contains("the VMM was killed by signal 9"), "{log}");
    env.delete_and_check("k1");
}

/// Runs `sandbox-vm exec ID sh -c CMD` for at most `secs`: its exit status and what it
/// printed (stdout and stderr), or None if it had to be killed.
fn exec_for(env: &Env, id: &str, cmd: &str, secs: u64) -> Option<(ExitStatus, String)> {
    let out = env.dir.join(format!("exec-{id}.out"));
    let mut child = Command::new(env!("CARGO_BIN_EXE_sandbox-vm"))
        .arg("--root")
        .arg(&env.root)
        .args(["exec", id, "sh", "-c", cmd])
        .stdin(std::process::Stdio::null())
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::options().append(true).open(&out).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if let Some(st) = child.try_wait().unwrap() {
            return Some((st, std::fs::read_to_string(&out).unwrap_or_default()));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

/// The container of the virtiofsd case: reads a file of the share every second until that
/// fails, says so, and stays (reading its stdin, a pipe the test holds: no new program
/// could start from the dead share). The loop's errors go to stdout, in order before the
/// last line.
const READ_UNTIL_EIO: &str = "echo reading; \
    while read -r l < /data.txt; do sleep 1; done 2>&1; echo 'the share failed'; read x";

#[test]
fn kill_9_of_virtiofsd_gives_the_container_eio_is_reported_and_delete_cleans_up() {
    let env = Env::running(
        "virtiofsd",
        serde_json::json!({}),
        &["sh", "-c", READ_UNTIL_EIO],
    );
    std::fs::write(env.bundle.join("rootfs/data.txt"), "a line\n").unwrap();
    let out = env.dir.join("container.out");
    let _stdin = env.create_and_start_logged("v1", &out);
    // Its shell runs (loaded from the share) before the share goes.
    let deadline = Instant::now() + Duration::from_secs(120);
    while !std::fs::read_to_string(&out)
        .unwrap_or_default()
        .contains("reading")
    {
        assert!(Instant::now() < deadline, "the container never started");
        std::thread::sleep(Duration::from_millis(100));
    }
    let sock = env.root.join("v1/virtiofsd.sock");
    kill9(&pids_of(&format!("socket-path={}", sock.display())));
    let killed = Instant::now();

    // The container's next read fails, instead of waiting for virtiofsd forever. Or its
    // shell dies of SIGBUS: a page of busybox it had not touched yet, mapped from the dead
    // share, cannot be read (the kernel's answer for any file mapping whose backing store
    // fails). Either way nothing hangs and the runtime says what happened.
    let deadline = killed + Duration::from_secs(120);
    let said = loop {
        let said = std::fs::read_to_string(&out).unwrap_or_default();
        if said.contains("the share failed") {
            break said;
        }
        if env.status("v1") == "stopped" {
            let log = env.file("v1", "monitor.log");
            assert!(
                log.contains("Signal(7)") && log.contains("virtiofsd (pid"),
                "the container ended otherwise: {log}"
            );
            eprintln!("virtiofsd killed: the container's shell died of SIGBUS: {said}");
            env.delete_and_check("v1");
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the container's read hangs: {said}"
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    let to_eio = killed.elapsed();

    // A new process in the container gets EIO too, and the user is told.
    let t = Instant::now();
    let exec = exec_for(&env, "v1", "cat /data.txt", 120);
    let (status, exec_out) = exec.expect("the exec hangs: the guest waits for virtiofsd");
    assert!(
        !status.success(),
        "reading through a dead share worked: {exec_out}"
    );
    assert!(exec_out.contains("Input/output error"), "{exec_out}");
    eprintln!(
        "virtiofsd killed: the container's read failed {:.1} s later ({}); an exec failed \
         after {:.1} s: {}",
        to_eio.as_secs_f64(),
        said.trim().replace('\n', " | "),
        t.elapsed().as_secs_f64(),
        exec_out.trim()
    );

    // The runtime says why: the monitor (it looks every second) and the VMM.
    let log = env.file("v1", "monitor.log");
    assert!(
        log.contains("virtiofsd (pid") && log.contains("died"),
        "no reason given: {log}"
    );
    let vmm_log = env.file("v1", "vmm.log");
    assert!(
        vmm_log.contains("answers every request with EIO"),
        "{vmm_log}"
    );
    assert_eq!(
        env.status("v1"),
        "running",
        "the VM and the container live on"
    );
    env.delete_and_check("v1");
}

#[test]
fn a_guest_panic_exits_2_and_the_runtime_says_so() {
    // No init the kernel can run: "Kernel panic - not syncing: No working init found".
    let env = Env::new(
        "panic",
        serde_json::json!({"io.sandbox-vm.kernel-params": "init=/nonexistent"}),
    );
    let b = env.bundle.to_str().unwrap();
    let out = env.cli(&["create", "--bundle", b, "p1"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("the guest crashed"), "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    let left = footprint(&env.root);
    assert!(
        left.processes.is_empty() && left.mounts == 0 && left.state_dirs == 0,
        "{left:?}"
    );
}
