//! The OCI commands without a VM: bundle validation errors (one line, exit 1, nothing left
//! behind, the JSON log's last line), `spec`, `features`, `state`/`delete` of a container
//! whose monitor crashed, and unknown ids.

use std::path::Path;
use std::process::{Command, Output};

use test_support::rootfs::{busybox_bundle, edit_config};
use test_support::TempDir;

const BIN: &str = env!("CARGO_BIN_EXE_sandbox-vm");

fn scratch(name: &str) -> TempDir {
    TempDir::named(&format!("svm-cli-oci-{name}"))
}

fn runtime(root: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .env("SANDBOX_VM_KERNEL", "/nonexistent/vmlinux")
        .env("SANDBOX_VM_INITRD", "/nonexistent/initrd")
        .arg("--root")
        .arg(root)
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn bad_bundles_fail_with_one_line_and_leave_nothing() {
    let dir = scratch("bad");
    let root = dir.join("root");
    let b = busybox_bundle(BIN, &dir.join("b"), &["true"]);
    let bs = b.to_str().unwrap();
    let log = dir.join("log.json");
    type Breaker = Box<dyn Fn(&Path)>;
    let cases: Vec<(&str, Breaker, &str)> = vec![
        (
            "version",
            Box::new(|b| edit_config(b, |c| c["ociVersion"] = "2.0.0".into())),
            "unsupported ociVersion",
        ),
        (
            "memory",
            Box::new(|b| {
                edit_config(b, |c| {
                    c["linux"]["resources"] = serde_json::json!({"memory": {"limit": 1 << 20}})
                })
            }),
            "too small",
        ),
        (
            "bindsource",
            Box::new(|b| {
                edit_config(b, |c| {
                    c["mounts"].as_array_mut().unwrap().push(serde_json::json!({"destination": "/data", "type": "bind", "source": "/nonexistent/dir", "options": ["rbind"]}))
                })
            }),
            "must be an existing file or directory",
        ),
        (
            "json",
            Box::new(|b| std::fs::write(b.join("config.json"), "{oops").unwrap()),
            "invalid",
        ),
        (
            "rootfs",
            Box::new(|b| std::fs::rename(b.join("rootfs"), b.join("gone")).unwrap()),
            "rootfs",
        ),
        (
            "config",
            Box::new(|b| std::fs::remove_file(b.join("config.json")).unwrap()),
            "no config.json",
        ),
        (
            "kernel",
            Box::new(|_| ()),
            "guest kernel /nonexistent/vmlinux not found",
        ),
    ];
    for (name, break_it, want) in cases {
        let saved = std::fs::read(b.join("config.json")).ok();
        break_it(&b);
        let out = Command::new(BIN)
            // The bundle's own errors come before the host's (a missing kernel).
            .env("SANDBOX_VM_KERNEL", "/nonexistent/vmlinux")
            .env("SANDBOX_VM_INITRD", "/nonexistent/initrd")
            .arg("--root")
            .arg(&root)
            .arg("--log")
            .arg(&log)
            .args(["--log-format", "json", "create", "--bundle", bs, "c1"])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{name}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{name}: {stderr}");
        assert!(stderr.contains(want), "{name}: {stderr}");
        let text = std::fs::read_to_string(&log).unwrap();
        let last: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
        assert_eq!(last["level"], "error", "{name}");
        assert!(
            last["msg"].as_str().unwrap().contains(want),
            "{name}: {last}"
        );
        assert!(!root.join("c1").exists(), "{name}: state left behind");
        if let Some(s) = saved {
            std::fs::write(b.join("config.json"), s).unwrap();
        }
        if b.join("gone").exists() {
            std::fs::rename(b.join("gone"), b.join("rootfs")).unwrap();
        }
    }
}

#[test]
fn spec_features_and_unknown_ids() {
    let dir = scratch("misc");
    let root = dir.join("root");
    let out = runtime(&root, &["spec", "--bundle", dir.to_str().unwrap()]);
    assert!(out.status.success());
    let c: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    assert_eq!(c["process"]["args"][0], "sh");
    assert_eq!(c["root"]["path"], "rootfs");
    let again = runtime(&root, &["spec", "--bundle", dir.to_str().unwrap()]);
    assert_eq!(again.status.code(), Some(1), "spec must not overwrite");

    let f: serde_json::Value =
        serde_json::from_slice(&runtime(&root, &["features"]).stdout).unwrap();
    assert!(f["ociVersionMin"].is_string() && f["ociVersionMax"].is_string());

    for cmd in [
        &["state", "nope"][..],
        &["start", "nope"],
        &["delete", "nope"],
        &["kill", "nope", "KILL"],
    ] {
        let out = runtime(&root, cmd);
        assert_eq!(out.status.code(), Some(1), "{cmd:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("does not exist"),
            "{cmd:?}"
        );
    }
}

#[test]
fn crashed_monitor_is_stopped_and_delete_cleans_up() {
    let dir = scratch("crash");
    let root = dir.join("root");
    let cdir = root.join("c9");
    std::fs::create_dir_all(&cdir).unwrap();
    // A monitor that died: a pid that no longer exists.
    let mut child = Command::new("true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    std::fs::write(
        cdir.join("state.json"),
        serde_json::json!({"id": "c9", "bundle": "/b", "status": "running", "pid": pid,
            "pid_start": 1, "created": 0, "annotations": {}, "exit_status": null,
            "process": null})
        .to_string(),
    )
    .unwrap();
    std::fs::write(cdir.join("rootfs.img"), b"img").unwrap();
    let out = runtime(&root, &["state", "c9"]);
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(s["status"], "stopped");
    let list = String::from_utf8_lossy(&runtime(&root, &["list"]).stdout).to_string();
    assert!(list.contains("c9") && list.contains("stopped"), "{list}");
    assert!(runtime(&root, &["delete", "c9"]).status.success());
    assert!(!cdir.exists());
}
