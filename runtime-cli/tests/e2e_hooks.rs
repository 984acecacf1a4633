//! OCI hooks and interrupted `create`s with the real guest (four sandboxes, each restored
//! from the e2e template when there is one):
//! - hooks: prestart, createRuntime, poststart and poststop hooks are host programs that
//!   write the state JSON they got on stdin to files on the host, for `run` and for
//!   `create`/`start`/`delete`; they run in the spec's order, with its statuses, the
//!   monitor's pid (the `--pid-file` pid) and the hook's own `env`; the second container
//!   is deleted (`--force`) while paused, and leaves nothing.
//! - `create` held at named points (`SANDBOX_VM_TEST_PAUSE`, see runtime-cli/src/testpoint.rs)
//!   and killed there (SIGTERM or SIGKILL, to `create`, its process group or the monitor),
//!   then `delete --force`: no process, mount, socket or state directory is left. One case
//!   lets the monitor go on after `delete` removed its container before it recorded its
//!   pid: it must start nothing.
//!
//! Needs root, /dev/kvm, the guest kernel and images/out/agent.ext4 (`scripts/setup.sh`).

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Output, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;
use test_support::cmd::{ok, output_via_files, poll_until};
use test_support::fresh_dir;
use test_support::host::{footprint, processes_mentioning};
use test_support::rootfs::{busybox_bundle, edit_config};
use test_support::runtime::{oci_command, Reap};

const BIN: &str = env!("CARGO_BIN_EXE_sandbox-vm");

/// The hooks this test sets, in the order they must run.
const KINDS: [&str; 4] = ["prestart", "createRuntime", "poststart", "poststop"];

/// A bundle running `args` whose hooks each write their stdin to `<out>/<kind>.json` and
/// append their kind and `$HOOK_ENV` to `<out>/order`.
fn hooked_bundle(dir: &Path, out: &Path, args: &[&str]) -> PathBuf {
    std::fs::create_dir_all(out).unwrap();
    let b = busybox_bundle(BIN, &dir.join("bundle"), args);
    let hook = |kind: &str| {
        let script = format!(
            "cat > {o}/{kind}.json; echo {kind} $HOOK_ENV >> {o}/order",
            o = out.display()
        );
        serde_json::json!({"path": "/bin/sh", "args": ["sh", "-c", script],
            "env": [format!("HOOK_ENV=env-of-{kind}")], "timeout": 60})
    };
    edit_config(&b, |c| {
        for kind in KINDS {
            c["hooks"][kind] = serde_json::json!([hook(kind)]);
        }
    });
    b
}

/// The state JSON hook `kind` received.
fn received(out: &Path, kind: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(out.join(format!("{kind}.json")))
        .unwrap_or_else(|e| panic!("{kind} hook did not run: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{kind} got {text:?}: {e}"))
}

/// Checks what each hook got: id, bundle, the step's status, the monitor's pid (`pid`,
/// or any when `None`) until stopped.
fn check_states(out: &Path, id: &str, bundle: &Path, pid: Option<i64>) -> i64 {
    let order = std::fs::read_to_string(out.join("order")).unwrap();
    let want: Vec<String> = KINDS.iter().map(|k| format!("{k} env-of-{k}")).collect();
    assert_eq!(order.lines().collect::<Vec<_>>(), want, "hook order / env");
    let statuses = ["creating", "creating", "running", "stopped"];
    let first = received(out, "prestart")["pid"].as_i64().unwrap();
    assert!(
        first > 0 && pid.is_none_or(|p| p == first),
        "prestart pid {first}"
    );
    for (kind, status) in KINDS.iter().zip(statuses) {
        let s = received(out, kind);
        assert_eq!(s["id"], id, "{kind}: {s}");
        assert_eq!(s["status"], status, "{kind}: {s}");
        assert_eq!(s["bundle"], bundle.to_str().unwrap(), "{kind}: {s}");
        assert!(s["ociVersion"].is_string(), "{kind}: {s}");
        let want_pid = if status == "stopped" { 0 } else { first };
        assert_eq!(s["pid"], want_pid, "{kind}: {s}");
    }
    first
}

#[test]
fn hooks_run_on_the_host_for_run_and_for_create_start_delete() {
    let dir = fresh_dir("svm-e2e-hooks");
    let root = dir.join("root");
    let t = Instant::now();

    let out = dir.join("out-run");
    let b = hooked_bundle(&dir.join("run"), &out, &["echo", "hello from the guest"]);
    let _reap = Reap::new(BIN, &root, "hooks-run");
    let run = oci_command(BIN, &root)
        .args(["run", "--bundle"])
        .arg(&b)
        .arg("hooks-run")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(ok(run, "run").contains("hello from the guest"));
    check_states(&out, "hooks-run", &b, None);
    eprintln!("run with hooks: {:.1?}", t.elapsed());

    let out = dir.join("out-create");
    let b = hooked_bundle(&dir.join("create"), &out, &["sleep", "600"]);
    let _reap = Reap::new(BIN, &root, "hooks-c");
    let pid_file = dir.join("pid");
    let cli = |args: &[&str]| output_via_files(oci_command(BIN, &root).args(args));
    let created = output_via_files(
        oci_command(BIN, &root)
            .args(["create", "--bundle"])
            .arg(&b)
            .arg("--pid-file")
            .arg(&pid_file)
            .arg("hooks-c"),
    );
    assert!(created.status.success(), "create: {created:?}");
    let pid: i64 = std::fs::read_to_string(&pid_file).unwrap().parse().unwrap();
    let order = std::fs::read_to_string(out.join("order")).unwrap();
    assert_eq!(order.lines().count(), 2, "after create: {order}");
    assert!(cli(&["start", "hooks-c"]).status.success());
    assert_eq!(received(&out, "poststart")["status"], "running");
    assert!(
        !out.join("poststop.json").exists(),
        "poststop before delete"
    );
    // Deleted while paused: nothing may be left in that state either.
    assert!(cli(&["pause", "hooks-c"]).status.success());
    let deleted = cli(&["delete", "--force", "hooks-c"]);
    assert!(deleted.status.success(), "delete: {deleted:?}");
    check_states(&out, "hooks-c", &b, Some(pid));
    let left = footprint(&root);
    assert!(
        left.processes.is_empty() && left.mounts == 0 && left.state_dirs == 0,
        "{left:?}"
    );
    eprintln!("run + create/start/delete with hooks: {:.1?}", t.elapsed());
    let _ = std::fs::remove_dir_all(&dir);
}

/// A `create` held at a test point, its stderr read line by line.
struct Held {
    create: Child,
    lines: Receiver<String>,
}

impl Held {
    /// Starts `create --bundle B ID` with `SANDBOX_VM_TEST_PAUSE=point` in a process
    /// group of its own, and waits until it (or its monitor) says it is held there.
    fn at(root: &Path, bundle: &Path, id: &str, point: &str, resume: &Path) -> Held {
        let mut cmd = oci_command(BIN, root);
        cmd.args(["create", "--bundle"])
            .arg(bundle)
            .arg(id)
            .env("SANDBOX_VM_TEST_PAUSE", point)
            .env("SANDBOX_VM_TEST_RESUME", resume)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let mut create = cmd.spawn().unwrap();
        let stderr = create.stderr.take().unwrap();
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                let _ = tx.send(line);
            }
        });
        let held = Held { create, lines };
        held.wait_for(&format!("paused at {point}"), Duration::from_secs(240));
        held
    }

    fn wait_for(&self, what: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let mut seen = Vec::new();
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(l) if l.contains(what) => return,
                Ok(l) => seen.push(l),
                Err(_) => break,
            }
        }
        panic!("no {what:?} on create's stderr within {timeout:?}: {seen:?}");
    }
}

/// The monitor's pid as `state` reports it.
fn monitor_pid(root: &Path, id: &str) -> i32 {
    let out = ok(
        oci_command(BIN, root).args(["state", id]).output().unwrap(),
        "state",
    );
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["pid"].as_i64().unwrap() as i32
}

fn delete_force(root: &Path, id: &str) -> Output {
    output_via_files(oci_command(BIN, root).args(["delete", "--force", id]))
}

/// Nothing of `root` is left on the host (processes may take a moment to exit).
fn nothing_left(root: &Path, case: &str) {
    let needle = root.to_string_lossy().into_owned();
    poll_until(Duration::from_secs(20), Duration::from_millis(100), || {
        processes_mentioning(&needle).is_empty()
    });
    let left = footprint(root);
    assert!(
        left.processes.is_empty()
            && left.mounts == 0
            && left.state_dirs == 0
            && left.sockets.is_empty(),
        "{case}: left {left:?}"
    );
}

#[test]
fn create_killed_at_each_step_then_delete_force_leaves_nothing() {
    let dir = fresh_dir("svm-e2e-interrupt");
    let root = dir.join("root");
    let b = busybox_bundle(BIN, &dir.join("bundle"), &["sleep", "600"]);
    let resume = dir.join("resume");
    let t = Instant::now();
    let cases: [(&str, &str); 5] = [
        ("create-state-saved", "kill create"),
        (
            "monitor-started",
            "term create, delete, then let the monitor go on",
        ),
        ("monitor-recorded", "term create's group"),
        ("sandbox-up", "kill the monitor, term create"),
        ("container-created", "term create"),
    ];
    for (n, (point, how)) in cases.into_iter().enumerate() {
        let id = format!("int{n}");
        let _reap = Reap::new(BIN, &root, &id);
        let case = format!("{point}: {how}");
        let mut held = Held::at(&root, &b, &id, point, &resume);
        let create = Pid::from_raw(held.create.id() as i32);
        match n {
            0 => kill(create, Signal::SIGKILL).unwrap(),
            1 | 4 => kill(create, Signal::SIGTERM).unwrap(),
            2 => killpg(create, Signal::SIGTERM).unwrap(),
            _ => {
                let monitor = monitor_pid(&root, &id);
                assert!(monitor > 0, "{case}: no monitor pid in the state");
                kill(Pid::from_raw(monitor), Signal::SIGKILL).unwrap();
                kill(create, Signal::SIGTERM).unwrap();
            }
        }
        let _ = held.create.wait();
        let deleted = delete_force(&root, &id);
        assert!(deleted.status.success(), "{case}: delete: {deleted:?}");
        if n == 1 {
            // The monitor was held before recording its pid; its container is gone now.
            std::fs::write(&resume, "").unwrap();
        }
        nothing_left(&root, &case);
        let _ = std::fs::remove_file(&resume);
        eprintln!("{case}: nothing left ({:.1?} so far)", t.elapsed());
    }
    let _ = std::fs::remove_dir_all(&dir);
}
