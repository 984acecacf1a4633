//! `Sandbox::create` failing at each of its steps leaves nothing behind: no process, no
//! mount under the state directory. The VMM is a fake: a program that exits, one that opens
//! its control socket and never lets an agent answer, or one that relays the hybrid vsock
//! to a real guest agent running on the host, which then fails to mount the share (there
//! is no virtio-fs device on the host). virtiofsd is the real one, so the share's mounts
//! and the helpers' teardown are the real ones.
//!
//! Needs root (the share is a bind mount), virtiofsd (`scripts/setup.sh` installs it),
//! python3, and the workspace's `guest-agent` binary (`cargo test --workspace` builds it).

use std::path::{Path, PathBuf};
use std::time::Duration;

use oci_spec::runtime::Spec;
use sandbox::oci::translate::HostPath;
use sandbox::template::TemplateUse;
use sandbox::{HostConfig, HostProbe, PodPlan, Role, Sandbox, SandboxError};
use test_support::host::{mounts_mentioning, processes_mentioning, require_root};
use test_support::TempDir;

/// A host where every guest artifact and bind source exists.
struct EverythingThere;

impl HostProbe for EverythingThere {
    fn path(&self, p: &Path) -> HostPath {
        if p.ends_with("rootfs") {
            HostPath::Dir
        } else {
            HostPath::File
        }
    }

    fn netns(&self, _: &Path) -> Result<(), sandbox::network::NetnsError> {
        Ok(())
    }

    fn ns_type(
        &self,
        p: &Path,
    ) -> Result<oci_spec::runtime::LinuxNamespaceType, sandbox::nsfile::NsFileError> {
        Err(sandbox::nsfile::NsFileError::Missing(p.to_path_buf()))
    }
}

/// A fake VMM that opens its control socket (`--api-sock PATH`) and then only waits: the
/// sandbox takes it for a running VM whose agent never answers.
const SILENT_VMM: &str = r#"#!/usr/bin/env python3
import socket, sys, time
a = sys.argv
s = socket.socket(socket.AF_UNIX)
s.bind(a[a.index("--api-sock") + 1])
s.listen(1)
time.sleep(600)
"#;

/// A fake VMM whose guest is a real agent on the host: it starts `guest-agent --unix`
/// (killed with it), and answers each hybrid vsock `CONNECT` on the VM's vsock socket
/// (from `--config`) with `OK` and a relay to the agent.
const RELAY_VMM: &str = r#"#!/usr/bin/env python3
import ctypes, json, os, signal, socket, subprocess, sys, threading
a = sys.argv
uds = json.load(open(a[a.index("--config") + 1]))["vsock"]["uds_path"]
api = socket.socket(socket.AF_UNIX)
api.bind(a[a.index("--api-sock") + 1])
api.listen(1)
state = os.path.dirname(a[a.index("--api-sock") + 1])
agent_sock = os.path.join(state, "agent.sock")
libc = ctypes.CDLL(None)
subprocess.Popen(["AGENT", "--unix", agent_sock, "--state-dir", os.path.join(state, "agent")],
                 preexec_fn=lambda: libc.prctl(1, signal.SIGKILL))
vsock = socket.socket(socket.AF_UNIX)
vsock.bind(uds)
vsock.listen(8)

def relay(src, dst):
    while True:
        d = src.recv(65536)
        if not d:
            break
        dst.sendall(d)
    dst.shutdown(socket.SHUT_WR)

while True:
    c, _ = vsock.accept()
    line = b""
    while not line.endswith(b"\n"):
        line += c.recv(1)
    g = socket.socket(socket.AF_UNIX)
    try:
        g.connect(agent_sock)
    except OSError:
        c.close()
        continue
    c.sendall(b"OK 1\n")
    threading.Thread(target=relay, args=(c, g), daemon=True).start()
    threading.Thread(target=relay, args=(g, c), daemon=True).start()
"#;

fn spec() -> Spec {
    serde_json::from_value(serde_json::json!({
        "ociVersion": "1.0.2",
        "process": {"args": ["true"], "cwd": "/", "user": {"uid": 0, "gid": 0}},
        "root": {"path": "rootfs"},
        "linux": {"namespaces": [{"type": "mount"}]},
    }))
    .unwrap()
}

/// The plan of a sandbox in a new state directory under `dir` that starts `vmm`, with the
/// host's virtiofsd.
fn plan(dir: &Path, vmm: &Path) -> PodPlan {
    let mut host = HostConfig::resolve(|k| std::env::var_os(k), None);
    assert!(
        host.virtiofsd.is_some(),
        "cannot run: virtiofsd not found (scripts/setup.sh installs it)"
    );
    host.kernel = Some("/nonexistent/vmlinux".into());
    host.agent_disk = Some("/nonexistent/agent.ext4".into());
    host.vmm_exe = Some(vmm.to_path_buf());
    host.agent_timeout = Duration::from_secs(2);
    host.jail = false;
    let rootfs = dir.join("bundle/rootfs");
    std::fs::create_dir_all(&rootfs).unwrap();
    let state = dir.join(test_support::unique("state"));
    let mut p = PodPlan::new(
        "rb",
        &spec(),
        &rootfs,
        Role::Alone,
        &state,
        &host,
        &EverythingThere,
    )
    .unwrap();
    p.template = TemplateUse::Off;
    p
}

/// Nothing of the sandbox in `dir` is left: no process mentions it, nothing is mounted
/// under it.
fn assert_nothing_left(dir: &Path, step: &str) {
    let needle = dir.display().to_string();
    // The helpers are stopped before `create` returns; allow their exit a moment.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !processes_mentioning(&needle).is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let procs = processes_mentioning(&needle);
    assert!(procs.is_empty(), "{step}: processes left: {procs:#?}");
    let mounts = mounts_mentioning(&needle);
    assert!(mounts.is_empty(), "{step}: mounts left: {mounts:#?}");
}

fn script(dir: &Path, name: &str, text: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p
}

#[test]
fn a_create_that_fails_at_any_step_leaves_nothing() {
    require_root("the share is a bind mount");
    let dir = TempDir::new("svm-rollback");
    let silent = script(dir.path(), "silent-vmm", SILENT_VMM);

    // virtiofsd cannot start.
    let mut p = plan(dir.path(), &silent);
    p.virtiofsd = "/nonexistent/virtiofsd".into();
    let e = Sandbox::create(&p).unwrap_err();
    assert!(e.to_string().contains("virtiofsd"), "{e}");
    assert_nothing_left(dir.path(), "virtiofsd missing");

    // The pod's network namespace went away after planning.
    let mut p = plan(dir.path(), &silent);
    p.netns = Some("/run/netns/svm-rollback-gone".into());
    let e = Sandbox::create(&p).unwrap_err();
    assert!(matches!(e, SandboxError::Network(_)), "{e}");
    assert_nothing_left(dir.path(), "netns gone");

    // The VMM exits before it is ready.
    let p = plan(dir.path(), Path::new("/bin/false"));
    let e = Sandbox::create(&p).unwrap_err();
    assert!(e.to_string().contains("VMM"), "{e}");
    assert_nothing_left(dir.path(), "VMM exits");

    // The VMM runs, but no agent ever answers.
    let p = plan(dir.path(), &silent);
    let e = Sandbox::create(&p).unwrap_err();
    assert!(matches!(e, SandboxError::AgentTimeout(..)), "{e}");
    assert_nothing_left(dir.path(), "no agent");

    // The agent answers, then cannot set the sandbox up (no virtio-fs share to mount).
    let agent = test_support::artifacts::built_binary("guest-agent");
    let relay = RELAY_VMM.replace("AGENT", &agent.display().to_string());
    let relay = script(dir.path(), "relay-vmm", &relay);
    let mut p = plan(dir.path(), &relay);
    p.agent_timeout = Duration::from_secs(30);
    let share_dir = Path::new("/run/sandbox-share");
    let had_share_dir = share_dir.exists();
    let e = Sandbox::create(&p).unwrap_err();
    if !had_share_dir {
        let _ = std::fs::remove_dir(share_dir);
    }
    assert!(
        matches!(e, SandboxError::Agent { what, .. } if what.contains("set up the sandbox")),
        "{e}"
    );
    assert_nothing_left(dir.path(), "the agent refuses the sandbox");
}
