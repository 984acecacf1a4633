//! virtiofsd, the vhost-user virtio-fs backend: one per sandbox, serving its share, with
//! its own sandboxing (a mount/pid/net namespace and a seccomp filter) on.

use std::path::Path;
use std::process::{Command, ExitStatus};
use std::time::Duration;

use crate::cgroup::HostCgroup;
use crate::process::{ProcessError, Supervised};

/// How long virtiofsd may take to create its socket.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// The arguments virtiofsd gets: the share with `cache=auto` (a host write is seen by the
/// guest on its next open or after a second of attribute caching), submounts announced
/// (the binds under the share are separate filesystems), and its namespace sandbox.
pub fn args(socket: &Path, shared_dir: &Path) -> Vec<String> {
    vec![
        format!("--socket-path={}", socket.display()),
        format!("--shared-dir={}", shared_dir.display()),
        "--cache=auto".into(),
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
}

impl Virtiofsd {
    /// Starts `exe` on `shared_dir` (in the pod's `cgroup`) and waits until its socket
    /// exists.
    pub fn start(
        exe: &Path,
        socket: &Path,
        shared_dir: &Path,
        log: &Path,
        cgroup: Option<&HostCgroup>,
    ) -> Result<Virtiofsd, ProcessError> {
        let _ = std::fs::remove_file(socket);
        let mut cmd = Command::new(exe);
        cmd.args(args(socket, shared_dir));
        if let Some(cg) = cgroup {
            cg.place(&mut cmd);
        }
        let mut proc = Supervised::spawn("virtiofsd", cmd, log)?;
        proc.wait_ready(READY_TIMEOUT, || socket.exists())?;
        Ok(Virtiofsd { proc })
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
