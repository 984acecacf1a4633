//! What the host side and the jailed VMM agree on about the jail (the VMM's `jail` module
//! sets it up; `sandbox-vm-vmm --jail DIR`): the unprivileged uid/gid, where the vsock
//! directory appears inside, the cgroup's name, and the ownership of the vsock directory.
//!
//! # Guest → host vsock connections
//!
//! A guest that connects to host port P makes the VMM connect to `<vsock socket>_P` (hybrid
//! vsock), long after it dropped to the jail's uid. A sandbox's state directory is 0700
//! root, so that uid could not even look inside it. So the vsock sockets live in a
//! directory of their own ([`create_vsock_dir`]: 0700, owned by the jail's uid), which the
//! jail mounts at [`VSOCK_DIR`] — outside the state directory's mount — and the VMM is
//! told that its vsock socket is there. A listener for port P ([`listen_guest_port`]) is
//! 0600 and owned by the directory's owner. On the host the state directory keeps every
//! other user out, the jail's uid included: only root and the jailed VMM (through its own
//! mount) can connect. A VMM jailed with another uid is given the directory
//! ([`give_vsock_dir`]).

use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};

/// Memory the VMM process may use on top of guest RAM (its binary, thread stacks, device
/// buffers, the page cache of its disk I/O charged to it).
pub const VMM_OVERHEAD_MIB: u64 = 64;
/// The jail directory's name in a sandbox's state directory.
pub const DIR_NAME: &str = "jail";
/// The uid and gid a jailed VMM runs as unless told otherwise (`sandbox-vm-vmm
/// --jail-uid/--jail-gid`): nobody/nogroup.
pub const UID: u32 = 65534;
pub const GID: u32 = 65534;
/// Where the VM's vsock directory is mounted inside the jail.
pub const VSOCK_DIR: &str = "/vsock";

/// The cgroup hierarchy's root (tests point it elsewhere).
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// Errors preparing the vsock directory or finding the cgroup; one line each.
#[derive(Debug, thiserror::Error)]
pub enum JailError {
    #[error("jail: {what} {path}: {err}")]
    Path {
        what: &'static str,
        path: PathBuf,
        err: io::Error,
    },
    #[error("jail: no memory cgroup controller under {CGROUP_ROOT}")]
    NoMemoryCgroup,
}

/// Creates the directory for the vsock socket `uds` (its parent) and the `_PORT`
/// listeners beside it: mode 0700, owned by the jail's [`UID`]/[`GID`] when the VMM will be
/// `jailed` (it connects to the listeners after dropping to that uid), else by root.
pub fn create_vsock_dir(uds: &Path, jailed: bool) -> Result<(), JailError> {
    let Some(dir) = uds.parent() else {
        return Ok(());
    };
    // The state directory may not exist yet: it is made 0700 too.
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(at("create", dir))?;
    let (uid, gid) = if jailed { (UID, GID) } else { (0, 0) };
    std::os::unix::fs::chown(dir, Some(uid), Some(gid)).map_err(at("chown", dir))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(at("chmod", dir))
}

/// Hands the vsock directory of `uds` and the `_PORT` listeners already in it to
/// `uid`/`gid`: for a VMM jailed with another uid than [`UID`] (`sandbox-vm-vmm --jail-uid`),
/// which connects to those listeners after dropping to it. Listeners made later follow the
/// directory's owner ([`listen_guest_port`]).
pub fn give_vsock_dir(uds: &Path, uid: u32, gid: u32) -> Result<(), JailError> {
    let (Some(dir), Some(name)) = (uds.parent(), uds.file_name()) else {
        return Ok(());
    };
    let mut prefix = name.to_os_string();
    prefix.push("_");
    let prefix = prefix.as_encoded_bytes();
    for entry in std::fs::read_dir(dir).map_err(at("read", dir))? {
        let entry = entry.map_err(at("read", dir))?;
        let file = entry.file_name();
        let port = file.as_encoded_bytes().strip_prefix(prefix);
        if port.is_some_and(|p| !p.is_empty() && p.iter().all(u8::is_ascii_digit)) {
            let path = entry.path();
            std::os::unix::fs::lchown(&path, Some(uid), Some(gid)).map_err(at("chown", &path))?;
        }
    }
    std::os::unix::fs::chown(dir, Some(uid), Some(gid)).map_err(at("chown", dir))
}

/// Listens for the guest's connections to host port `port`: binds `<uds>_<port>` (hybrid
/// vsock) with mode 0600, owned by the owner of its directory (see [`create_vsock_dir`]),
/// so that the VMM, jailed or not, can connect and nobody else can.
pub fn listen_guest_port(uds: &Path, port: u32) -> Result<UnixListener, JailError> {
    let mut path = uds.as_os_str().to_os_string();
    path.push(format!("_{port}"));
    let path = PathBuf::from(path);
    let dir = path.parent().unwrap_or(Path::new("/"));
    let owner = std::fs::metadata(dir).map_err(at("look at", dir))?;
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path).map_err(at("listen on", &path))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
        .map_err(at("chmod", &path))?;
    std::os::unix::fs::chown(&path, Some(owner.uid()), Some(owner.gid()))
        .map_err(at("chown", &path))?;
    Ok(listener)
}

fn at<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> JailError + 'a {
    move |err| JailError::Path {
        what,
        path: path.to_path_buf(),
        err,
    }
}

/// The cgroup's name for a jail directory: stable, so a cleaner that only knows the
/// directory finds it (FNV-1a of the path).
pub fn cgroup_name(dir: &Path) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in dir.as_os_str().as_bytes() {
        h = (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3);
    }
    format!("sandbox-vm/{h:016x}")
}

/// Where the memory cgroup of jail directory `dir` lives, and whether the hierarchy is
/// v2: [`cgroup_name`] below the hierarchy's root, or below the pod's cgroup `parent` (a
/// path below the root, `sandbox-vm-vmm --jail-cgroup-parent`), so that the pod's cgroup
/// counts the VMM and the jail's limit holds for the VMM alone.
pub fn cgroup_dir(
    root: &Path,
    dir: &Path,
    parent: Option<&Path>,
) -> Result<(PathBuf, bool), JailError> {
    let below = |r: PathBuf| match parent {
        Some(p) => r
            .join(p.strip_prefix("/").unwrap_or(p))
            .join(cgroup_name(dir)),
        None => r.join(cgroup_name(dir)),
    };
    if root.join("cgroup.controllers").exists() {
        return Ok((below(root.to_path_buf()), true));
    }
    let v1 = root.join("memory");
    if v1.join("memory.limit_in_bytes").exists() {
        return Ok((below(v1), false));
    }
    Err(JailError::NoMemoryCgroup)
}

/// Removes the cgroup of jail directory `dir` below the root (after the VMM ended; also for
/// cleaners after a SIGKILL; one below a pod's cgroup goes with the pod's cgroup). A VMM that is still dying (its parent was just killed) keeps it busy
/// for a moment: this waits up to 3 s for it. Returns whether one was removed.
pub fn remove_cgroup(dir: &Path) -> bool {
    let Ok((cg, _)) = cgroup_dir(Path::new(CGROUP_ROOT), dir, None) else {
        return false;
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    loop {
        match std::fs::remove_dir(&cg) {
            Ok(()) => return true,
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                if std::time::Instant::now() > deadline {
                    return false;
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            Err(_) => return false,
        }
    }
}

#[cfg(test)]
#[path = "jail_tests.rs"]
mod tests;
