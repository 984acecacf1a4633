//! The host side of a sandbox's virtio-fs shares: directories that a virtiofsd each serves,
//! into which containers' rootfs and bind-mount sources are bind-mounted while the VM runs.
//! There are two ([`ShareKind`]), one per cache policy: the guest may keep what it read of
//! a rootfs across opens, but must see host writes into bind mounts.
//!
//! `/` is a private mount on many hosts: a bind made under a share after virtiofsd
//! started (virtiofsd sandboxes itself in a mount namespace of its own) would never reach
//! it. So each share is first made a bind mount of itself with shared propagation; binds
//! made under it later propagate into virtiofsd's copy.

use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};

use crate::virtiofsd::Cache;

/// The sandbox's two virtio-fs shares. They differ in who changes their files while the
/// sandbox runs, and so in how long the guest may keep what it read of them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ShareKind {
    /// The containers' root filesystems. Only the guest changes them (an image's layers
    /// never change; the writable layer above them is the container's), so the guest keeps
    /// their pages across opens ([`Cache::Always`]): a second exec of a binary reads
    /// nothing from the host. A change made on the host to a running container's rootfs
    /// may go unseen in the guest.
    #[default]
    Rootfs,
    /// The sources of bind mounts (volumes, ConfigMaps, `/etc/hosts`): the host changes
    /// them while containers run, and the guest sees it ([`Cache::Auto`]).
    Volumes,
}

impl ShareKind {
    /// Every share a sandbox has, in the order of its VM's virtio-fs devices.
    pub const ALL: [ShareKind; 2] = [ShareKind::Rootfs, ShareKind::Volumes];

    /// The share's virtio-fs tag.
    pub fn tag(self) -> &'static str {
        match self {
            ShareKind::Rootfs => "sandbox",
            ShareKind::Volumes => "sandbox-volumes",
        }
    }

    /// Where the agent mounts the share in the guest.
    pub fn guest_dir(self) -> &'static str {
        match self {
            ShareKind::Rootfs => "/run/sandbox-share",
            ShareKind::Volumes => "/run/sandbox-volumes",
        }
    }

    /// How virtiofsd lets the guest cache the share's files.
    pub fn cache(self) -> Cache {
        match self {
            ShareKind::Rootfs => Cache::Always,
            ShareKind::Volumes => Cache::Auto,
        }
    }
}

/// Errors preparing the share or binding into it.
#[derive(Debug, thiserror::Error)]
pub enum ShareError {
    #[error("cannot {what} {path}: {err}")]
    Io {
        what: &'static str,
        path: PathBuf,
        err: std::io::Error,
    },
    #[error("cannot {what} {path}: {err}")]
    Mount {
        what: &'static str,
        path: PathBuf,
        err: nix::Error,
    },
    #[error("bind source {0} is not a file or directory")]
    BadSource(PathBuf),
    #[error("share path {0} leaves the share")]
    Escape(PathBuf),
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> ShareError {
    let path = path.to_path_buf();
    move |err| ShareError::Io { what, path, err }
}

fn mnt(what: &'static str, path: &Path) -> impl FnOnce(nix::Error) -> ShareError {
    let path = path.to_path_buf();
    move |err| ShareError::Mount { what, path, err }
}

/// One host path the sandbox bind-mounts into its share before the agent sees it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HostBind {
    /// The host path (the bundle's rootfs, or a bind mount's source).
    pub src: PathBuf,
    /// The share it goes into.
    #[serde(default)]
    pub share: ShareKind,
    /// Where it goes, relative to the share's root.
    pub share_rel: PathBuf,
    /// A regular file (else a directory).
    pub is_file: bool,
    /// Made read-only on the host too (the spec's `ro`), so even a guest kernel cannot
    /// write through it.
    pub read_only: bool,
    /// `rbind`: submounts come along.
    pub recursive: bool,
}

/// A prepared share; [`Share::teardown`] (or drop) unmounts everything under it.
#[derive(Debug)]
pub struct Share {
    root: PathBuf,
    torn_down: bool,
}

impl Share {
    /// Makes `root` (created if needed) a shared bind mount of itself.
    pub fn prepare(root: &Path) -> Result<Share, ShareError> {
        fs::create_dir_all(root).map_err(io("create share directory", root))?;
        let share = Share {
            root: root.to_path_buf(),
            torn_down: false,
        };
        mount(
            Some(root),
            root,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(mnt("bind-mount the share", root))?;
        mount(
            None::<&str>,
            root,
            None::<&str>,
            MsFlags::MS_SHARED,
            None::<&str>,
        )
        .map_err(mnt("make shared", root))?;
        Ok(share)
    }

    /// The share's host directory (what virtiofsd serves).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The host path of `rel`, refusing anything that would leave the share.
    fn path_of(&self, rel: &Path) -> Result<PathBuf, ShareError> {
        use std::path::Component;
        if rel.components().any(|c| !matches!(c, Component::Normal(_))) {
            return Err(ShareError::Escape(rel.to_path_buf()));
        }
        Ok(self.root.join(rel))
    }

    /// Bind-mounts `b.src` at its place in the share (read-only on the host too if `b`
    /// says so).
    pub fn bind(&self, b: &HostBind) -> Result<(), ShareError> {
        let target = self.path_of(&b.share_rel)?;
        let parent = target.parent().unwrap_or(&self.root);
        fs::create_dir_all(parent).map_err(io("create", parent))?;
        if b.is_file {
            fs::File::create(&target).map_err(io("create bind target", &target))?;
        } else {
            fs::create_dir_all(&target).map_err(io("create bind target", &target))?;
        }
        let mut flags = MsFlags::MS_BIND;
        if b.recursive {
            flags |= MsFlags::MS_REC;
        }
        mount(Some(&b.src), &target, None::<&str>, flags, None::<&str>)
            .map_err(mnt("bind-mount into the share", &b.src))?;
        if b.read_only {
            let ro = MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY;
            mount(None::<&str>, &target, None::<&str>, ro, None::<&str>)
                .map_err(mnt("make read-only", &target))?;
        }
        Ok(())
    }

    /// Unmounts and removes everything under `rel` (a container's directory).
    pub fn remove(&self, rel: &Path) -> Result<(), ShareError> {
        let dir = self.path_of(rel)?;
        unmount_under(&dir, false)?;
        match fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io("remove", &dir)(e)),
            _ => Ok(()),
        }
    }

    /// Unmounts every bind under the share and the share itself.
    pub fn teardown(mut self) -> Result<(), ShareError> {
        self.torn_down = true;
        unmount_under(&self.root, true).map(|_| ())
    }
}

impl Drop for Share {
    fn drop(&mut self) {
        if !self.torn_down {
            if let Err(e) = unmount_under(&self.root, true) {
                log::warn!("cannot unmount share {}: {e}", self.root.display());
            }
        }
    }
}

/// Decodes the octal escapes (`\040` for a space) of a mountinfo path.
fn unescape(field: &str) -> PathBuf {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match (b[i], octal) {
            (b'\\', Some(d)) if d[0] <= b'3' => {
                out.push((d[0] - b'0') << 6 | (d[1] - b'0') << 3 | (d[2] - b'0'));
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    PathBuf::from(OsStr::from_bytes(&out))
}

/// The mount points listed in a mountinfo text (field 5 of each line).
pub fn mount_points(mountinfo: &str) -> Vec<PathBuf> {
    mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape)
        .collect()
}

/// Detaches every mount at or below `dir` (with `include_dir`) or strictly below it,
/// deepest first; returns how many were detached. Works after a crash too: nothing but
/// `/proc/self/mountinfo` is consulted.
pub fn unmount_under(dir: &Path, include_dir: bool) -> Result<usize, ShareError> {
    let mut total = 0;
    // Stacked mounts on one point need one pass each.
    for _ in 0..64 {
        let info = fs::read_to_string("/proc/self/mountinfo")
            .map_err(io("read", Path::new("/proc/self/mountinfo")))?;
        let mut points: Vec<PathBuf> = mount_points(&info)
            .into_iter()
            .filter(|p| p.starts_with(dir) && (include_dir || p != dir))
            .collect();
        if points.is_empty() {
            return Ok(total);
        }
        points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        points.dedup();
        for p in points {
            match umount2(&p, MntFlags::MNT_DETACH) {
                Ok(()) => total += 1,
                Err(nix::Error::EINVAL | nix::Error::ENOENT) => {}
                Err(e) => return Err(mnt("unmount", &p)(e)),
            }
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_points_are_unescaped() {
        let info = "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n\
                    90 22 0:5 / /run/a\\040b rw - tmpfs tmpfs rw\n";
        assert_eq!(
            mount_points(info),
            vec![PathBuf::from("/"), PathBuf::from("/run/a b")]
        );
        assert_eq!(unescape("x\\134y"), PathBuf::from("x\\y"));
        assert_eq!(unescape("tail\\04"), PathBuf::from("tail\\04"));
    }

    #[test]
    fn share_paths_cannot_escape() {
        let s = Share {
            root: "/tmp/never-mounted".into(),
            torn_down: true,
        };
        assert!(matches!(
            s.path_of(Path::new("c1/../../etc")),
            Err(ShareError::Escape(_))
        ));
        assert!(matches!(
            s.path_of(Path::new("/etc")),
            Err(ShareError::Escape(_))
        ));
        assert_eq!(
            s.path_of(Path::new("c1/mounts/0")).unwrap(),
            PathBuf::from("/tmp/never-mounted/c1/mounts/0")
        );
    }

    /// Root only: a real shared bind, a ro file bind and a rw dir bind, then teardown.
    #[test]
    fn binds_are_live_read_only_where_asked_and_torn_down() {
        assert!(
            nix::unistd::geteuid().is_root(),
            "this test needs root (mounts)"
        );
        let base = std::env::temp_dir().join(format!("svm-share-{}", std::process::id()));
        let _ = fs::remove_dir_all(&base);
        fs::create_dir_all(base.join("src/dir")).unwrap();
        fs::write(base.join("src/file"), "one").unwrap();
        let share = Share::prepare(&base.join("share")).unwrap();
        share
            .bind(&HostBind {
                src: base.join("src/file"),
                share: ShareKind::Volumes,
                share_rel: "c1/mounts/0".into(),
                is_file: true,
                read_only: true,
                recursive: false,
            })
            .unwrap();
        share
            .bind(&HostBind {
                src: base.join("src/dir"),
                share: ShareKind::Volumes,
                share_rel: "c1/mounts/1".into(),
                is_file: false,
                read_only: false,
                recursive: true,
            })
            .unwrap();
        let root = share.root().to_path_buf();
        assert_eq!(fs::read_to_string(root.join("c1/mounts/0")).unwrap(), "one");
        let e = fs::write(root.join("c1/mounts/0"), "two").unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EROFS));
        fs::write(root.join("c1/mounts/1/new"), "x").unwrap();
        assert_eq!(fs::read_to_string(base.join("src/dir/new")).unwrap(), "x");
        share.remove(Path::new("c1")).unwrap();
        assert!(!root.join("c1").exists());
        share.teardown().unwrap();
        let info = fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(!mount_points(&info).iter().any(|p| p.starts_with(&base)));
        assert_eq!(fs::read_to_string(base.join("src/file")).unwrap(), "one");
        fs::remove_dir_all(&base).unwrap();
    }
}
