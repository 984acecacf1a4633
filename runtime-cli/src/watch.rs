//! The monitor's watch on the sandbox's helper processes while the container runs: when
//! virtiofsd dies the VM goes on, but the container's files (its rootfs and binds, served
//! through the share) fail with I/O errors; `monitor.log` then says why, once.

use std::path::{Path, PathBuf};
use std::time::Duration;

/// How often the helpers are looked at.
const PERIOD: Duration = Duration::from_secs(1);

/// Whether `pid` has exited (gone, or a zombie its parent has not reaped yet).
pub fn exited(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name in parentheses: "pid (comm) S ...".
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X'])),
        Err(_) => true,
    }
}

/// Starts a thread that writes one line to `<dir>/monitor.log` when virtiofsd (`pid`)
/// exits. The thread ends with the monitor.
pub fn virtiofsd(dir: &Path, pid: u32) {
    let dir: PathBuf = dir.to_path_buf();
    let spawned = std::thread::Builder::new()
        .name("watch".into())
        .spawn(move || loop {
            std::thread::sleep(PERIOD);
            if exited(pid) {
                crate::state::log_line(
                    &dir,
                    &format!(
                        "virtiofsd (pid {pid}) died: the container's files are unreachable \
                         (I/O errors in the guest); delete the container"
                    ),
                );
                return;
            }
        });
    if let Err(e) = spawned {
        log::warn!("cannot watch virtiofsd: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_running_process_has_not_exited_and_a_reaped_or_zombie_one_has() {
        assert!(!exited(std::process::id()));
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        // Unreaped: a zombie.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !exited(pid) {
            assert!(std::time::Instant::now() < deadline);
            std::thread::sleep(Duration::from_millis(10));
        }
        child.wait().unwrap();
        assert!(exited(pid));
    }
}
