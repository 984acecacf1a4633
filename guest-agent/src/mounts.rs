//! Container filesystem setup: OCI mount options, the mount plan built in the
//! agent, and the mount, device and root-switching steps the child performs.

use std::fs;
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Component, Path, PathBuf};

use agent_protocol::oci_spec::runtime::{LinuxDevice, LinuxDeviceType, Mount};
use nix::fcntl::{open, AtFlags, OFlag};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::stat::{fstatat, makedev, mknod, mknodat, umask, Mode, SFlag};
use nix::unistd::{chdir, chown, chroot, pivot_root, symlinkat, unlinkat, Gid, Uid, UnlinkatFlags};

/// Mount-related failures.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    /// A destination that is not an absolute, `..`-free path.
    #[error("invalid mount destination {0:?}: it must be absolute without '..'")]
    BadDestination(PathBuf),
    /// A mount without a type that is not a bind mount.
    #[error("mount at {0:?} has no type")]
    NoType(PathBuf),
    /// A system call failed.
    #[error("{op} {path:?} failed: {cause}")]
    Sys {
        /// Operation.
        op: &'static str,
        /// Path.
        path: PathBuf,
        /// Cause.
        cause: io::Error,
    },
}

fn sys(op: &'static str, path: &Path) -> impl FnOnce(nix::Error) -> MountError {
    let path = path.to_path_buf();
    move |e| MountError::Sys {
        op,
        path,
        cause: e.into(),
    }
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> MountError {
    let path = path.to_path_buf();
    move |cause| MountError::Sys { op, path, cause }
}

/// One mount to perform, with `target` already under the rootfs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountOp {
    /// Source (a path for bind mounts).
    pub source: Option<PathBuf>,
    /// Absolute target path in the agent's view.
    pub target: PathBuf,
    /// Filesystem type (`None` for bind mounts).
    pub fstype: Option<String>,
    /// Mount flags (without propagation).
    pub flags: MsFlags,
    /// Propagation flags applied after mounting.
    pub propagation: MsFlags,
    /// Filesystem-specific data.
    pub data: Option<String>,
}

impl MountOp {
    fn is_bind(&self) -> bool {
        self.flags.contains(MsFlags::MS_BIND)
    }
}

/// Parsed OCI mount options.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    /// Flags.
    pub flags: MsFlags,
    /// Propagation.
    pub propagation: MsFlags,
    /// Unknown options, passed as data.
    pub data: Vec<String>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            flags: MsFlags::empty(),
            propagation: MsFlags::empty(),
            data: vec![],
        }
    }
}

/// Splits OCI/fstab-style options into flags, propagation and data.
pub fn parse_options<S: AsRef<str>>(opts: &[S]) -> Options {
    let mut o = Options::default();
    for opt in opts {
        let opt = opt.as_ref();
        let (clear, set) = match opt {
            "defaults" => (false, MsFlags::empty()),
            "ro" => (false, MsFlags::MS_RDONLY),
            "rw" => (true, MsFlags::MS_RDONLY),
            "nosuid" => (false, MsFlags::MS_NOSUID),
            "suid" => (true, MsFlags::MS_NOSUID),
            "nodev" => (false, MsFlags::MS_NODEV),
            "dev" => (true, MsFlags::MS_NODEV),
            "noexec" => (false, MsFlags::MS_NOEXEC),
            "exec" => (true, MsFlags::MS_NOEXEC),
            "sync" => (false, MsFlags::MS_SYNCHRONOUS),
            "async" => (true, MsFlags::MS_SYNCHRONOUS),
            "dirsync" => (false, MsFlags::MS_DIRSYNC),
            "remount" => (false, MsFlags::MS_REMOUNT),
            "mand" => (false, MsFlags::MS_MANDLOCK),
            "nomand" => (true, MsFlags::MS_MANDLOCK),
            "noatime" => (false, MsFlags::MS_NOATIME),
            "atime" => (true, MsFlags::MS_NOATIME),
            "nodiratime" => (false, MsFlags::MS_NODIRATIME),
            "diratime" => (true, MsFlags::MS_NODIRATIME),
            "relatime" => (false, MsFlags::MS_RELATIME),
            "norelatime" => (true, MsFlags::MS_RELATIME),
            "strictatime" => (false, MsFlags::MS_STRICTATIME),
            "nostrictatime" => (true, MsFlags::MS_STRICTATIME),
            "bind" => (false, MsFlags::MS_BIND),
            "rbind" => (false, MsFlags::MS_BIND | MsFlags::MS_REC),
            "private" | "rprivate" | "shared" | "rshared" | "slave" | "rslave" | "unbindable"
            | "runbindable" => {
                o.propagation |= propagation(opt).unwrap_or(MsFlags::empty());
                continue;
            }
            // Runtime-level options with no kernel meaning here.
            "tmpcopyup" | "nosymfollow" | "idmap" | "ridmap" => continue,
            _ => {
                o.data.push(opt.to_string());
                continue;
            }
        };
        if clear {
            o.flags.remove(set);
        } else {
            o.flags.insert(set);
        }
    }
    o
}

/// Propagation flags for a `rootfsPropagation`-style word.
pub fn propagation(word: &str) -> Option<MsFlags> {
    let (rec, base) = match word.strip_prefix('r') {
        Some(b @ ("private" | "shared" | "slave" | "unbindable")) => (true, b),
        _ => (false, word),
    };
    let f = match base {
        "private" => MsFlags::MS_PRIVATE,
        "shared" => MsFlags::MS_SHARED,
        "slave" => MsFlags::MS_SLAVE,
        "unbindable" => MsFlags::MS_UNBINDABLE,
        _ => return None,
    };
    Some(if rec { f | MsFlags::MS_REC } else { f })
}

/// `root` joined with an absolute container path, refusing `..`.
pub fn under_root(root: &Path, dest: &Path) -> Result<PathBuf, MountError> {
    if !dest.is_absolute() || dest.components().any(|c| c == Component::ParentDir) {
        return Err(MountError::BadDestination(dest.to_path_buf()));
    }
    Ok(root.join(dest.strip_prefix("/").unwrap_or(dest)))
}

/// Turns the spec's mounts into operations under `rootfs`.
pub fn plan_mounts(
    rootfs: &Path,
    mounts: &[Mount],
    cgroup_v2: bool,
) -> Result<Vec<MountOp>, MountError> {
    let mut ops = vec![];
    for m in mounts {
        let target = under_root(rootfs, m.destination())?;
        let o = parse_options(m.options().as_deref().unwrap_or(&[]));
        let mut fstype = m.typ().clone().filter(|t| !t.is_empty() && t != "none");
        let mut source = m.source().clone();
        let mut data = o.data;
        if o.flags.contains(MsFlags::MS_BIND) {
            fstype = None;
            data.clear();
        } else if fstype.is_none() {
            return Err(MountError::NoType(m.destination().clone()));
        } else if fstype.as_deref() == Some("cgroup") {
            // cgroup v1 needs one mount per controller bound to the
            // container's cgroup; we give an empty tmpfs instead (see README).
            if cgroup_v2 {
                fstype = Some("cgroup2".into());
                source = Some("cgroup2".into());
            } else {
                fstype = Some("tmpfs".into());
                source = Some("tmpfs".into());
                data = vec!["mode=755".into()];
            }
        }
        ops.push(MountOp {
            source,
            target,
            fstype,
            flags: o.flags,
            propagation: o.propagation,
            data: (!data.is_empty()).then(|| data.join(",")),
        });
    }
    Ok(ops)
}

/// A device node to create under the rootfs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceOp {
    /// Absolute path in the agent's view.
    pub path: PathBuf,
    /// Character or block (FIFOs are `S_IFIFO`).
    pub kind: SFlag,
    /// Major number.
    pub major: u64,
    /// Minor number.
    pub minor: u64,
    /// Permission bits.
    pub mode: u32,
    /// Owner.
    pub uid: Option<u32>,
    /// Group.
    pub gid: Option<u32>,
    /// Failure is an error (spec devices) or ignored (defaults).
    pub required: bool,
}

const DEFAULT_DEVICES: [(&str, u64, u64); 6] = [
    ("null", 1, 3),
    ("zero", 1, 5),
    ("full", 1, 7),
    ("random", 1, 8),
    ("urandom", 1, 9),
    ("tty", 5, 0),
];

/// The default devices plus the spec's.
pub fn plan_devices(rootfs: &Path, devices: &[LinuxDevice]) -> Result<Vec<DeviceOp>, MountError> {
    let mut ops: Vec<DeviceOp> = DEFAULT_DEVICES
        .iter()
        .map(|(n, ma, mi)| DeviceOp {
            path: rootfs.join("dev").join(n),
            kind: SFlag::S_IFCHR,
            major: *ma,
            minor: *mi,
            mode: 0o666,
            uid: None,
            gid: None,
            required: false,
        })
        .collect();
    for d in devices {
        let path = under_root(rootfs, d.path())?;
        ops.retain(|o| o.path != path);
        let kind = match d.typ() {
            LinuxDeviceType::B => SFlag::S_IFBLK,
            LinuxDeviceType::P => SFlag::S_IFIFO,
            _ => SFlag::S_IFCHR,
        };
        ops.push(DeviceOp {
            path,
            kind,
            major: d.major() as u64,
            minor: d.minor() as u64,
            mode: d.file_mode().unwrap_or(0o666) & 0o7777,
            uid: d.uid(),
            gid: d.gid(),
            required: true,
        });
    }
    Ok(ops)
}

// ---- Steps run by the container's init process before it execs ----

/// Sets the propagation of every mount in the (new) namespace.
pub fn set_root_propagation(flags: MsFlags) -> Result<(), MountError> {
    let root = Path::new("/");
    mount(None::<&str>, root, None::<&str>, flags, None::<&str>).map_err(sys("make-private", root))
}

/// Sets the propagation of the mount at `path` (`MS_SHARED`, `MS_SLAVE`, `MS_PRIVATE` or
/// `MS_UNBINDABLE`, with `MS_REC` for the mounts under it too).
pub fn set_propagation(path: &Path, flags: MsFlags) -> Result<(), MountError> {
    mount(None::<&str>, path, None::<&str>, flags, None::<&str>)
        .map_err(sys("set propagation of", path))
}

/// Bind-mounts the rootfs onto itself so that it is a mount point.
pub fn bind_rootfs(rootfs: &Path) -> Result<(), MountError> {
    mount(
        Some(rootfs),
        rootfs,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(sys("bind rootfs", rootfs))
}

/// Performs one planned mount.
pub fn do_mount(op: &MountOp) -> Result<(), MountError> {
    let t = &op.target;
    let src_is_file = op.is_bind()
        && op
            .source
            .as_deref()
            .is_some_and(|s| fs::metadata(s).map(|m| !m.is_dir()).unwrap_or(false));
    if src_is_file {
        if let Some(p) = t.parent() {
            fs::create_dir_all(p).map_err(io_err("mkdir", p))?;
        }
        if !t.exists() {
            fs::File::create(t).map_err(io_err("create", t))?;
        }
    }
    let flags = op.flags - MsFlags::MS_REMOUNT;
    let mut first = flags;
    if op.is_bind() {
        // A bind mount ignores most flags: apply them with a remount.
        first &= MsFlags::MS_BIND | MsFlags::MS_REC;
    }
    let mount_it = || {
        mount(
            op.source.as_deref(),
            t,
            op.fstype.as_deref(),
            first,
            op.data.as_deref(),
        )
    };
    if src_is_file {
        mount_it().map_err(sys("mount", t))?;
    } else {
        at_mount_point(t, "mount", mount_it)?;
    }
    if op.is_bind() && flags != first {
        let re = (flags - MsFlags::MS_REC) | MsFlags::MS_REMOUNT;
        mount(None::<&str>, t, None::<&str>, re, None::<&str>).map_err(sys("remount", t))?;
    }
    if !op.propagation.is_empty() {
        mount(None::<&str>, t, None::<&str>, op.propagation, None::<&str>)
            .map_err(sys("set propagation of", t))?;
    }
    Ok(())
}

/// Moves the mount at `from`, with everything mounted under it, to `to` (made if
/// missing, as for [`do_mount`]).
pub fn move_mount(from: &Path, to: &Path) -> Result<(), MountError> {
    at_mount_point(to, "move mount to", || {
        mount(Some(from), to, None::<&str>, MsFlags::MS_MOVE, None::<&str>)
    })
}

/// Runs `mount_it`, which mounts on directory `t`. Mount points usually exist: it is tried
/// first, and the directory made only when it is missing (each system call is emulated
/// kernel work in the guest).
fn at_mount_point(
    t: &Path,
    op: &'static str,
    mount_it: impl Fn() -> nix::Result<()>,
) -> Result<(), MountError> {
    match mount_it() {
        Err(nix::errno::Errno::ENOENT) => {
            fs::create_dir_all(t).map_err(io_err("mkdir", t))?;
            mount_it().map_err(sys(op, t))
        }
        r => r.map_err(sys(op, t)),
    }
}

/// Creates device nodes (defaults only where `/dev` exists and is writable).
///
/// Nodes directly in `/dev` are made relative to one descriptor of it, with the umask
/// cleared so that `mknod` sets the exact mode: one system call per node.
pub fn create_devices(rootfs: &Path, ops: &[DeviceOp]) -> Result<(), MountError> {
    let dev = rootfs.join("dev");
    let dir = match open(
        &dev,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(_) => return Ok(()),
    };
    let old_umask = umask(Mode::empty());
    let made = make_nodes(&dir, &dev, ops);
    umask(old_umask);
    made?;
    for (link, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        let _ = symlinkat(target, &dir, link);
    }
    let pts = fstatat(&dir, "pts", AtFlags::AT_SYMLINK_NOFOLLOW);
    if pts.is_ok_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFDIR) {
        let ptmx = || symlinkat("pts/ptmx", &dir, "ptmx");
        if ptmx() == Err(nix::errno::Errno::EEXIST) {
            let _ = unlinkat(&dir, "ptmx", UnlinkatFlags::NoRemoveDir);
            let _ = ptmx();
        }
    }
    Ok(())
}

fn make_nodes(dir: &OwnedFd, dev: &Path, ops: &[DeviceOp]) -> Result<(), MountError> {
    for d in ops {
        let made = (|| {
            let perm = Mode::from_bits_truncate(d.mode);
            let devno = makedev(d.major, d.minor);
            // A node directly in /dev (the defaults, most spec devices).
            let name = d
                .path
                .strip_prefix(dev)
                .ok()
                .filter(|n| n.components().count() == 1);
            let r = match name {
                Some(n) => mknodat(dir, n, d.kind, perm, devno),
                None => {
                    if let Some(p) = d.path.parent() {
                        fs::create_dir_all(p).map_err(io_err("mkdir", p))?;
                    }
                    mknod(&d.path, d.kind, perm, devno)
                }
            };
            match r {
                Ok(()) | Err(nix::errno::Errno::EEXIST) => {}
                Err(e) => return Err(sys("mknod", &d.path)(e)),
            }
            if d.uid.is_some() || d.gid.is_some() {
                chown(&d.path, d.uid.map(Uid::from_raw), d.gid.map(Gid::from_raw))
                    .map_err(sys("chown", &d.path))?;
            }
            Ok(())
        })();
        if d.required {
            made?;
        }
    }
    Ok(())
}

/// Makes `rootfs` the root. `pivot_root` cannot move the initial ramfs (the
/// guest agent runs from an initramfs), so on EINVAL, or with `no_pivot`,
/// move the rootfs over `/` and chroot into it, as `switch_root` does.
pub fn enter_rootfs(rootfs: &Path, no_pivot: bool) -> Result<(), MountError> {
    chdir(rootfs).map_err(sys("chdir", rootfs))?;
    let dot = Path::new(".");
    let pivoted = if no_pivot {
        Err(nix::errno::Errno::EINVAL)
    } else {
        pivot_root(dot, dot)
    };
    match pivoted {
        Ok(()) => {
            // The old root is now stacked on ".": detach it.
            umount2(dot, MntFlags::MNT_DETACH).map_err(sys("detach old root", dot))?;
        }
        Err(nix::errno::Errno::EINVAL) => {
            mount(Some(dot), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)
                .map_err(sys("move rootfs to /", rootfs))?;
            chroot(dot).map_err(sys("chroot", rootfs))?;
        }
        Err(e) => return Err(sys("pivot_root", rootfs)(e)),
    }
    chdir("/").map_err(sys("chdir", Path::new("/")))
}

/// Hides paths: /dev/null over files, an empty read-only tmpfs over dirs.
///
/// The bind of /dev/null is tried first: it fails with ENOENT for a missing path and
/// ENOTDIR for a directory, which saves a `stat` per path (once /dev/null is known to
/// exist, so that ENOENT can only mean the path).
///
/// The paths are container paths, taken under `root` (`/` once in the container's root;
/// a staging directory for a prepared init), and so is `/dev/null`.
pub fn mask_paths(root: &Path, paths: &[String]) -> Result<(), MountError> {
    let null = &root.join("dev/null");
    let null_ok = fs::metadata(null).is_ok_and(|m| !m.is_dir());
    for p in paths {
        let p = &root.join(p.trim_start_matches('/'));
        let tmpfs = || {
            mount(
                Some("tmpfs"),
                p,
                Some("tmpfs"),
                MsFlags::MS_RDONLY,
                None::<&str>,
            )
        };
        let bind_null = || mount(Some(null), p, None::<&str>, MsFlags::MS_BIND, None::<&str>);
        let r = if null_ok {
            match bind_null() {
                Err(nix::errno::Errno::ENOENT) => continue,
                Err(nix::errno::Errno::ENOTDIR) => tmpfs(),
                r => r,
            }
        } else {
            match fs::metadata(p) {
                Err(_) => continue,
                Ok(m) if m.is_dir() => tmpfs(),
                Ok(_) => bind_null(),
            }
        };
        r.map_err(sys("mask", p))?;
    }
    Ok(())
}

/// Makes paths read-only (missing ones are skipped); container paths under `root`, as
/// for [`mask_paths`].
pub fn readonly_paths(root: &Path, paths: &[String]) -> Result<(), MountError> {
    for p in paths {
        let p = &root.join(p.trim_start_matches('/'));
        match mount(
            Some(p),
            p,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        ) {
            Err(nix::errno::Errno::ENOENT) => continue,
            r => r.map_err(sys("bind", p))?,
        }
        remount_ro(p)?;
    }
    Ok(())
}

/// Remounts a bind mount read-only, keeping its other locked flags.
pub fn remount_ro(p: &Path) -> Result<(), MountError> {
    let cur = nix::sys::statvfs::statvfs(p).map_err(sys("statvfs", p))?;
    let mut flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
    let f = cur.flags();
    use nix::sys::statvfs::FsFlags;
    for (sv, ms) in [
        (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
        (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
    ] {
        if f.contains(sv) {
            flags |= ms;
        }
    }
    mount(None::<&str>, p, None::<&str>, flags, None::<&str>).map_err(sys("remount read-only", p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options() {
        let o = parse_options(&[
            "nosuid",
            "strictatime",
            "mode=755",
            "size=65536k",
            "rw",
            "rprivate",
        ]);
        assert_eq!(o.flags, MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME);
        assert_eq!(o.propagation, MsFlags::MS_PRIVATE | MsFlags::MS_REC);
        assert_eq!(o.data, vec!["mode=755", "size=65536k"]);
        let o = parse_options(&["rbind", "ro"]);
        assert_eq!(
            o.flags,
            MsFlags::MS_BIND | MsFlags::MS_REC | MsFlags::MS_RDONLY
        );
    }

    #[test]
    fn destinations_stay_under_root() {
        let r = Path::new("/r");
        assert_eq!(
            under_root(r, Path::new("/proc")).unwrap(),
            Path::new("/r/proc")
        );
        assert!(under_root(r, Path::new("/../etc")).is_err());
        assert!(under_root(r, Path::new("etc")).is_err());
    }

    #[test]
    fn default_spec_mounts_plan() {
        let spec = agent_protocol::oci_spec::runtime::Spec::default();
        let ops = plan_mounts(Path::new("/r"), spec.mounts().as_ref().unwrap(), false).unwrap();
        let cg = ops
            .iter()
            .find(|o| o.target == Path::new("/r/sys/fs/cgroup"))
            .unwrap();
        assert_eq!(cg.fstype.as_deref(), Some("tmpfs"));
        let pts = ops
            .iter()
            .find(|o| o.target == Path::new("/r/dev/pts"))
            .unwrap();
        assert!(pts.data.as_deref().unwrap().contains("newinstance"));
        assert_eq!(
            propagation("rslave"),
            Some(MsFlags::MS_SLAVE | MsFlags::MS_REC)
        );
    }
}
