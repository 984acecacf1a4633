//! Standard streams: pipes or a terminal for the child, and the copy loops
//! between the agent's ends and the client's stdio connections.

use std::fs::File;
use std::io::{self, ErrorKind, Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::time::Duration;

use agent_protocol::{StdioConfig, Stream};
use nix::fcntl::{fcntl, FcntlArg, FdFlag, OFlag};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::pty::{openpty, Winsize};

use crate::process::{AgentStdio, Proc};

/// Errors creating streams.
#[derive(Debug, thiserror::Error)]
pub enum StdioError {
    /// pipe2, openpty or /dev/null failed.
    #[error("cannot create standard streams ({what}): {cause}")]
    Create {
        /// What failed.
        what: &'static str,
        /// Cause.
        cause: io::Error,
    },
}

fn create_err(what: &'static str) -> impl FnOnce(nix::Error) -> StdioError {
    move |e| StdioError::Create {
        what,
        cause: e.into(),
    }
}

/// The child's side: the fds to put on 0, 1 and 2.
#[derive(Debug)]
pub struct ChildStdio {
    /// Raw fds for 0, 1, 2 (owned by `owned`).
    pub fds: [RawFd; 3],
    /// Whether fd 0 is a terminal to make the controlling terminal.
    pub tty: bool,
    /// Keeps the fds open until the child execs; closed in the agent afterwards.
    pub _keep: Vec<OwnedFd>,
}

fn pipe() -> Result<(OwnedFd, OwnedFd), StdioError> {
    nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(create_err("pipe"))
}

fn dev_null() -> Result<OwnedFd, StdioError> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .map(OwnedFd::from)
        .map_err(|cause| StdioError::Create {
            what: "/dev/null",
            cause,
        })
}

fn set_cloexec(fd: &OwnedFd) -> Result<(), StdioError> {
    fcntl(fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC)).map_err(create_err("fcntl"))?;
    Ok(())
}

fn dup(fd: &OwnedFd) -> Result<OwnedFd, StdioError> {
    fd.try_clone()
        .map_err(|cause| StdioError::Create { what: "dup", cause })
}

/// Creates the streams for a new process.
pub fn make_stdio(
    cfg: StdioConfig,
    terminal: bool,
    size: Option<(u16, u16)>,
) -> Result<(ChildStdio, AgentStdio), StdioError> {
    let mut agent = AgentStdio::default();
    if terminal {
        let ws = size.map(|(rows, cols)| Winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        });
        let pty = openpty(ws.as_ref(), None).map_err(create_err("openpty"))?;
        set_cloexec(&pty.master)?;
        set_cloexec(&pty.slave)?;
        if cfg.stdin {
            agent.stdin = Some(dup(&pty.master)?);
        }
        if cfg.stdout {
            agent.stdout = Some(dup(&pty.master)?);
        } else {
            // Nobody reads the terminal: drain it so the process never blocks.
            let out = dup(&pty.master)?;
            let _ = crate::pool::run(move || drain(File::from(out), None, None));
        }
        let s = pty.slave.as_raw_fd();
        agent.tty = Some(Arc::new(pty.master));
        let child = ChildStdio {
            fds: [s; 3],
            tty: true,
            _keep: vec![pty.slave],
        };
        return Ok((child, agent));
    }
    let null = dev_null()?;
    let mut fds = [null.as_raw_fd(); 3];
    let mut owned = vec![];
    if cfg.stdin {
        let (r, w) = pipe()?;
        fds[0] = r.as_raw_fd();
        owned.push(r);
        agent.stdin = Some(w);
    }
    if cfg.stdout {
        let (r, w) = pipe()?;
        fds[1] = w.as_raw_fd();
        owned.push(w);
        agent.stdout = Some(r);
    }
    if cfg.stderr {
        let (r, w) = pipe()?;
        fds[2] = w.as_raw_fd();
        owned.push(w);
        agent.stderr = Some(r);
    }
    owned.push(null);
    Ok((
        ChildStdio {
            fds,
            tty: false,
            _keep: owned,
        },
        agent,
    ))
}

fn read_retry(f: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match f.read(buf) {
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            // A terminal master reads EIO once every slave fd is closed.
            Err(e) if e.raw_os_error() == Some(libc::EIO) => return Ok(0),
            r => return r,
        }
    }
}

/// Output that orphaned descendants keep open is abandoned once the process
/// has exited and the stream stayed idle this long.
const IDLE_AFTER_EXIT: Duration = Duration::from_secs(2);

/// Copies `src` to `dst` until EOF (or, with `proc`, until the process has
/// exited and `src` stayed idle for [`IDLE_AFTER_EXIT`]: a background child
/// that inherited the pipe must not hold the exit report forever). Once `dst`
/// fails, keeps reading and discarding so the process never blocks.
fn drain(mut src: File, mut dst: Option<&Stream>, proc: Option<&Proc>) {
    let mut buf = vec![0u8; 32 * 1024];
    let mut idle = Duration::ZERO;
    let tick = Duration::from_millis(500);
    loop {
        if let Some(p) = proc {
            let mut fds = [PollFd::new(src.as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, PollTimeout::from(tick.as_millis() as u16)) {
                Ok(0) => {
                    if p.exit_status().is_some() {
                        idle += tick;
                        if idle >= IDLE_AFTER_EXIT {
                            return;
                        }
                    }
                    continue;
                }
                Ok(_) | Err(nix::errno::Errno::EINTR) => idle = Duration::ZERO,
                Err(_) => return,
            }
        }
        match read_retry(&mut src, &mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if let Some(mut d) = dst {
                    if d.write_all(&buf[..n]).is_err() {
                        dst = None;
                    }
                }
            }
        }
    }
}

/// Serves an output stream: copies everything to `conn`, signals EOF, then
/// marks the stream delivered on `proc`.
pub fn serve_output(proc: &Proc, fd: OwnedFd, conn: Stream) {
    drain(File::from(fd), Some(&conn), Some(proc));
    let _ = conn.shutdown_write();
    proc.output_done();
    // Give the client time to read to EOF and close its end, so that closing
    // ours never discards data still queued for it.
    let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
    let mut b = [0u8; 64];
    while matches!((&conn).read(&mut b), Ok(n) if n > 0) {}
}

/// Serves stdin: copies `conn` into the process until the client closes it
/// (then the pipe is closed too) or the process exits.
pub fn serve_input(proc: &Proc, fd: OwnedFd, conn: Stream) {
    if let Ok(c) = conn.try_clone() {
        proc.set_stdin_conn(c);
    }
    let mut dst = File::from(fd);
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        let n = match (&conn).read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        if dst.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    // Dropping `dst` closes the pipe: the process reads EOF. (With a
    // terminal this only closes our dup of the master.)
}

/// Sets a terminal's window size.
pub fn resize(tty: &OwnedFd, rows: u16, cols: u16) -> io::Result<()> {
    let ws = Winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one `winsize` from the valid pointer; `tty` is
    // an open fd for the duration of the call.
    let r = unsafe { libc::ioctl(tty.as_raw_fd(), libc::TIOCSWINSZ, &ws as *const Winsize) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
