//! Host ends of a container process's standard streams: the fds a caller gave us (conmon's
//! pipes, a terminal) or a pty whose master went to `--console-socket`, copied to and from
//! the agent's stdio connections by one thread per stream.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::thread::JoinHandle;

use agent_protocol::{
    attach_stdio, ClientError, Endpoint, StdioConfig, Stream, StreamId, StreamKind,
};
use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};

/// Errors setting up a process's streams.
#[derive(Debug, thiserror::Error)]
pub enum StdioError {
    #[error("cannot duplicate a standard stream: {0}")]
    Dup(std::io::Error),
    #[error("cannot create a pty: {0}")]
    Pty(nix::Error),
    #[error("cannot send the pty to console socket {path}: {err}")]
    ConsoleSocket { path: String, err: std::io::Error },
    #[error("cannot attach the process's {stream:?}: {err}")]
    Attach {
        stream: StreamKind,
        err: ClientError,
    },
}

/// The host fds a process's streams are copied to/from (`None`: not attached, the guest
/// side gets /dev/null).
#[derive(Debug, Default)]
pub struct HostIo {
    pub stdin: Option<OwnedFd>,
    pub stdout: Option<OwnedFd>,
    pub stderr: Option<OwnedFd>,
}

/// Whether `fd` is /dev/null (or not open at all): nothing worth attaching.
fn is_null(fd: BorrowedFd<'_>) -> bool {
    match nix::sys::stat::fstat(fd) {
        Ok(st) => (st.st_mode & libc::S_IFMT) == libc::S_IFCHR && st.st_rdev == libc::makedev(1, 3),
        Err(_) => true,
    }
}

fn dup_unless_null(fd: BorrowedFd<'_>) -> Result<Option<OwnedFd>, StdioError> {
    if is_null(fd) {
        return Ok(None);
    }
    fd.try_clone_to_owned().map(Some).map_err(StdioError::Dup)
}

impl HostIo {
    /// This process's own stdin/stdout/stderr, skipping any that is /dev/null.
    pub fn inherited() -> Result<HostIo, StdioError> {
        Ok(HostIo {
            stdin: dup_unless_null(std::io::stdin().as_fd())?,
            stdout: dup_unless_null(std::io::stdout().as_fd())?,
            stderr: dup_unless_null(std::io::stderr().as_fd())?,
        })
    }

    /// A new pty: the master goes to the console socket (SCM_RIGHTS, as runc does), the
    /// slave becomes the process's stdin and output (the guest side is its own terminal).
    pub fn console(socket: &Path) -> Result<HostIo, StdioError> {
        let pty = nix::pty::openpty(None, None).map_err(StdioError::Pty)?;
        let sock_err = |err| StdioError::ConsoleSocket {
            path: socket.display().to_string(),
            err,
        };
        let sock = UnixStream::connect(socket).map_err(sock_err)?;
        let fds = [std::os::fd::AsRawFd::as_raw_fd(&pty.master)];
        let name = b"/dev/ptmx";
        let iov = [std::io::IoSlice::new(name)];
        sendmsg::<()>(
            std::os::fd::AsRawFd::as_raw_fd(&sock),
            &iov,
            &[ControlMessage::ScmRights(&fds)],
            MsgFlags::empty(),
            None,
        )
        .map_err(|e| sock_err(e.into()))?;
        drop(pty.master);
        let slave = pty.slave;
        // The guest pty does the line discipline; the host one just passes bytes.
        if let Ok(mut t) = nix::sys::termios::tcgetattr(&slave) {
            nix::sys::termios::cfmakeraw(&mut t);
            let _ = nix::sys::termios::tcsetattr(&slave, nix::sys::termios::SetArg::TCSANOW, &t);
        }
        Ok(HostIo {
            stdin: Some(slave.try_clone().map_err(StdioError::Dup)?),
            stdout: Some(slave),
            stderr: None,
        })
    }

    /// Which streams the agent should connect.
    pub fn config(&self) -> StdioConfig {
        StdioConfig {
            stdin: self.stdin.is_some(),
            stdout: self.stdout.is_some(),
            stderr: self.stderr.is_some(),
        }
    }
}

/// Copy threads of one process; join [`Pumps::outputs`] to know all output was written.
pub struct Pumps {
    pub outputs: Vec<JoinHandle<()>>,
}

fn copy_out(mut from: Stream, to: OwnedFd) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut to = File::from(to);
        let mut buf = vec![0u8; 64 << 10];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                // A reader that went away must not stop us draining the guest side.
                Ok(n) => {
                    let _ = to.write_all(&buf[..n]);
                }
            }
        }
    })
}

fn copy_in(from: OwnedFd, mut to: Stream) {
    std::thread::spawn(move || {
        let mut from = File::from(from);
        let mut buf = vec![0u8; 64 << 10];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = to.shutdown_write();
    });
}

/// Connects the agent's streams of `(container_id, exec_id)` to `io` and starts copying.
pub fn attach(
    endpoint: &Endpoint,
    container_id: &str,
    exec_id: Option<&str>,
    io: HostIo,
) -> Result<Pumps, StdioError> {
    let connect = |stream| {
        attach_stdio(
            endpoint,
            StreamId {
                container_id: container_id.into(),
                exec_id: exec_id.map(Into::into),
                stream,
            },
        )
        .map_err(|err| StdioError::Attach { stream, err })
    };
    let mut outputs = Vec::new();
    if let Some(fd) = io.stdout {
        outputs.push(copy_out(connect(StreamKind::Stdout)?, fd));
    }
    if let Some(fd) = io.stderr {
        outputs.push(copy_out(connect(StreamKind::Stderr)?, fd));
    }
    if let Some(fd) = io.stdin {
        copy_in(fd, connect(StreamKind::Stdin)?);
    }
    Ok(Pumps { outputs })
}
