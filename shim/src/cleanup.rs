//! The `delete` subcommand's work: what a crashed (SIGKILLed) shim left behind for one
//! task, found through the record Create wrote into the task's bundle: the rootfs mount,
//! and, for the task that booted the pod's VM, the VMM and virtiofsd processes, the
//! share's mounts and the VM's state directory; and the dead shim's socket, named by the
//! bundle's `address` file.

use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::pod::{BundleRecord, BUNDLE_RECORD};

/// Errors cleaning up; one line each.
#[derive(Debug, thiserror::Error)]
pub enum CleanupError {
    #[error("cannot read {path}: {err}")]
    Record {
        path: std::path::PathBuf,
        err: String,
    },
    #[error("{0}")]
    Mount(#[from] crate::mount::MountError),
    #[error("{0}")]
    Sandbox(#[from] sandbox::SandboxError),
}

/// Whether a process's NUL-separated command line names a file in `dir` (the VMM gets
/// `--config DIR/vm.json`, virtiofsd `--socket-path=DIR/virtiofsd.sock`).
pub fn cmdline_names_dir(cmdline: &[u8], dir: &Path) -> bool {
    let needle = format!("{}/", dir.display());
    cmdline
        .split(|b| *b == 0)
        .filter_map(|a| std::str::from_utf8(a).ok())
        .any(|a| a.contains(&needle))
}

/// Host processes whose command line names a file in `dir`, except ourselves.
fn helpers_of(dir: &Path) -> Vec<i32> {
    let me = std::process::id() as i32;
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| *pid != me)
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| cmdline_names_dir(&c, dir))
        })
        .collect()
}

/// SIGKILLs the VM's helper processes and waits (up to 5 s) until they are gone.
fn kill_helpers(dir: &Path) {
    let pids = helpers_of(dir);
    for pid in &pids {
        log::info!("killing leftover process {pid} of {}", dir.display());
        let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline && !helpers_of(dir).is_empty() {
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Removes the shim socket `bundle/address` names if no server answers on it any more
/// (a SIGKILLed shim cannot remove its own).
pub fn remove_dead_socket(bundle: &Path) {
    let Ok(address) = std::fs::read_to_string(bundle.join("address")) else {
        return;
    };
    let address = address.trim();
    let socket = Path::new(address.strip_prefix("unix://").unwrap_or(address));
    if socket.as_os_str().is_empty() || UnixStream::connect(socket).is_ok() {
        return;
    }
    match std::fs::remove_file(socket) {
        Ok(()) => log::info!("removed the dead shim's socket {}", socket.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => log::warn!(
            "cannot remove the dead shim's socket {}: {e}",
            socket.display()
        ),
    }
}

/// Cleans up after the shim that served the task whose bundle is `bundle`.
pub fn delete_leftovers(bundle: &Path) -> Result<(), CleanupError> {
    remove_dead_socket(bundle);
    let path = bundle.join(BUNDLE_RECORD);
    let rec: BundleRecord = match std::fs::read(&path) {
        Ok(b) => serde_json::from_slice(&b).map_err(|e| CleanupError::Record {
            path: path.clone(),
            err: e.to_string(),
        })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // Create never finished: at most the rootfs is mounted.
            crate::mount::unmount_rootfs(&bundle.join("rootfs"))?;
            return Ok(());
        }
        Err(e) => {
            return Err(CleanupError::Record {
                path,
                err: e.to_string(),
            })
        }
    };
    if rec.owner {
        kill_helpers(&rec.state_dir);
        sandbox::sandbox::clean_up_after_owner(&rec.state_dir)?;
        let _ = std::fs::remove_dir_all(&rec.state_dir);
    }
    if rec.rootfs_mounted {
        crate::mount::unmount_rootfs(&bundle.join("rootfs"))?;
    }
    let _ = std::fs::remove_file(&path);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    #[test]
    fn helpers_are_recognised_by_their_state_dir_arguments() {
        let dir = Path::new("/run/sandbox-vm/shim/ns/pod1");
        let vmm = b"/x/sandbox-vm\0vmm\0--config\0/run/sandbox-vm/shim/ns/pod1/vm.json\0";
        let fsd = b"virtiofsd\0--socket-path=/run/sandbox-vm/shim/ns/pod1/virtiofsd.sock\0";
        let other = b"virtiofsd\0--socket-path=/run/sandbox-vm/shim/ns/pod10/virtiofsd.sock\0";
        assert!(cmdline_names_dir(vmm, dir));
        assert!(cmdline_names_dir(fsd, dir));
        assert!(!cmdline_names_dir(other, dir));
        assert!(!cmdline_names_dir(b"", dir));
    }

    #[test]
    fn a_dead_shims_socket_goes_and_a_live_ones_stays() {
        let d = std::env::temp_dir().join(format!("shim-cleanup-sock-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let sock = d.join("s.sock");
        std::fs::write(d.join("address"), format!("unix://{}", sock.display())).unwrap();
        let live = UnixListener::bind(&sock).unwrap();
        remove_dead_socket(&d);
        assert!(sock.exists(), "a socket with a server must stay");
        drop(live);
        remove_dead_socket(&d);
        assert!(!sock.exists(), "a socket nobody serves must go");
        remove_dead_socket(&d);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_bundle_without_a_record_is_fine() {
        let d = std::env::temp_dir().join(format!("shim-cleanup-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        delete_leftovers(&d).unwrap();
        std::fs::write(d.join(BUNDLE_RECORD), b"not json").unwrap();
        assert!(matches!(
            delete_leftovers(&d),
            Err(CleanupError::Record { .. })
        ));
        let _ = std::fs::remove_dir_all(&d);
    }
}
