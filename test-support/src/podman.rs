//! Images for podman without a registry: a busybox rootfs tarball brought in with
//! `podman import`.

use std::process::Command;

use crate::cmd::run_ok;
use crate::TempDir;

/// An imported image; removed from podman (and its directory from the host) when dropped.
pub struct PodmanImage {
    /// `localhost/<name>`.
    pub tag: String,
    /// A scratch directory of the image's own (the rootfs is in `rootfs`), for the test's
    /// other files too.
    pub dir: TempDir,
}

impl PodmanImage {
    /// Imports a busybox rootfs with `applets` as `localhost/<name>`, after `prepare` has
    /// added what else the test needs to it.
    pub fn import(name: &str, applets: &[&str], prepare: impl FnOnce(&std::path::Path)) -> Self {
        assert!(
            Command::new("podman").arg("--version").output().is_ok(),
            "podman is not installed (apt-get install podman)"
        );
        let dir = TempDir::named(&format!("svm-e2e-{name}"));
        let rootfs = dir.join("rootfs");
        crate::rootfs::busybox_rootfs(&rootfs, applets);
        prepare(&rootfs);
        let tar = dir.join("rootfs.tar");
        let (rootfs, tar) = (rootfs.to_str().unwrap(), tar.to_str().unwrap());
        run_ok(&["tar", "-C", rootfs, "-cf", tar, "."]);
        let tag = format!("localhost/{name}");
        run_ok(&["podman", "import", "--quiet", tar, &tag]);
        PodmanImage { tag, dir }
    }
}

impl Drop for PodmanImage {
    fn drop(&mut self) {
        let _ = Command::new("podman")
            .args(["rmi", "-f", &self.tag])
            .output();
    }
}
