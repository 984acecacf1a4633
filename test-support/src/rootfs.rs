//! Busybox root filesystems and OCI bundles made from them: Debian's static busybox
//! (`apt-get install busybox-static`) plus applet symlinks.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The static busybox binary on this host; fails the test saying how to install it.
pub fn busybox() -> &'static Path {
    ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.is_file())
        .expect("busybox is missing: apt-get install busybox-static")
}

/// Fills `root` with the usual top directories, `bin/busybox` and a link per applet.
pub fn busybox_rootfs(root: &Path, applets: &[&str]) {
    for d in ["bin", "proc", "sys", "dev", "tmp", "etc", "root"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy(busybox(), root.join("bin/busybox")).unwrap();
    add_applets(root, applets);
}

/// Links more applets in a busybox rootfs (one already there is left alone).
pub fn add_applets(root: &Path, applets: &[&str]) {
    for a in applets {
        let _ = std::os::unix::fs::symlink("busybox", root.join("bin").join(a));
    }
}

/// The applets a bundle's rootfs gets.
pub const BUNDLE_APPLETS: &[&str] = &[
    "sh", "uname", "ps", "echo", "cat", "sleep", "true", "ls", "dmesg", "grep",
];

/// Makes the bundle `dir` (emptied first): `rootfs` with busybox and [`BUNDLE_APPLETS`],
/// and the `config.json` of `<runtime> spec` (the `sandbox-vm` binary's path) running
/// `args` without a terminal. Returns `dir`.
pub fn busybox_bundle(runtime: &str, dir: &Path, args: &[&str]) -> PathBuf {
    let _ = std::fs::remove_dir_all(dir);
    busybox_rootfs(&dir.join("rootfs"), BUNDLE_APPLETS);
    let st = Command::new(runtime)
        .args(["spec", "--bundle"])
        .arg(dir)
        .status()
        .unwrap();
    assert!(st.success(), "{runtime} spec");
    edit_config(dir, |c| {
        c["process"]["terminal"] = false.into();
        c["process"]["args"] = args.iter().map(|a| serde_json::Value::from(*a)).collect();
    });
    dir.to_path_buf()
}

/// The bundle's `config.json`, parsed.
pub fn read_config(bundle: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(bundle.join("config.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// Changes the bundle's `config.json` with `f`.
pub fn edit_config(bundle: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let mut c = read_config(bundle);
    f(&mut c);
    std::fs::write(
        bundle.join("config.json"),
        serde_json::to_string_pretty(&c).unwrap(),
    )
    .unwrap();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TempDir;

    #[test]
    fn a_rootfs_runs_its_applets() {
        let d = TempDir::new("ts-rootfs");
        busybox_rootfs(&d, &["echo"]);
        add_applets(&d, &["echo", "true"]);
        // Another test thread forking while busybox was being written holds a copy of the
        // write fd until its exec: ETXTBSY for a moment. Retry, as the kernel asks.
        let out = (0..50)
            .find_map(
                |_| match Command::new(d.join("bin/echo")).arg("hi").output() {
                    Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) => {
                        std::thread::sleep(std::time::Duration::from_millis(20));
                        None
                    }
                    r => Some(r.unwrap()),
                },
            )
            .expect("bin/echo stayed busy (ETXTBSY) for a second");
        assert_eq!(out.stdout, b"hi\n");
        assert!(d.join("bin/true").exists() && d.join("proc").is_dir());
    }

    #[test]
    fn edit_config_keeps_what_it_does_not_touch() {
        let d = TempDir::new("ts-config");
        std::fs::write(d.join("config.json"), r#"{"a": 1, "b": {"c": 2}}"#).unwrap();
        edit_config(&d, |c| c["b"]["c"] = 3.into());
        assert_eq!(read_config(&d), serde_json::json!({"a": 1, "b": {"c": 3}}));
    }
}
