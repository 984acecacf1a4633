//! Host faults that need no guest: a state directory on a full filesystem.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_sandbox-vm");

fn mount_tmpfs(dir: &Path, size: &str) {
    let st = Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
        .arg(dir)
        .status()
        .unwrap();
    assert!(st.success(), "cannot mount a tmpfs (needs root)");
}

#[test]
fn a_state_directory_on_a_full_tmpfs_gives_a_clear_error_and_leaves_nothing() {
    let d = test_support::fresh_dir("svm-fulltmpfs");
    let root = d.join("root");
    std::fs::create_dir_all(&root).unwrap();
    let bundle = d.join("bundle");
    std::fs::create_dir_all(bundle.join("rootfs")).unwrap();
    std::fs::write(
        bundle.join("config.json"),
        r#"{"ociVersion":"1.0.2","process":{"args":["sh"],"cwd":"/","user":{"uid":0,"gid":0}},"root":{"path":"rootfs"},"linux":{"namespaces":[{"type":"mount"}]}}"#,
    )
    .unwrap();
    mount_tmpfs(&root, "64k");
    // Fill it: the write stops with ENOSPC.
    let _ = std::fs::write(root.join("filler"), vec![0u8; 1 << 20]);
    let start = Instant::now();
    let out = Command::new(BIN)
        .arg("--root")
        .arg(&root)
        .args(["create", "--bundle"])
        .arg(&bundle)
        .arg("full1")
        // Artifacts that exist: the failure must be the full filesystem's.
        .env("SANDBOX_VM_KERNEL", "/bin/sh")
        .env("SANDBOX_VM_AGENT_DISK", "/bin/sh")
        .env("SANDBOX_VM_VIRTIOFSD", "/bin/true")
        .output()
        .unwrap();
    let took = start.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let left = root.join("full1").exists();
    let _ = Command::new("umount").arg(&root).status();
    let _ = std::fs::remove_dir_all(&d);
    assert!(!out.status.success());
    assert!(took < Duration::from_secs(5), "took {took:?}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("No space left on device"), "{stderr}");
    assert!(
        stderr.contains(root.to_str().unwrap()),
        "names the path: {stderr}"
    );
    assert!(!left, "the state directory was left behind");
}
