//! The rootfs mounts containerd passes in Create (typically one overlay from the
//! snapshotter, or a bind for the native snapshotter): mounted on the host at
//! `bundle/rootfs`, from where the sandbox binds the directory into its virtio-fs share.

use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};

/// Errors mounting or unmounting a container's rootfs.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("cannot mount the {typ} rootfs on {target}: {err}")]
    Mount {
        typ: String,
        target: PathBuf,
        err: nix::Error,
    },
    #[error("cannot unmount the rootfs at {target}: {err}")]
    Unmount { target: PathBuf, err: nix::Error },
    #[error("cannot create the rootfs directory {target}: {err}")]
    Mkdir {
        target: PathBuf,
        err: std::io::Error,
    },
    #[error("more than one rootfs mount is not supported (got {0})")]
    Several(usize),
}

/// One mount as containerd describes it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RootfsMount {
    pub typ: String,
    pub source: String,
    pub options: Vec<String>,
}

/// Mount flags and the filesystem's data string from mount(8)-style options.
pub fn parse_options(options: &[String]) -> (MsFlags, String) {
    let mut flags = MsFlags::empty();
    let mut data = Vec::new();
    for o in options {
        match o.as_str() {
            "ro" => flags |= MsFlags::MS_RDONLY,
            "rw" | "defaults" => {}
            "nosuid" => flags |= MsFlags::MS_NOSUID,
            "nodev" => flags |= MsFlags::MS_NODEV,
            "noexec" => flags |= MsFlags::MS_NOEXEC,
            "noatime" => flags |= MsFlags::MS_NOATIME,
            "relatime" => flags |= MsFlags::MS_RELATIME,
            "bind" => flags |= MsFlags::MS_BIND,
            "rbind" => flags |= MsFlags::MS_BIND | MsFlags::MS_REC,
            other => data.push(other),
        }
    }
    (flags, data.join(","))
}

/// Mounts `m` on `target` (created if missing).
pub fn mount_rootfs(m: &RootfsMount, target: &Path) -> Result<(), MountError> {
    std::fs::create_dir_all(target).map_err(|err| MountError::Mkdir {
        target: target.into(),
        err,
    })?;
    let (flags, data) = parse_options(&m.options);
    let err = |err| MountError::Mount {
        typ: m.typ.clone(),
        target: target.into(),
        err,
    };
    let fstype = (!flags.contains(MsFlags::MS_BIND)).then_some(m.typ.as_str());
    let data = (!data.is_empty()).then_some(data.as_str());
    mount(Some(m.source.as_str()), target, fstype, flags, data).map_err(err)?;
    // A read-only bind needs a remount: MS_RDONLY is ignored on the first bind call.
    if flags.contains(MsFlags::MS_BIND | MsFlags::MS_RDONLY) {
        let ro = MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY;
        mount(None::<&str>, target, None::<&str>, ro, None::<&str>).map_err(err)?;
    }
    Ok(())
}

/// Mounts the single rootfs mount of a Create request, if there is one; returns whether
/// something was mounted.
pub fn mount_all(mounts: &[RootfsMount], target: &Path) -> Result<bool, MountError> {
    match mounts {
        [] => Ok(false),
        [m] => mount_rootfs(m, target).map(|()| true),
        more => Err(MountError::Several(more.len())),
    }
}

/// Detaches whatever is mounted at `target` (recursively, lazily: a copy thread may still
/// hold a file open); nothing mounted is fine.
pub fn unmount_rootfs(target: &Path) -> Result<(), MountError> {
    match umount2(target, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => Ok(()),
        Err(err) => Err(MountError::Unmount {
            target: target.into(),
            err,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(o: &[&str]) -> Vec<String> {
        o.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn overlay_options_become_data_and_flags() {
        let (flags, data) = parse_options(&opts(&[
            "index=off",
            "workdir=/w",
            "upperdir=/u",
            "lowerdir=/l1:/l2",
            "nosuid",
        ]));
        assert_eq!(flags, MsFlags::MS_NOSUID);
        assert_eq!(data, "index=off,workdir=/w,upperdir=/u,lowerdir=/l1:/l2");
    }

    #[test]
    fn bind_options_are_flags_only() {
        let (flags, data) = parse_options(&opts(&["rbind", "ro"]));
        assert_eq!(
            flags,
            MsFlags::MS_BIND | MsFlags::MS_REC | MsFlags::MS_RDONLY
        );
        assert_eq!(data, "");
        let (flags, _) = parse_options(&opts(&["bind", "rw"]));
        assert_eq!(flags, MsFlags::MS_BIND);
    }

    #[test]
    fn several_rootfs_mounts_are_refused_and_none_is_fine() {
        let m = RootfsMount::default();
        let t = Path::new("/nonexistent/rootfs");
        assert!(matches!(
            mount_all(&[m.clone(), m], t),
            Err(MountError::Several(2))
        ));
        assert!(!mount_all(&[], t).unwrap());
    }
}
