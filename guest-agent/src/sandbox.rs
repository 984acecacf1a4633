//! Sandbox-wide guest resources: the virtio-fs shares the host asks for, and finding a
//! virtio-blk disk by its serial (the VMM's disk id, which the guest reads from
//! `/sys/block/<dev>/serial`) instead of by attach order.

use std::fs;
use std::io;
use std::path::{Component, Path, PathBuf};

use agent_protocol::{ShareMount, MAX_DISK_SERIAL_LEN, MAX_SHARE_TAG_LEN};
use nix::mount::{mount, MsFlags};

/// Share and disk failures.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// A share the request describes badly.
    #[error("invalid share {tag:?} at {mount_point:?}: {why}")]
    BadShare {
        /// Tag.
        tag: String,
        /// Mount point.
        mount_point: String,
        /// What is wrong.
        why: &'static str,
    },
    /// A share clashes with one mounted earlier.
    #[error("share {tag:?} at {mount_point:?} clashes with share {other_tag:?} mounted at {other_mount_point:?}")]
    Clash {
        /// Tag.
        tag: String,
        /// Mount point.
        mount_point: String,
        /// The earlier share's tag.
        other_tag: String,
        /// The earlier share's mount point.
        other_mount_point: String,
    },
    /// mkdir or mount failed.
    #[error("cannot mount virtio-fs share {tag:?} on {mount_point}: {cause}{hint}")]
    Mount {
        /// Tag.
        tag: String,
        /// Mount point.
        mount_point: String,
        /// Cause.
        cause: io::Error,
        /// What to check.
        hint: &'static str,
    },
    /// A serial that cannot be a virtio-blk serial.
    #[error("invalid disk serial {0:?}: use 1-{MAX_DISK_SERIAL_LEN} bytes")]
    BadSerial(String),
    /// No disk answers to the serial.
    #[error("no disk with serial {serial:?} in {dir} (disks seen: {seen}); is the disk attached with that id?")]
    NoDisk {
        /// Wanted serial.
        serial: String,
        /// Where we looked.
        dir: String,
        /// `name=serial` of the disks found.
        seen: String,
    },
}

/// Checks a share request: a tag of 1-36 bytes without NUL, an absolute `..`-free mount point.
pub fn validate_share(s: &ShareMount) -> Result<(), SandboxError> {
    let bad = |why| SandboxError::BadShare {
        tag: s.tag.clone(),
        mount_point: s.mount_point.clone(),
        why,
    };
    if s.tag.is_empty() || s.tag.len() > MAX_SHARE_TAG_LEN || s.tag.contains('\0') {
        return Err(bad("the tag must be 1-36 bytes"));
    }
    let mp = Path::new(&s.mount_point);
    if !mp.is_absolute()
        || mp.components().any(|c| c == Component::ParentDir)
        || s.mount_point.contains('\0')
        || mp == Path::new("/")
    {
        return Err(bad(
            "the mount point must be an absolute path below / without '..'",
        ));
    }
    Ok(())
}

/// The shares of `wanted` not yet in `mounted`; an error if one reuses a mounted share's tag
/// or mount point differently.
pub fn new_shares<'a>(
    wanted: &'a [ShareMount],
    mounted: &[ShareMount],
) -> Result<Vec<&'a ShareMount>, SandboxError> {
    let mut fresh: Vec<&ShareMount> = vec![];
    for s in wanted {
        validate_share(s)?;
        let mut seen = mounted.iter().chain(fresh.iter().copied());
        match seen.find(|m| m.tag == s.tag || m.mount_point == s.mount_point) {
            Some(m) if m == s => continue,
            Some(m) => {
                return Err(SandboxError::Clash {
                    tag: s.tag.clone(),
                    mount_point: s.mount_point.clone(),
                    other_tag: m.tag.clone(),
                    other_mount_point: m.mount_point.clone(),
                })
            }
            None => fresh.push(s),
        }
    }
    Ok(fresh)
}

/// `mount -t virtiofs TAG MOUNT_POINT`, creating the mount point.
pub fn mount_share(s: &ShareMount) -> Result<(), SandboxError> {
    let fail = |cause: io::Error, hint| SandboxError::Mount {
        tag: s.tag.clone(),
        mount_point: s.mount_point.clone(),
        cause,
        hint,
    };
    fs::create_dir_all(&s.mount_point).map_err(|e| fail(e, ""))?;
    mount(
        Some(s.tag.as_str()),
        s.mount_point.as_str(),
        Some("virtiofs"),
        MsFlags::empty(),
        None::<&str>,
    )
    .map_err(|e| {
        let hint = match e {
            nix::errno::Errno::ENODEV => {
                "; the guest kernel has no virtiofs support (CONFIG_VIRTIO_FS)"
            }
            nix::errno::Errno::ENOENT | nix::errno::Errno::EINVAL => {
                "; is a virtio-fs device with this tag attached, and its backend running?"
            }
            _ => "",
        };
        fail(e.into(), hint)
    })
}

/// The device node of the disk whose `<sys_block>/<name>/serial` is `serial`.
pub fn disk_by_serial(sys_block: &Path, serial: &str) -> Result<PathBuf, SandboxError> {
    if serial.is_empty() || serial.len() > MAX_DISK_SERIAL_LEN || serial.contains('\0') {
        return Err(SandboxError::BadSerial(serial.into()));
    }
    let mut seen = vec![];
    let entries = fs::read_dir(sys_block).into_iter().flatten().flatten();
    let mut names: Vec<String> = entries
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    names.sort();
    for name in names {
        // virtio-blk pads the 20-byte id with NULs; sysfs prints it up to the first one.
        let Ok(raw) = fs::read(sys_block.join(&name).join("serial")) else {
            continue;
        };
        let got = String::from_utf8_lossy(&raw);
        let got = got.trim_end_matches(['\0', '\n', ' ']);
        if got == serial {
            return Ok(Path::new("/dev").join(name));
        }
        seen.push(format!("{name}={got}"));
    }
    Err(SandboxError::NoDisk {
        serial: serial.into(),
        dir: sys_block.display().to_string(),
        seen: if seen.is_empty() {
            "none".into()
        } else {
            seen.join(", ")
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn share(tag: &str, mp: &str) -> ShareMount {
        ShareMount {
            tag: tag.into(),
            mount_point: mp.into(),
        }
    }

    #[test]
    fn share_checks() {
        validate_share(&share("sandbox", "/run/sandbox-fs")).unwrap();
        for bad in [
            share("", "/x"),
            share(&"t".repeat(37), "/x"),
            share("t", "rel"),
            share("t", "/a/../b"),
            share("t", "/"),
        ] {
            assert!(
                matches!(validate_share(&bad), Err(SandboxError::BadShare { .. })),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn shares_are_mounted_once_and_clashes_refused() {
        let a = share("sandbox", "/run/a");
        let mounted = vec![a.clone()];
        let want = [a.clone(), share("two", "/run/b"), share("two", "/run/b")];
        let fresh = new_shares(&want, &mounted).unwrap();
        assert_eq!(fresh, [&share("two", "/run/b")]);
        let e = new_shares(&[share("sandbox", "/run/c")], &mounted).unwrap_err();
        assert!(matches!(e, SandboxError::Clash { .. }), "{e}");
        assert!(new_shares(&[share("x", "/run/a")], &mounted).is_err());
    }

    #[test]
    fn disks_are_found_by_serial() {
        let dir = std::env::temp_dir().join(format!("sysblock-{}", std::process::id()));
        for (name, serial) in [("vda", &b"agent"[..]), ("vdb", b"rootfs\0\0\0")] {
            fs::create_dir_all(dir.join(name)).unwrap();
            fs::write(dir.join(name).join("serial"), serial).unwrap();
        }
        fs::create_dir_all(dir.join("loop0")).unwrap();
        assert_eq!(
            disk_by_serial(&dir, "rootfs").unwrap(),
            Path::new("/dev/vdb")
        );
        assert_eq!(
            disk_by_serial(&dir, "agent").unwrap(),
            Path::new("/dev/vda")
        );
        let e = disk_by_serial(&dir, "data").unwrap_err().to_string();
        assert!(e.contains("vda=agent, vdb=rootfs"), "{e}");
        assert!(matches!(
            disk_by_serial(&dir, &"x".repeat(21)),
            Err(SandboxError::BadSerial(_))
        ));
        fs::remove_dir_all(&dir).unwrap();
    }
}
