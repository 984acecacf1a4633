//! virtiofsd, the vhost-user virtio-fs backend: one per sandbox, serving its share, with
//! its own sandboxing (a mount/pid/net namespace and a seccomp filter) on.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::Duration;

use crate::cgroup::HostCgroup;
use crate::process::{ProcessError, Supervised};

/// How long virtiofsd may take to create its socket.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the guest may keep what it read of a share: virtiofsd's `--cache` policy.
///
/// The guest kernel drops a file's cached pages at every open unless the backend answers
/// the open with `FOPEN_KEEP_CACHE`; virtiofsd 1.x does so only under `always`, which also
/// lets the guest keep names and attributes for a day. So each policy is all or nothing
/// for a share, and the sandbox splits its files into two shares
/// ([`crate::share::ShareKind`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cache {
    /// Attributes and names for 1 s; file pages dropped at each open, and when a refresh
    /// of the attributes shows another size or mtime: a host write is seen at the
    /// guest's next open (or read, once the second is over).
    Auto,
    /// Pages, names and attributes kept (`FOPEN_KEEP_CACHE`, a day's timeouts): an open
    /// costs no re-read, and host writes may never be seen.
    Always,
}

impl Cache {
    /// virtiofsd's name for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Cache::Auto => "auto",
            Cache::Always => "always",
        }
    }
}

/// The arguments virtiofsd gets: the share with its cache policy, submounts announced
/// (the binds under the share are separate filesystems), and its namespace sandbox.
pub fn args(socket: &Path, shared_dir: &Path, cache: Cache) -> Vec<String> {
    vec![
        format!("--socket-path={}", socket.display()),
        format!("--shared-dir={}", shared_dir.display()),
        format!("--cache={}", cache.as_str()),
        "--sandbox=namespace".into(),
        // virtiofsd's default, said aloud: a call outside its own filter kills it.
        "--seccomp=kill".into(),
        "--announce-submounts".into(),
        "--log-level=warn".into(),
    ]
}

/// A running virtiofsd.
#[derive(Debug)]
pub struct Virtiofsd {
    proc: Supervised,
    socket: PathBuf,
}

impl Virtiofsd {
    /// Starts `exe` on `shared_dir` (in the pod's `cgroup`); [`Virtiofsd::wait_ready`]
    /// waits for its socket.
    pub fn spawn(
        exe: &Path,
        socket: &Path,
        shared_dir: &Path,
        cache: Cache,
        log: &Path,
        cgroup: Option<&HostCgroup>,
    ) -> Result<Virtiofsd, ProcessError> {
        let _ = std::fs::remove_file(socket);
        let mut cmd = Command::new(exe);
        cmd.args(args(socket, shared_dir, cache));
        if let Some(cg) = cgroup {
            cg.place(&mut cmd);
        }
        Ok(Virtiofsd {
            proc: Supervised::spawn("virtiofsd", cmd, log)?,
            socket: socket.to_path_buf(),
        })
    }

    /// Waits until its socket exists (the VMM may connect).
    pub fn wait_ready(&mut self) -> Result<(), ProcessError> {
        let socket = &self.socket;
        self.proc.wait_ready(READY_TIMEOUT, || socket.exists())
    }

    /// Its pid.
    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// Its exit status if it has died, with its last log line.
    pub fn died(&mut self) -> Option<(ExitStatus, String)> {
        let status = self.proc.try_status()?;
        Some((status, crate::process::last_line(self.proc.log())))
    }

    /// Stops it (it normally exits by itself once the VMM closes the socket).
    pub fn stop(&mut self) -> Option<ExitStatus> {
        self.proc
            .wait_timeout(Duration::from_millis(500))
            .or_else(|| self.proc.terminate(Duration::from_secs(2)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::share::ShareKind;

    #[test]
    fn the_rootfs_share_keeps_its_cache_and_the_volumes_share_follows_the_host() {
        let args_of = |kind: ShareKind| args(Path::new("/s.sock"), Path::new("/d"), kind.cache());
        assert!(args_of(ShareKind::Rootfs).contains(&"--cache=always".to_string()));
        assert!(args_of(ShareKind::Volumes).contains(&"--cache=auto".to_string()));
        let a = args_of(ShareKind::Volumes);
        assert_eq!(a[..2], ["--socket-path=/s.sock", "--shared-dir=/d"]);
        assert_eq!(a.iter().filter(|a| a.starts_with("--cache")).count(), 1);
    }
}
