//! OCI bundles for the runtime tests: a busybox rootfs (Debian's static /bin/busybox plus
//! applet symlinks) and a config from `sandbox-vm spec`, edited.

use std::path::{Path, PathBuf};
use std::process::Command;

pub const APPLETS: &[&str] = &[
    "sh", "uname", "ps", "echo", "cat", "sleep", "true", "ls", "dmesg", "grep",
];

/// Makes `<dir>/rootfs` with busybox and `<dir>/config.json` running `args`.
pub fn busybox_bundle(dir: &Path, args: &[&str]) -> PathBuf {
    let _ = std::fs::remove_dir_all(dir);
    let bin = dir.join("rootfs/bin");
    std::fs::create_dir_all(&bin).unwrap();
    for d in ["proc", "sys", "dev", "tmp", "etc"] {
        std::fs::create_dir_all(dir.join("rootfs").join(d)).unwrap();
    }
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .find(|p| Path::new(p).is_file())
        .expect("install busybox-static");
    std::fs::copy(busybox, bin.join("busybox")).unwrap();
    for a in APPLETS {
        std::os::unix::fs::symlink("busybox", bin.join(a)).unwrap();
    }
    let st = Command::new(env!("CARGO_BIN_EXE_sandbox-vm"))
        .args(["spec", "--bundle"])
        .arg(dir)
        .status()
        .unwrap();
    assert!(st.success());
    let path = dir.join("config.json");
    let mut c: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    c["process"]["terminal"] = false.into();
    c["process"]["args"] = args.iter().map(|a| serde_json::Value::from(*a)).collect();
    std::fs::write(&path, serde_json::to_string_pretty(&c).unwrap()).unwrap();
    dir.to_path_buf()
}
