//! The readiness pipe between a command and the background process it starts (`create` →
//! the monitor, `exec --detach` → its background half): the child writes one line, `OK`
//! or `ERR <message>`, and the parent waits for it. The child finds the write end through
//! [`READY_FD_ENV`], checks that it really is a pipe, and keeps it from its own children.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::process::Command;

use nix::fcntl::{fcntl, FcntlArg, FdFlag, OFlag};

/// Names the write end of the readiness pipe in the child's environment.
pub const READY_FD_ENV: &str = "SANDBOX_VM_READY_FD";

/// Errors making the pipe.
#[derive(Debug, thiserror::Error)]
#[error("cannot make the readiness pipe: {0}")]
pub struct ReadyError(nix::Error);

/// The parent's end.
pub struct ReadyReader(File);

/// The write end, until the child is spawned (then it is closed here).
pub struct ReadyPipe {
    reader: ReadyReader,
    writer: OwnedFd,
}

impl ReadyPipe {
    /// A new pipe; both ends close-on-exec until [`ReadyPipe::pass_to`].
    pub fn new() -> Result<ReadyPipe, ReadyError> {
        let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(ReadyError)?;
        Ok(ReadyPipe {
            reader: ReadyReader(File::from(r)),
            writer: w,
        })
    }

    /// Lets `cmd`'s child inherit the write end (and only it) and names it in its
    /// environment. Call [`ReadyPipe::spawned`] right after spawning.
    pub fn pass_to(&self, cmd: &mut Command) -> Result<(), ReadyError> {
        let fd = self.writer.as_raw_fd();
        // Inheritable in the child only: fork copies the flag, so clear it just before and
        // restore it after spawn (`spawned`). Commands are spawned one at a time here.
        fcntl(&self.writer, FcntlArg::F_SETFD(FdFlag::empty())).map_err(ReadyError)?;
        cmd.env(READY_FD_ENV, fd.to_string());
        Ok(())
    }

    /// Closes our copy of the write end: from now on the reader sees EOF once the child
    /// has written its line or died.
    pub fn spawned(self) -> ReadyReader {
        drop(self.writer);
        self.reader
    }
}

impl ReadyReader {
    /// Waits for the child's line: `Ok(())` for `OK`, else the child's message (or `None`
    /// if it died without a word).
    pub fn wait(self) -> Result<(), Option<String>> {
        let mut line = String::new();
        let _ = BufReader::new(self.0).read_line(&mut line);
        match line.trim_end() {
            "OK" => Ok(()),
            l => Err(l.strip_prefix("ERR ").map(str::to_string)),
        }
    }
}

/// The child's end: one line, once.
pub struct ReadyWriter(Option<File>);

/// Whether `fd` is open and a pipe (FIFO).
fn is_pipe(fd: RawFd) -> bool {
    // SAFETY: fstat only reads the fd's metadata into `st`; an fd that is not open fails
    // with EBADF and nothing else happens.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is a valid, writable stat buffer for the duration of the call.
    let r = unsafe { libc::fstat(fd, &mut st) };
    r == 0 && (st.st_mode & libc::S_IFMT) == libc::S_IFIFO
}

impl ReadyWriter {
    /// The write end our parent passed, if [`READY_FD_ENV`] names an open pipe above the
    /// standard streams; the variable is removed and the fd made close-on-exec, so nothing
    /// we start inherits it.
    pub fn from_env() -> ReadyWriter {
        let fd = std::env::var(READY_FD_ENV)
            .ok()
            .and_then(|v| v.parse::<RawFd>().ok());
        std::env::remove_var(READY_FD_ENV);
        let Some(fd) = fd.filter(|fd| *fd > 2 && is_pipe(*fd)) else {
            return ReadyWriter(None);
        };
        // SAFETY: our parent left this fd open for us alone and named it in the
        // environment (which we just removed); it is an open pipe, and nothing else in
        // this process owns or closes it.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        let _ = fcntl(owned.as_fd(), FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC));
        ReadyWriter(Some(File::from(owned)))
    }

    /// Whether there is a parent waiting.
    pub fn is_waited_for(&self) -> bool {
        self.0.is_some()
    }

    /// Reports success.
    pub fn ok(&mut self) {
        self.send("OK");
    }

    /// Reports a failure (one line).
    pub fn err(&mut self, msg: &dyn std::fmt::Display) {
        self.send(&format!("ERR {msg}"));
    }

    fn send(&mut self, line: &str) {
        if let Some(mut f) = self.0.take() {
            let _ = writeln!(f, "{}", line.replace('\n', " "));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_pipe_is_trusted() {
        let f = File::open("/dev/null").unwrap();
        assert!(!is_pipe(f.as_raw_fd()));
        assert!(!is_pipe(9999));
        let p = ReadyPipe::new().unwrap();
        assert!(is_pipe(p.writer.as_raw_fd()));
        assert!(is_pipe(p.reader.0.as_raw_fd()));
    }

    #[test]
    fn both_ends_are_close_on_exec_until_passed() {
        let p = ReadyPipe::new().unwrap();
        for fd in [p.writer.as_fd(), p.reader.0.as_fd()] {
            let flags = fcntl(fd, FcntlArg::F_GETFD).unwrap();
            assert_ne!(flags & libc::FD_CLOEXEC, 0);
        }
    }

    #[test]
    fn a_child_reports_ok_or_err_and_silence_is_none() {
        for (script, want) in [
            ("echo OK >&$FD", Ok(())),
            (
                "echo 'ERR no kernel' >&$FD",
                Err(Some("no kernel".to_string())),
            ),
            ("exit 3", Err(None)),
        ] {
            let p = ReadyPipe::new().unwrap();
            let mut cmd = Command::new("bash");
            p.pass_to(&mut cmd).unwrap();
            let fd = p.writer.as_raw_fd();
            cmd.args(["-c", &script.replace("$FD", &fd.to_string())]);
            let mut child = cmd.spawn().unwrap();
            let reader = p.spawned();
            assert_eq!(reader.wait(), want, "{script}");
            child.wait().unwrap();
        }
    }
}
