//! Entering a pod's network namespace: opened once by path (a bind mount such as
//! `/run/netns/NAME`), then joined by a short-lived thread that does the netlink work, or
//! by the VMM process before it execs (see [`crate::vmm_process`]).

use std::fs::File;
use std::io;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use nix::sched::{setns, unshare, CloneFlags};

/// `statfs.f_type` of the nsfs filesystem namespace files live on.
const NSFS_MAGIC: libc::c_long = 0x6e73_6673;

/// Errors reaching a network namespace.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("network namespace {0} does not exist (was the pod's network torn down, or the netns deleted?)")]
    Missing(PathBuf),
    #[error("{0} is not a network namespace (a netns that was deleted leaves such a file behind)")]
    NotNetns(PathBuf),
    #[error("cannot open network namespace {0}: {1}")]
    Open(PathBuf, io::Error),
    #[error("cannot enter network namespace {0}: {1}")]
    Enter(PathBuf, nix::Error),
    #[error("cannot start a thread to enter network namespace {0}: {1}")]
    Thread(PathBuf, io::Error),
    #[error("cannot create a network namespace: {0}")]
    Create(nix::Error),
}

/// An open network namespace.
#[derive(Debug)]
pub struct Netns {
    file: File,
    path: PathBuf,
}

impl Netns {
    /// Opens the netns at `path`; a missing path or a file that is no namespace is one
    /// clear error.
    pub fn open(path: &Path) -> Result<Netns, NetnsError> {
        let file = File::open(path).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => NetnsError::Missing(path.to_path_buf()),
            _ => NetnsError::Open(path.to_path_buf(), e),
        })?;
        let fs = nix::sys::statfs::fstatfs(&file)
            .map_err(|e| NetnsError::Open(path.to_path_buf(), e.into()))?;
        let is_net =
            crate::nsfile::type_of(&file) == Some(oci_spec::runtime::LinuxNamespaceType::Network);
        if fs.filesystem_type().0 as libc::c_long != NSFS_MAGIC || !is_net {
            return Err(NetnsError::NotNetns(path.to_path_buf()));
        }
        Ok(Netns {
            file,
            path: path.to_path_buf(),
        })
    }

    /// A new network namespace (loopback only) that nothing on the host names: it lives
    /// while the returned value or a process that joined it does.
    pub fn new_private() -> Result<Netns, NetnsError> {
        let path = PathBuf::from("(a private network namespace)");
        std::thread::scope(|s| {
            let t = std::thread::Builder::new()
                .name("netns-new".into())
                .spawn_scoped(s, || {
                    // Only this short-lived thread moves to the new namespace.
                    unshare(CloneFlags::CLONE_NEWNET).map_err(NetnsError::Create)?;
                    let file = File::open("/proc/thread-self/ns/net")
                        .map_err(|e| NetnsError::Open(path.clone(), e))?;
                    Ok(Netns {
                        file,
                        path: path.clone(),
                    })
                })
                .map_err(|e| NetnsError::Thread(path.clone(), e))?;
            match t.join() {
                Ok(r) => r,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }

    /// Whether this is the calling thread's own network namespace.
    pub fn is_current(&self) -> Result<bool, NetnsError> {
        use std::os::unix::fs::MetadataExt;
        let err = |e| NetnsError::Open(self.path.clone(), e);
        let mine = std::fs::metadata("/proc/thread-self/ns/net").map_err(err)?;
        let this = self.file.metadata().map_err(err)?;
        Ok((mine.dev(), mine.ino()) == (this.dev(), this.ino()))
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The namespace file (for `setns` in a child before exec).
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Runs `f` on a new thread that has joined this netns (and dies with it, so the
    /// caller's threads never change namespace). Fails if `setns` refuses the file (it is
    /// not a network namespace).
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T, NetnsError> {
        std::thread::scope(|s| {
            let t = std::thread::Builder::new()
                .name("netns".into())
                .spawn_scoped(s, || {
                    setns(self.file.as_fd(), CloneFlags::CLONE_NEWNET)
                        .map_err(|e| NetnsError::Enter(self.path.clone(), e))?;
                    Ok(f())
                })
                .map_err(|e| NetnsError::Thread(self.path.clone(), e))?;
            match t.join() {
                Ok(r) => r,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_and_non_namespace_paths_are_named() {
        let e = Netns::open(Path::new("/run/netns/does-not-exist-svm")).unwrap_err();
        assert!(matches!(e, NetnsError::Missing(_)));
        assert!(e.to_string().contains("does not exist"), "{e}");
        let e = Netns::open(Path::new("/etc/hostname")).unwrap_err();
        assert!(matches!(e, NetnsError::NotNetns(_)), "{e}");
        let e = Netns::open(Path::new("/proc/self/ns/ipc")).unwrap_err();
        assert!(matches!(e, NetnsError::NotNetns(_)), "another type: {e}");
    }

    #[test]
    fn own_netns_opens_and_a_thread_runs_in_it() {
        let ns = Netns::open(Path::new("/proc/self/ns/net")).unwrap();
        assert!(ns.is_current().unwrap());
        let mine = std::fs::read_link("/proc/thread-self/ns/net").unwrap();
        let theirs = ns
            .run(|| std::fs::read_link("/proc/thread-self/ns/net").unwrap())
            .unwrap();
        assert_eq!(mine, theirs);
    }
}
