//! Namespace files on the host (`/proc/PID/ns/*`, or bind mounts of them such as
//! `/run/netns/NAME`): which kind of namespace a spec's `linux.namespaces[].path` names.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use oci_spec::runtime::LinuxNamespaceType;

/// `NS_GET_NSTYPE` (linux/nsfs.h: `_IO(0xb7, 0x3)`): the `CLONE_NEW*` flag of the
/// namespace an nsfs file refers to.
const NS_GET_NSTYPE: libc::c_ulong = 0xb703;

/// Every namespace type the spec knows, to match the kernel's answer against.
const TYPES: [LinuxNamespaceType; 8] = [
    LinuxNamespaceType::Mount,
    LinuxNamespaceType::Cgroup,
    LinuxNamespaceType::Uts,
    LinuxNamespaceType::Ipc,
    LinuxNamespaceType::User,
    LinuxNamespaceType::Pid,
    LinuxNamespaceType::Network,
    LinuxNamespaceType::Time,
];

/// Why a path names no namespace; one line each.
#[derive(Debug, thiserror::Error)]
pub enum NsFileError {
    #[error("namespace path {0} does not exist")]
    Missing(PathBuf),
    #[error("namespace path {0} is not a namespace file (such as /proc/PID/ns/TYPE)")]
    NotNamespace(PathBuf),
    #[error("cannot open namespace path {0}: {1}")]
    Open(PathBuf, io::Error),
}

/// The type of the namespace `file` (an open nsfs file) refers to; `None` if it is no
/// namespace file, or one of a type the spec does not name.
pub fn type_of(file: &File) -> Option<LinuxNamespaceType> {
    // SAFETY: NS_GET_NSTYPE takes no argument and only reads the fd; on any other file
    // the kernel answers ENOTTY.
    let flag = unsafe { libc::ioctl(file.as_raw_fd(), NS_GET_NSTYPE) };
    TYPES
        .into_iter()
        .find(|&t| flag > 0 && t as libc::c_int == flag)
}

/// The type of the namespace at `path`.
pub fn type_at(path: &Path) -> Result<LinuxNamespaceType, NsFileError> {
    let file = File::open(path).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => NsFileError::Missing(path.to_path_buf()),
        _ => NsFileError::Open(path.to_path_buf(), e),
    })?;
    type_of(&file).ok_or_else(|| NsFileError::NotNamespace(path.to_path_buf()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_proc_ns_file_has_its_type() {
        use LinuxNamespaceType as T;
        for (name, want) in [
            ("ipc", T::Ipc),
            ("uts", T::Uts),
            ("net", T::Network),
            ("mnt", T::Mount),
            ("pid", T::Pid),
            ("cgroup", T::Cgroup),
            ("user", T::User),
        ] {
            let p = format!("/proc/self/ns/{name}");
            assert_eq!(type_at(Path::new(&p)).unwrap(), want, "{p}");
        }
    }

    #[test]
    fn other_files_are_no_namespace() {
        let e = type_at(Path::new("/proc/self/status")).unwrap_err();
        assert!(matches!(e, NsFileError::NotNamespace(_)), "{e}");
        let e = type_at(Path::new("/run/no-such-ns-svm")).unwrap_err();
        assert!(matches!(e, NsFileError::Missing(_)), "{e}");
    }
}
