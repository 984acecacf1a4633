//! The OCI runtime end to end, with the real guest kernel and agent: two boots in all
//! (guest boots cost about a minute on hosts that emulate guest kernel mode).
//! - `run` of a busybox bundle: `uname -sr; dmesg | grep -c .; ps` shows the guest kernel
//!   (not the host's), the guest kernel's own log, and only the container's processes. It
//!   runs in a user namespace, and sees its uid and gid mappings and itself as root.
//! - one container through `create` (with `--pid-file`), `state`, `start`, `exec`, `ps`,
//!   `pause`, `resume`, `kill`, `state`, `delete`; the pid-file process exits with the
//!   container's status. Its memory limit is 1 GiB: its VM (1 GiB + the guest overhead)
//!   runs in the VMM's jail, whose file-size limit must let the VMM size guest RAM.
//!   `update` lowers its limits (memory, CPU quota, pids) in the guest's cgroup, a process
//!   allocating past the new memory limit is OOM-killed, and an update bigger than the VM
//!   is refused with the old limits left in force. Its spec's `oomScoreAdj` (500) is the
//!   init's, and its `rootfsPropagation` (`shared`) makes the container's `/` shared.
//!
//! Needs root, /dev/kvm, the guest kernel (`SANDBOX_VM_KERNEL` or the kernel cache) and
//! the agent initramfs (`SANDBOX_VM_INITRD` or images/out/agent-initramfs.cpio).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use test_support::artifacts::{image, kernel};
use test_support::host::kernel_release;
use test_support::rootfs::busybox_bundle;
use test_support::runtime::Reap;
use test_support::{fresh_dir, ok};

const BIN: &str = env!("CARGO_BIN_EXE_sandbox-vm");

fn runtime(root: &Path) -> Command {
    let mut c = Command::new(BIN);
    c.env("SANDBOX_VM_KERNEL", kernel())
        .env(
            "SANDBOX_VM_INITRD",
            image("SANDBOX_VM_INITRD", "agent-initramfs.cpio"),
        )
        .arg("--root")
        .arg(root);
    c
}

fn status_of(root: &Path, id: &str) -> String {
    let out = ok(runtime(root).args(["state", id]).output().unwrap(), "state");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["status"].as_str().unwrap().to_string()
}

#[test]
fn run_shows_guest_kernel_and_only_container_processes() {
    let dir = fresh_dir("svm-e2e-run");
    let b = busybox_bundle(
        BIN,
        &dir.join("bundle"),
        &[
            "sh",
            "-c",
            "uname -sr; dmesg | grep -c .; dmesg | grep -c sandbox-vm; \
             cat /proc/self/uid_map /proc/self/gid_map; id; ps",
        ],
    );
    // A user namespace: container ids 0-65535 are guest ids 100000-165535 (so the
    // rootfs's files, the host's root's, are nobody's in it).
    test_support::rootfs::edit_config(&b, |c| {
        let map =
            |host: u32| serde_json::json!([{"containerID": 0, "hostID": host, "size": 65536}]);
        c["linux"]["namespaces"]
            .as_array_mut()
            .unwrap()
            .push(serde_json::json!({"type": "user"}));
        c["linux"]["uidMappings"] = map(100000);
        c["linux"]["gidMappings"] = map(200000);
    });
    let root = dir.join("root");
    let _reap = Reap::new(BIN, &root, "e2e-run");
    let t = Instant::now();
    let out = runtime(&root)
        .args(["run", "--bundle"])
        .arg(&b)
        .arg("e2e-run")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let secs = t.elapsed().as_secs_f64();
    let stdout = ok(out, "run");
    eprintln!("run took {secs:.1} s:\n{stdout}");
    let host = kernel_release();
    let mut lines = stdout.lines();
    let uname = lines.next().unwrap();
    assert!(uname.starts_with("Linux "), "{uname}");
    assert_ne!(
        uname.trim_start_matches("Linux "),
        host.trim(),
        "guest kernel = host kernel?"
    );
    // The sandbox's kernel log: a boot's worth of lines, naming our kernel build.
    let log_lines: usize = lines.next().unwrap().trim().parse().unwrap();
    assert!(log_lines > 20, "dmesg has {log_lines} lines");
    let ours: usize = lines.next().unwrap().trim().parse().unwrap();
    assert!(ours >= 1, "no 'sandbox-vm' in the guest's kernel log");
    // The container sees its mapped ids: root inside, guest uid 100000 and gid 200000.
    let maps: Vec<Vec<&str>> = (0..2)
        .map(|_| lines.next().unwrap().split_whitespace().collect())
        .collect();
    assert_eq!(maps, [["0", "100000", "65536"], ["0", "200000", "65536"]]);
    let id = lines.next().unwrap();
    assert!(id.starts_with("uid=0") && id.contains(" gid=0"), "{id}");
    let header = lines.next().unwrap();
    assert!(
        header.contains("PID") && header.contains("COMMAND"),
        "{header}"
    );
    let procs: Vec<&str> = lines.collect();
    // Only `ps` itself (sh execs its last command): no agent, no kernel threads, no host.
    assert_eq!(procs.len(), 1, "{procs:?}");
    assert!(procs[0].trim_start().starts_with("1 "), "{procs:?}");
    assert!(procs[0].contains("ps"), "{procs:?}");
    assert!(!root.join("e2e-run").exists(), "run left its state behind");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `exec ID sh -c SCRIPT`'s output.
fn sh(root: &Path, id: &str, script: &str) -> String {
    ok(
        runtime(root)
            .args(["exec", id, "sh", "-c", script])
            .stdin(Stdio::null())
            .output()
            .unwrap(),
        script,
    )
}

/// The container's cgroup v2 files, read from inside it (with or without a cgroup
/// namespace, /proc/self/cgroup names its cgroup under the mount).
const CGROUP: &str = "cg=/sys/fs/cgroup$(cut -d: -f3 /proc/self/cgroup)";

/// `update` with runc's flags sets the container's cgroup limits in the guest; a process
/// that allocates past the new memory limit is OOM-killed; an update the VM cannot hold
/// is refused with one line and the old limits stay.
fn update_sets_limits_that_hold(root: &Path, id: &str) {
    let t = Instant::now();
    ok(
        runtime(root)
            .args(["update", "--memory", "16m", "--cpu-quota", "50000"])
            .args(["--cpu-period", "100000", "--pids-limit", "64", id])
            .output()
            .unwrap(),
        "update",
    );
    eprintln!("update took {:.1} s", t.elapsed().as_secs_f64());
    let limits = format!("{CGROUP}; cat $cg/memory.max $cg/cpu.max $cg/pids.max");
    assert_eq!(sh(root, id, &limits), "16777216\n50000 100000\n64\n");

    // dd's 24 MiB buffer is faulted in by its read of /dev/zero, charged to the container.
    let t = Instant::now();
    let dd = sh(
        root,
        id,
        &format!("dd if=/dev/zero of=/dev/null bs=24M count=1 2>/dev/null; echo dd=$?; {CGROUP}; grep oom_kill $cg/memory.events"),
    );
    eprintln!(
        "dd past the limit took {:.1} s: {dd}",
        t.elapsed().as_secs_f64()
    );
    assert!(dd.starts_with("dd=137\n"), "dd was not killed: {dd}");
    assert!(dd.contains("oom_kill 1"), "no OOM kill counted: {dd}");

    // The VM has 1 vCPU and 1 GiB + 96 MiB: 2 GiB does not fit, and nothing changes.
    let big = runtime(root)
        .args(["update", "--memory", "2g", "--cpu-quota", "20000", id])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&big.stderr);
    assert!(!big.status.success(), "an update bigger than the VM passed");
    assert!(
        err.contains("the VM has 1 vCPU and 1120 MiB; this update needs 1 vCPU and 2144 MiB, and growing a running VM is not supported yet"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert_eq!(sh(root, id, &limits), "16777216\n50000 100000\n64\n");
}

/// The VMM's own view of its state, from its control socket.
fn vmm_state(sock: &Path) -> String {
    let mut c = vmm_api::client::ApiClient::connect(sock, Duration::from_secs(5)).unwrap();
    let d = c.describe().unwrap();
    serde_json::to_value(d.state)
        .unwrap()
        .as_str()
        .unwrap()
        .to_string()
}

/// Waits for a process that is not our child: we are its subreaper (see below).
fn wait_pid(pid: i32, timeout: Duration) -> i32 {
    let deadline = Instant::now() + timeout;
    loop {
        let mut status = 0;
        // SAFETY: waitpid writes only to `status`, a valid local.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        assert!(
            r >= 0,
            "waitpid({pid}): {}",
            std::io::Error::last_os_error()
        );
        if r == pid {
            assert!(libc::WIFEXITED(status), "monitor status {status:#x}");
            return libc::WEXITSTATUS(status);
        }
        assert!(Instant::now() < deadline, "pid {pid} did not exit");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn create_start_exec_kill_delete() {
    // The monitor is `create`'s child; when `create` exits it is re-parented to us, so we can
    // wait for it as conmon does.
    // SAFETY: prctl(PR_SET_CHILD_SUBREAPER) takes an integer flag and touches no memory.
    assert_eq!(unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1) }, 0);
    let dir = fresh_dir("svm-e2e-life");
    let b = busybox_bundle(
        BIN,
        &dir.join("bundle"),
        &[
            "sh",
            "-c",
            "trap 'exit 42' TERM; echo started; sleep 1000 & wait",
        ],
    );
    test_support::rootfs::edit_config(&b, |c| {
        c["linux"]["resources"]["memory"] = serde_json::json!({"limit": 1u64 << 30});
        // runc's rootfs propagation and OOM score (the guest's pivot into a shared root
        // used to fail with EINVAL).
        c["linux"]["rootfsPropagation"] = serde_json::json!("shared");
        c["process"]["oomScoreAdj"] = serde_json::json!(500);
    });
    let root = dir.join("root");
    let id = "e2e-life";
    let pid_file = dir.join("pid");
    let stdout_file = dir.join("stdout");
    let _reap = Reap::new(BIN, &root, id);
    let t = Instant::now();
    ok(
        runtime(&root)
            .args(["create", "--bundle"])
            .arg(&b)
            .arg("--pid-file")
            .arg(&pid_file)
            .arg(id)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout_file).unwrap())
            .stderr(Stdio::inherit())
            .output()
            .unwrap(),
        "create",
    );
    eprintln!("create took {:.1} s", t.elapsed().as_secs_f64());
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let state: serde_json::Value = serde_json::from_str(&ok(
        runtime(&root).args(["state", id]).output().unwrap(),
        "state",
    ))
    .unwrap();
    assert_eq!(state["status"], "created");
    assert_eq!(state["pid"], pid);
    assert_eq!(state["id"], id);
    assert_eq!(state["bundle"], b.canonicalize().unwrap().to_str().unwrap());

    ok(
        runtime(&root).args(["start", id]).output().unwrap(),
        "start",
    );
    assert_eq!(status_of(&root, id), "running");
    let list = ok(runtime(&root).args(["list"]).output().unwrap(), "list");
    assert!(list.contains(id) && list.contains("running"), "{list}");

    let t = Instant::now();
    let exec = runtime(&root)
        .args(["exec", id, "sh", "-c", "echo hi from exec; exit 3"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    eprintln!("exec took {:.1} s", t.elapsed().as_secs_f64());
    assert_eq!(exec.status.code(), Some(3), "{exec:?}");
    assert_eq!(String::from_utf8_lossy(&exec.stdout), "hi from exec\n");

    // The init's OOM score is the spec's; the container's `/` is a shared mount.
    let seen = sh(
        &root,
        id,
        "cat /proc/1/oom_score_adj; awk '$5 == \"/\"' /proc/self/mountinfo",
    );
    let (oom, root_mount) = seen.split_once('\n').unwrap();
    assert_eq!(oom, "500", "{seen}");
    assert!(root_mount.contains(" shared:"), "/ is not shared: {seen}");

    // The 1 GiB container's VM: the guest has the RAM, and its VMM runs jailed (the jail's
    // pid-namespace child as uid 65534).
    let meminfo = ok(
        runtime(&root)
            .args(["exec", id, "cat", "/proc/meminfo"])
            .stdin(Stdio::null())
            .output()
            .unwrap(),
        "exec cat /proc/meminfo",
    );
    let total = test_support::host::mem_total_kib(&meminfo).expect("MemTotal");
    assert!(
        total > 1 << 20,
        "guest MemTotal {total} KiB for a 1 GiB limit"
    );
    let sock = root.join(id).join("vmm.sock");
    let uids = test_support::host::vmm_uids(&sock.display().to_string());
    assert!(uids.contains(&65534), "VMM not jailed: uids {uids:?}");

    update_sets_limits_that_hold(&root, id);

    let ps = ok(
        runtime(&root)
            .args(["ps", "--format", "json", id])
            .output()
            .unwrap(),
        "ps",
    );
    let pids: Vec<i32> = serde_json::from_str(&ps).unwrap();
    assert_eq!(pids.len(), 2, "sh and sleep: {ps}");

    // pause stops the VM's vCPUs (the VMM's control socket says so), resume restarts them.
    ok(
        runtime(&root).args(["pause", id]).output().unwrap(),
        "pause",
    );
    assert_eq!(status_of(&root, id), "paused");
    let describe = vmm_state(&root.join(id).join("vmm.sock"));
    assert_eq!(describe, "paused");
    let again = runtime(&root).args(["pause", id]).output().unwrap();
    assert!(
        !again.status.success(),
        "pause of a paused container must fail"
    );
    ok(
        runtime(&root).args(["resume", id]).output().unwrap(),
        "resume",
    );
    assert_eq!(status_of(&root, id), "running");
    assert_eq!(vmm_state(&root.join(id).join("vmm.sock")), "running");

    ok(
        runtime(&root).args(["kill", id, "TERM"]).output().unwrap(),
        "kill",
    );
    assert_eq!(wait_pid(pid, Duration::from_secs(120)), 42);
    assert_eq!(status_of(&root, id), "stopped");
    assert_eq!(std::fs::read_to_string(&stdout_file).unwrap(), "started\n");
    let again = runtime(&root).args(["kill", id, "KILL"]).output().unwrap();
    assert!(
        !again.status.success(),
        "kill of a stopped container must fail"
    );

    ok(
        runtime(&root).args(["delete", id]).output().unwrap(),
        "delete",
    );
    assert!(!root.join(id).exists(), "delete left state behind");
    let gone = runtime(&root).args(["state", id]).output().unwrap();
    assert!(!gone.status.success());
    let _ = std::fs::remove_dir_all(&dir);
}
