//! `Sandbox::create` failing at each of its host-side steps leaves nothing behind: no
//! process, no mount under the state directory. The VMM is a fake (a program that exits,
//! or one that opens its control socket and never lets an agent answer), virtiofsd the
//! real one, so the share's mounts and the helpers' teardown are the real ones.
//!
//! Needs root (the share is a bind mount) and virtiofsd (`scripts/setup.sh` installs it).

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

fn spec() -> Spec {
    serde_json::from_value(serde_json::json!({
        "ociVersion": "1.0.2",
        "process": {"args": ["true"], "cwd": "/", "user": {"uid": 0, "gid": 0}},
        "root": {"path": "rootfs"},
    }))
    .unwrap()
}

/// The plan of a sandbox in `dir` that starts `vmm`, with the host's virtiofsd.
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
    let state = dir.join("state");
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
}
