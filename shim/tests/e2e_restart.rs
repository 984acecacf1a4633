//! Pods that outlive their containerd, and a shim that dies. One containerd 1.6 of the
//! test's own, two pods on the node network (two VMs, each restored from the e2e template
//! when `$SANDBOX_VM_TEMPLATE_DIR` has it), driven by the CRI client `cri_restart_e2e.py`
//! in phases:
//!
//! * restart: containerd is stopped (SIGTERM) and started again on the same root and
//!   state. The "survivor" pod is still Ready; ExecSync works and its exec's start and
//!   exit events reach the new containerd (`ctr events`); what the container writes to its
//!   stdout after the restart reaches its CRI log file; a container killed by its
//!   memory limit is reported OOMKilled (that reason comes only from the shim's
//!   `/tasks/oom` event); StopContainer (which waits for the exit event) and
//!   StopPodSandbox + RemovePodSandbox work, and nothing of the pod is left.
//! * crash: the "victim" pod's shim (kubelet-style, in a cgroup parent) is SIGKILLed.
//!   containerd runs the shim's `delete`; the pod is reported not ready, StopPodSandbox +
//!   RemovePodSandbox then leave no VMM, virtiofsd, mount, state, cgroup, and the dead
//!   shim's socket is gone too.

mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::Containerd;
use test_support::host::processes;

/// Runs one phase of the CRI script; its `RESULT` line.
fn phase(c: &Containerd, python: &std::path::Path, args: &[&str]) -> serde_json::Value {
    let args: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_ref()).collect();
    let what = format!("cri_restart_e2e.py {:?}", args[0]);
    let stdout = c.run_cri_script(python, "cri_restart_e2e.py", &args, &what);
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("RESULT "))
        .and_then(|j| serde_json::from_str(j).ok())
        .unwrap_or_else(|| panic!("{what}: no result in {stdout}"))
}

/// The task events `ctr events` printed: (topic, event as JSON).
fn events(text: &str) -> Vec<(String, serde_json::Value)> {
    text.lines()
        .filter_map(|l| {
            let (head, json) = l.split_at(l.find('{')?);
            let topic = head.split_whitespace().last()?.to_string();
            Some((topic, serde_json::from_str(json).ok()?))
        })
        .collect()
}

fn has_event(
    evs: &[(String, serde_json::Value)],
    topic: &str,
    f: impl Fn(&serde_json::Value) -> bool,
) -> bool {
    evs.iter().any(|(t, e)| t == topic && f(e))
}

/// The pid of the shim serving `pod` (its `-id` is the pod id).
fn shim_of(pod: &str) -> Option<i32> {
    processes().into_iter().find_map(|(pid, cmd)| {
        (cmd.contains("containerd-shim-sandbox-vm-v2") && cmd.contains(&format!("-id {pod}")))
            .then_some(pid as i32)
    })
}

#[test]
fn cri_pods_survive_a_containerd_restart_and_a_shim_crash() {
    common::require_host();
    let python = common::venv_python();
    let t0 = Instant::now();
    let mut c = Containerd::start("restart");
    c.import_images("k8s.io");
    let parent = format!(
        "/svm-e2e-restart-{}/burstable/poduid-victim",
        std::process::id()
    );
    let start = phase(&c, &python, &["start", &parent]);
    let id = |k: &str| start[k].as_str().expect(k).to_string();
    let (survivor, survivor_ctr, victim) = (id("survivor"), id("survivor_ctr"), id("victim"));
    let log = std::fs::read_to_string(&c.log).unwrap_or_default();
    let restored = log.matches("(restored from a template)").count();
    eprintln!("{restored} of 2 pods restored from a template");
    if std::env::var_os("SANDBOX_VM_E2E_TEMPLATES").is_some() {
        assert_eq!(restored, 2, "both pods should restore the e2e template");
    }

    // Restart.
    let t_restart = Instant::now();
    c.restart();
    eprintln!("containerd restarted in {:.1?}", t_restart.elapsed());
    let events_file = c.dir.join("events.txt");
    let mut watcher = Command::new("ctr")
        .arg("--address")
        .arg(&c.sock)
        .args(["-n", "k8s.io", "events"])
        .stdout(std::fs::File::create(&events_file).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .expect("ctr events");
    std::thread::sleep(Duration::from_millis(500));
    let after = phase(&c, &python, &["after-restart", &survivor, &survivor_ctr]);
    let hog = after["hog"].as_str().expect("hog").to_string();
    std::thread::sleep(Duration::from_millis(500));
    let _ = watcher.kill();
    let _ = watcher.wait();
    let evs = events(&std::fs::read_to_string(&events_file).unwrap_or_default());
    let of = |e: &serde_json::Value, k: &str| e[k].as_str().unwrap_or_default().to_string();
    let is_exec = |e: &serde_json::Value| {
        of(e, "container_id") == survivor_ctr && !of(e, "exec_id").is_empty()
    };
    assert!(
        has_event(&evs, "/tasks/exec-started", is_exec),
        "no exec start event after the restart: {evs:?}"
    );
    assert!(
        has_event(&evs, "/tasks/exit", |e| of(e, "container_id")
            == survivor_ctr
            && of(e, "id") != survivor_ctr),
        "no exec exit event after the restart: {evs:?}"
    );
    assert!(
        has_event(&evs, "/tasks/oom", |e| of(e, "container_id") == hog),
        "no OOM event after the restart: {evs:?}"
    );
    let survivor_state = c.vm_root.join("k8s.io").join(&survivor[..24]);
    assert!(
        !survivor_state.exists() && shim_of(&survivor).is_none(),
        "the survivor pod is not gone: {:#?}",
        c.leftovers()
    );

    // Crash.
    let address = c
        .dir
        .join("state/io.containerd.runtime.v2.task/k8s.io")
        .join(&victim)
        .join("address");
    let address = std::fs::read_to_string(&address).expect("the victim's address file");
    let socket = PathBuf::from(address.trim().trim_start_matches("unix://"));
    assert!(socket.exists(), "the victim's shim socket {socket:?}");
    let shim = shim_of(&victim).expect("the victim's shim");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(shim),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let crash = phase(&c, &python, &["after-crash", &victim, &parent]);
    eprintln!("after the crash: {crash}");
    assert!(
        !socket.exists(),
        "the dead shim's socket {socket:?} is left"
    );
    let left = c.wait_clean(Duration::from_secs(30));
    assert!(left.is_empty(), "left behind: {left:#?}");
    eprintln!("restart and crash e2e took {:.1?}", t0.elapsed());
}
