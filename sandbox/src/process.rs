//! Helper processes a sandbox owns (virtiofsd, the VMM): started with their output in a log
//! file, waited for until ready, and stopped (SIGTERM, then SIGKILL) with the sandbox.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Errors starting or waiting for a helper process.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("cannot open log file {path}: {err}")]
    Log { path: PathBuf, err: std::io::Error },
    #[error("cannot start {name} ({exe}): {err}")]
    Spawn {
        name: &'static str,
        exe: PathBuf,
        err: std::io::Error,
    },
    #[error("{name} exited ({status}) before it was ready: {last}")]
    Exited {
        name: &'static str,
        status: ExitStatus,
        last: String,
    },
    #[error("{name} was not ready after {timeout:?} (see {})", log.display())]
    Timeout {
        name: &'static str,
        log: PathBuf,
        timeout: Duration,
    },
}

/// A running helper process.
#[derive(Debug)]
pub struct Supervised {
    name: &'static str,
    child: Child,
    log: PathBuf,
    status: Option<ExitStatus>,
}

/// The last non-empty line of a log file, or a hint where to look.
pub fn last_line(log: &Path) -> String {
    std::fs::read_to_string(log)
        .ok()
        .and_then(|t| {
            t.lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .map(str::to_string)
        })
        .unwrap_or_else(|| format!("no output (see {})", log.display()))
}

impl Supervised {
    /// Starts `cmd` with stdin from /dev/null and stdout/stderr appended to `log`.
    pub fn spawn(
        name: &'static str,
        mut cmd: Command,
        log: &Path,
    ) -> Result<Supervised, ProcessError> {
        let open =
            || -> std::io::Result<File> { OpenOptions::new().create(true).append(true).open(log) };
        let log_err = |err| ProcessError::Log {
            path: log.to_path_buf(),
            err,
        };
        let out = open().map_err(log_err)?;
        let err = open().map_err(log_err)?;
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        let child = cmd.spawn().map_err(|err| ProcessError::Spawn {
            name,
            exe: PathBuf::from(cmd.get_program()),
            err,
        })?;
        Ok(Supervised {
            name,
            child,
            log: log.to_path_buf(),
            status: None,
        })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The log file.
    pub fn log(&self) -> &Path {
        &self.log
    }

    /// The exit status, if it has exited (reaps it).
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok().flatten();
        }
        self.status
    }

    /// Polls `ready` until it holds; fails if the process exits first or after `timeout`.
    pub fn wait_ready(
        &mut self,
        timeout: Duration,
        mut ready: impl FnMut() -> bool,
    ) -> Result<(), ProcessError> {
        let deadline = Instant::now() + timeout;
        loop {
            if ready() {
                return Ok(());
            }
            if let Some(status) = self.try_status() {
                return Err(ProcessError::Exited {
                    name: self.name,
                    status,
                    last: last_line(&self.log),
                });
            }
            if Instant::now() > deadline {
                return Err(ProcessError::Timeout {
                    name: self.name,
                    log: self.log.clone(),
                    timeout,
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits up to `timeout` for the process to exit by itself.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.try_status() {
                return Some(s);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGTERM, up to `grace` to exit, then SIGKILL; returns the exit status.
    pub fn terminate(&mut self, grace: Duration) -> Option<ExitStatus> {
        if let Some(s) = self.try_status() {
            return Some(s);
        }
        let pid = Pid::from_raw(self.child.id() as i32);
        let _ = kill(pid, Signal::SIGTERM);
        if let Some(s) = self.wait_timeout(grace) {
            return Some(s);
        }
        let _ = self.child.kill();
        self.status = self.child.wait().ok();
        self.status
    }
}

impl Drop for Supervised {
    /// Nothing outlives its owner: a helper still running is killed and reaped.
    fn drop(&mut self) {
        if self.try_status().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
