//! The API thread: answers JSON-line requests on a Unix socket and acts on the VM only
//! through its `VmControl` (never the device event loop).
//!
//! One thread polls the listening socket, the open connections and a shutdown eventfd;
//! requests are answered one at a time, in order. A connection that sends garbage gets an
//! error response; one that disconnects mid-request is dropped; neither affects the VM.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::{ApiRequest, ApiResponse, ResponseBody, MAX_REQUEST_LINE};
use crate::control::VmControl;

/// At most this many clients at once; more are told so and closed.
const MAX_CONNECTIONS: usize = 16;
/// A client that does not read its response within this time is dropped.
const WRITE_TIMEOUT: Duration = Duration::from_secs(2);

/// Errors starting the API server.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot create the API socket {path}: {err}")]
    Bind { path: PathBuf, err: std::io::Error },
    #[error("the API socket path {0} exists and is not a socket")]
    NotASocket(PathBuf),
    #[error("cannot create the API thread's eventfd: {0}")]
    EventFd(std::io::Error),
    #[error("cannot start the API thread: {0}")]
    Spawn(std::io::Error),
}

/// The running API thread. Dropping it stops the thread and removes the socket file.
pub struct ApiServer {
    path: PathBuf,
    shutdown: Arc<EventFd>,
    thread: Option<JoinHandle<()>>,
}

impl ApiServer {
    /// Binds `path` (mode 0600; a stale socket there is removed first) and answers requests
    /// on a new thread named `api`. When `stop_evt` becomes readable (e.g. written by a
    /// SIGTERM handler) the thread stops the VM as a `stop` request would.
    pub fn start(
        path: &Path,
        control: Arc<VmControl>,
        stop_evt: Option<EventFd>,
    ) -> Result<Self, ServerError> {
        let listener = bind(path)?;
        let shutdown = Arc::new(EventFd::new(EFD_NONBLOCK).map_err(ServerError::EventFd)?);
        let sd = shutdown.clone();
        let thread = std::thread::Builder::new()
            .name("api".into())
            .spawn(move || serve(listener, &control, &sd, stop_evt.as_ref()))
            .map_err(ServerError::Spawn);
        let thread = match thread {
            Ok(t) => t,
            Err(e) => {
                let _ = std::fs::remove_file(path);
                return Err(e);
            }
        };
        Ok(Self {
            path: path.to_path_buf(),
            shutdown,
            thread: Some(thread),
        })
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        let _ = self.shutdown.write(1);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Creates the listening socket with mode 0600, replacing a stale socket file.
fn bind(path: &Path) -> Result<UnixListener, ServerError> {
    let err = |err| ServerError::Bind {
        path: path.to_path_buf(),
        err,
    };
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => std::fs::remove_file(path).map_err(err)?,
        Ok(_) => return Err(ServerError::NotASocket(path.to_path_buf())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    // The socket file gets its mode from the umask at bind time: no window in which it is
    // reachable by others. The umask is per process; threads creating files meanwhile only
    // get stricter modes.
    // SAFETY: umask only swaps the process's file-mode mask; it cannot fail.
    let old = unsafe { libc::umask(0o177) };
    let listener = UnixListener::bind(path);
    // SAFETY: as above, restoring the previous mask.
    unsafe { libc::umask(old) };
    let listener = listener.map_err(err)?;
    let ready = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .and_then(|_| listener.set_nonblocking(true));
    if let Err(e) = ready {
        let _ = std::fs::remove_file(path);
        return Err(err(e));
    }
    Ok(listener)
}

/// One client connection and its unfinished request line.
struct Conn {
    stream: UnixStream,
    buf: Vec<u8>,
}

fn pollfd(fd: RawFd) -> libc::pollfd {
    libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    }
}

/// The API thread's loop: until `shutdown` is readable.
fn serve(
    listener: UnixListener,
    control: &VmControl,
    shutdown: &EventFd,
    stop_evt: Option<&EventFd>,
) {
    crate::seccomp::confine_current(crate::seccomp::ThreadKind::Api);
    let mut conns: Vec<Conn> = Vec::new();
    loop {
        let mut fds = vec![
            pollfd(shutdown.as_raw_fd()),
            pollfd(stop_evt.map_or(-1, |e| e.as_raw_fd())),
            pollfd(listener.as_raw_fd()),
        ];
        fds.extend(conns.iter().map(|c| pollfd(c.stream.as_raw_fd())));
        // SAFETY: `fds` is a valid, initialized array of `fds.len()` pollfds.
        let r = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            log::error!("API thread: poll failed: {e}; the control socket stops answering");
            return;
        }
        if fds[0].revents != 0 {
            return;
        }
        if let (Some(evt), true) = (stop_evt, fds[1].revents != 0) {
            let _ = evt.read();
            log::info!("stop requested by signal");
            control.request_stop();
        }
        for i in (0..conns.len()).rev() {
            if fds[3 + i].revents != 0 && !service(&mut conns[i], control) {
                conns.swap_remove(i);
            }
        }
        if fds[2].revents != 0 {
            accept_all(&listener, &mut conns);
        }
    }
}

/// Accepts every pending connection.
fn accept_all(listener: &UnixListener, conns: &mut Vec<Conn>) {
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                let ok = stream
                    .set_nonblocking(false)
                    .and_then(|_| stream.set_write_timeout(Some(WRITE_TIMEOUT)));
                if ok.is_err() {
                    continue;
                }
                let mut conn = Conn {
                    stream,
                    buf: Vec::new(),
                };
                if conns.len() >= MAX_CONNECTIONS {
                    let msg = format!("too many API connections (at most {MAX_CONNECTIONS})");
                    let _ = send(&mut conn, &ApiResponse::error(msg));
                    continue;
                }
                conns.push(conn);
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

/// Reads what a readable connection has and answers each complete line. Returns false
/// when the connection is finished (closed, broken, or sent an overlong line).
fn service(conn: &mut Conn, control: &VmControl) -> bool {
    let mut chunk = [0u8; 4096];
    let n = match conn.stream.read(&mut chunk) {
        Ok(0) | Err(_) => return false,
        Ok(n) => n,
    };
    conn.buf.extend_from_slice(&chunk[..n]);
    while let Some(end) = conn.buf.iter().position(|&b| b == b'\n') {
        let line: Vec<u8> = conn.buf.drain(..=end).collect();
        let line = &line[..end];
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let response = match std::str::from_utf8(line) {
            Ok(text) => respond(text, control),
            Err(_) => ApiResponse::error("bad request: not UTF-8"),
        };
        if send(conn, &response).is_err() {
            return false;
        }
    }
    if conn.buf.len() > MAX_REQUEST_LINE {
        let msg = format!("bad request: line longer than {MAX_REQUEST_LINE} bytes");
        let _ = send(conn, &ApiResponse::error(msg));
        return false;
    }
    true
}

fn send(conn: &mut Conn, response: &ApiResponse) -> std::io::Result<()> {
    let mut line = response.to_line();
    line.push('\n');
    conn.stream.write_all(line.as_bytes())
}

/// The response to one request line.
pub fn respond(line: &str, control: &VmControl) -> ApiResponse {
    match ApiRequest::parse(line) {
        Ok(req) => handle(req, control),
        Err(e) => ApiResponse::error(format!("bad request: {e}")),
    }
}

/// Carries out one request.
pub fn handle(req: ApiRequest, c: &VmControl) -> ApiResponse {
    let body = match req {
        ApiRequest::Describe {} => ResponseBody::Describe(c.describe()),
        ApiRequest::Metrics {} => ResponseBody::Metrics(c.metrics()),
        ApiRequest::Pause {} => match c.pause() {
            Ok(changed) => ResponseBody::Pause(
                c.state_change(changed, if changed { "paused" } else { "already paused" }),
            ),
            Err(e) => return ApiResponse::error(format!("cannot pause: {e}")),
        },
        ApiRequest::Resume {} => match c.resume() {
            Ok(changed) => ResponseBody::Resume(c.state_change(
                changed,
                if changed {
                    "resumed"
                } else {
                    "already running"
                },
            )),
            Err(e) => return ApiResponse::error(format!("cannot resume: {e}")),
        },
        ApiRequest::Snapshot { dir } => match c.snapshot(&dir) {
            Ok(info) => ResponseBody::Snapshot(info),
            Err(e) => return ApiResponse::error(format!("cannot snapshot: {e}")),
        },
        ApiRequest::Stop {} => {
            let changed = c.request_stop();
            ResponseBody::Stop(c.state_change(
                changed,
                if changed {
                    "stopping"
                } else {
                    "already stopping"
                },
            ))
        }
    };
    ApiResponse::Ok(body)
}
