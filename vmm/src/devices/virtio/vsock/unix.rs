//! The hybrid vsock backend: guest vsock streams carried over host Unix sockets, compatible
//! with Firecracker and Cloud Hypervisor.
//!
//! - Host → guest: a host process connects to the Unix socket `P` and writes
//!   `CONNECT <port>\n` (keyword in any case, decimal port, the line at most
//!   [`MAX_CONNECT_LINE`] bytes, within [`HANDSHAKE_TIMEOUT`]; anything else and the stream
//!   is dropped). When the guest accepts, the host reads `OK <local port>\n`, and raw stream
//!   bytes from then on; if the guest refuses, the stream is closed.
//! - Guest → host: a guest connection to host port `N` becomes a connection to the Unix
//!   socket `P_N`; if nothing listens there the guest gets RST.
//!
//! Every socket is non-blocking and watched by one inner epoll set, whose fd is what the
//! event loop polls ([`AsRawFd`]). A timerfd in that set serves both the handshake timeout
//! and the muxer's deadlines. Interest is level-triggered and set from what the muxer wants
//! ([`VsockBackend::set_interest`]); hangups and errors, which epoll reports whatever the
//! interest, are reported once and the socket then leaves the epoll set.

use std::collections::{HashMap, VecDeque};
use std::ffi::OsString;
use std::io::{self, Read};
use std::net::Shutdown;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use log::{debug, warn};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::timerfd::TimerFd;

use super::backend::{BackendEvent, StreamId, VsockBackend};
use super::muxer::MAX_CONNECTIONS;

/// Longest `CONNECT <port>\n` line accepted, newline included.
pub const MAX_CONNECT_LINE: usize = 32;
/// How long a host peer has to send its `CONNECT` line.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(2);
/// Most host peers still sending their `CONNECT` line; more are dropped at once.
const MAX_HANDSHAKES: usize = 64;
/// Largest number of `epoll_wait` events handled per [`VsockBackend::poll`]; more stay ready
/// and make the fd readable again.
const EVENT_BATCH: usize = 64;

const TOKEN_LISTENER: u64 = 0;
const TOKEN_TIMER: u64 = 1;
const FIRST_STREAM_ID: StreamId = 16;

/// Errors setting up the Unix socket backend.
#[derive(Debug, thiserror::Error)]
pub enum UnixBackendError {
    #[error("vsock socket path {0} exists and is not a socket; remove it or choose another path")]
    NotASocket(PathBuf),
    #[error("cannot remove stale vsock socket {0}: {1}")]
    RemoveStale(PathBuf, io::Error),
    #[error("cannot listen on vsock socket {0}: {1}")]
    Bind(PathBuf, io::Error),
    #[error("cannot create the vsock backend's epoll set: {0}")]
    Epoll(io::Error),
    #[error("cannot create the vsock backend's timer: {0}")]
    Timer(io::Error),
}

struct Stream {
    sock: UnixStream,
    /// `Some(line so far)` until the host peer's `CONNECT` line is complete.
    handshake: Option<Vec<u8>>,
    /// Our own bytes (the `OK` line) the socket did not take yet; sent before anything else.
    out: Vec<u8>,
    /// `shutdown_write` was asked while `out` was not empty.
    shut_pending: bool,
    /// What the muxer wants: (readable, writable).
    want: (bool, bool),
    /// The interest registered in epoll; `None` once removed after a hangup.
    registered: Option<EventSet>,
}

impl Stream {
    fn wanted_events(&self) -> EventSet {
        let mut ev = EventSet::empty();
        if self.handshake.is_some() || self.want.0 {
            ev |= EventSet::IN;
        }
        if self.want.1 || !self.out.is_empty() {
            ev |= EventSet::OUT;
        }
        ev
    }

    /// Writes what is left of `out`; true when it is all gone.
    fn flush_out(&mut self) -> bool {
        while !self.out.is_empty() {
            match send(&self.sock, &self.out) {
                Ok(0) => return false,
                Ok(n) => {
                    self.out.drain(..n);
                }
                Err(_) => return false,
            }
        }
        if self.shut_pending {
            self.shut_pending = false;
            let _ = self.sock.shutdown(Shutdown::Write);
        }
        true
    }
}

/// The hybrid vsock backend for one VM.
pub struct UnixBackend {
    path: PathBuf,
    listener: UnixListener,
    listener_paused: bool,
    epoll: Epoll,
    timer: TimerFd,
    timer_set: Option<Instant>,
    muxer_deadline: Option<Instant>,
    handshake_timeout: Duration,
    /// Handshake deadlines, in order.
    handshakes: VecDeque<(Instant, StreamId)>,
    streams: HashMap<StreamId, Stream>,
    next_id: StreamId,
    ready: Vec<EpollEvent>,
}

/// A `CONNECT <port>` line (newline stripped) to its port.
fn parse_connect(line: &[u8]) -> Option<u32> {
    let line = std::str::from_utf8(line).ok()?.trim_end_matches('\r');
    let mut words = line.split_ascii_whitespace();
    let (keyword, port) = (words.next()?, words.next()?);
    if words.next().is_some()
        || !keyword.eq_ignore_ascii_case("connect")
        || !port.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    port.parse().ok()
}

/// `send(2)` with `MSG_NOSIGNAL`: a host peer that went away yields `EPIPE`, never a
/// SIGPIPE that would kill the VMM if its binary did not ignore the signal.
fn send(sock: &UnixStream, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for reads of `buf.len()` bytes for the duration of the call,
    // and the fd is owned by `sock`. The result is checked.
    let n = unsafe {
        libc::send(
            sock.as_raw_fd(),
            buf.as_ptr().cast::<libc::c_void>(),
            buf.len(),
            libc::MSG_NOSIGNAL,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    // Non-negative and at most `buf.len()`.
    Ok(n as usize)
}

/// `connect(2)` on a non-blocking socket, so that a host listener with a full backlog
/// refuses (`EAGAIN`) instead of stalling the event loop.
fn connect_nonblocking(path: &Path) -> io::Result<UnixStream> {
    let bytes = path.as_os_str().as_bytes();
    // SAFETY: sockaddr_un is plain data, for which all-zeroes is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (d, &s) in addr.sun_path.iter_mut().zip(bytes) {
        *d = s as libc::c_char;
    }
    let len = std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1;
    // SAFETY: plain syscall with constant arguments; the result is checked.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just created and is owned by nobody else; the stream closes it.
    let sock = unsafe { UnixStream::from_raw_fd(fd) };
    // SAFETY: `addr` is a valid sockaddr_un that outlives the call and `len` does not exceed
    // its size (checked against sun_path above).
    let ret = unsafe {
        libc::connect(
            fd,
            std::ptr::addr_of!(addr).cast::<libc::sockaddr>(),
            len as libc::socklen_t,
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(sock)
}

fn nonblocking_timerfd() -> io::Result<TimerFd> {
    // SAFETY: plain syscall with constant arguments; the result is checked.
    let fd = unsafe {
        libc::timerfd_create(
            libc::CLOCK_MONOTONIC,
            libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a timerfd we just created and own.
    Ok(unsafe { TimerFd::from_raw_fd(fd) })
}

impl UnixBackend {
    /// Listens on `path`, replacing a stale socket left there by an earlier VMM. The socket
    /// file is removed again when the backend is dropped.
    pub fn new(path: impl Into<PathBuf>) -> Result<Self, UnixBackendError> {
        let path = path.into();
        if let Ok(meta) = std::fs::symlink_metadata(&path) {
            if !meta.file_type().is_socket() {
                return Err(UnixBackendError::NotASocket(path));
            }
            std::fs::remove_file(&path)
                .map_err(|e| UnixBackendError::RemoveStale(path.clone(), e))?;
        }
        let listener =
            UnixListener::bind(&path).map_err(|e| UnixBackendError::Bind(path.clone(), e))?;
        let backend = listener
            .set_nonblocking(true)
            .map_err(|e| UnixBackendError::Bind(path.clone(), e))
            .and_then(|()| Self::with_listener(path.clone(), listener));
        if backend.is_err() {
            let _ = std::fs::remove_file(&path);
        }
        backend
    }

    fn with_listener(path: PathBuf, listener: UnixListener) -> Result<Self, UnixBackendError> {
        let epoll = Epoll::new().map_err(UnixBackendError::Epoll)?;
        let timer = nonblocking_timerfd().map_err(UnixBackendError::Timer)?;
        let backend = Self {
            path,
            listener,
            listener_paused: false,
            epoll,
            timer,
            timer_set: None,
            muxer_deadline: None,
            handshake_timeout: HANDSHAKE_TIMEOUT,
            handshakes: VecDeque::new(),
            streams: HashMap::new(),
            next_id: FIRST_STREAM_ID,
            ready: vec![EpollEvent::default(); EVENT_BATCH],
        };
        for (fd, token) in [
            (backend.listener.as_raw_fd(), TOKEN_LISTENER),
            (backend.timer.as_raw_fd(), TOKEN_TIMER),
        ] {
            backend
                .epoll
                .ctl(
                    ControlOperation::Add,
                    fd,
                    EpollEvent::new(EventSet::IN, token),
                )
                .map_err(UnixBackendError::Epoll)?;
        }
        Ok(backend)
    }

    /// The socket path `P`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Changes [`HANDSHAKE_TIMEOUT`] (tests).
    pub fn set_handshake_timeout(&mut self, timeout: Duration) {
        self.handshake_timeout = timeout;
    }

    fn add_stream(&mut self, sock: UnixStream, handshake: bool) -> io::Result<StreamId> {
        let id = self.next_id;
        self.next_id += 1;
        let stream = Stream {
            sock,
            handshake: handshake.then(Vec::new),
            out: Vec::new(),
            shut_pending: false,
            want: (false, false),
            registered: None,
        };
        let events = stream.wanted_events();
        self.epoll.ctl(
            ControlOperation::Add,
            stream.sock.as_raw_fd(),
            EpollEvent::new(events, id),
        )?;
        self.streams.insert(
            id,
            Stream {
                registered: Some(events),
                ..stream
            },
        );
        Ok(id)
    }

    fn remove_stream(&mut self, id: StreamId) {
        if let Some(s) = self.streams.remove(&id) {
            if s.registered.is_some() {
                let _ = self.epoll.ctl(
                    ControlOperation::Delete,
                    s.sock.as_raw_fd(),
                    EpollEvent::default(),
                );
            }
        }
        if self.listener_paused {
            // A file descriptor was freed: try accepting again.
            self.listener_paused = false;
            let _ = self.epoll.ctl(
                ControlOperation::Add,
                self.listener.as_raw_fd(),
                EpollEvent::new(EventSet::IN, TOKEN_LISTENER),
            );
        }
    }

    /// Brings the epoll interest of `id` in line with what it wants.
    fn update_registration(&mut self, id: StreamId) {
        let Some(s) = self.streams.get_mut(&id) else {
            return;
        };
        let Some(current) = s.registered else {
            return;
        };
        let wanted = s.wanted_events();
        if wanted != current {
            match self.epoll.ctl(
                ControlOperation::Modify,
                s.sock.as_raw_fd(),
                EpollEvent::new(wanted, id),
            ) {
                Ok(()) => s.registered = Some(wanted),
                Err(e) => warn!("vsock: cannot change the events polled on a socket: {e}"),
            }
        }
    }

    fn accept_all(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((sock, _)) => {
                    let pending = self
                        .streams
                        .values()
                        .filter(|s| s.handshake.is_some())
                        .count();
                    if pending >= MAX_HANDSHAKES
                        || self.streams.len() >= MAX_CONNECTIONS + MAX_HANDSHAKES
                    {
                        debug!("vsock: too many host connections, dropping one");
                        continue;
                    }
                    if sock.set_nonblocking(true).is_err() {
                        continue;
                    }
                    match self.add_stream(sock, true) {
                        Ok(id) => self
                            .handshakes
                            .push_back((Instant::now() + self.handshake_timeout, id)),
                        Err(e) => warn!("vsock: cannot poll a host connection: {e}"),
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => {}
                Err(e) => {
                    // Out of file descriptors, most likely: the listener would stay
                    // readable and spin the event loop, so stop polling it until a stream
                    // is closed.
                    warn!(
                        "vsock: cannot accept host connections on {}: {e}",
                        self.path.display()
                    );
                    self.listener_paused = true;
                    let _ = self.epoll.ctl(
                        ControlOperation::Delete,
                        self.listener.as_raw_fd(),
                        EpollEvent::default(),
                    );
                    break;
                }
            }
        }
    }

    /// Reads the `CONNECT` line one byte at a time, so that stream bytes the host peer sent
    /// right behind it stay in the socket for the guest.
    fn continue_handshake(
        &mut self,
        id: StreamId,
        evset: EventSet,
        events: &mut Vec<BackendEvent>,
    ) {
        let Some(s) = self.streams.get_mut(&id) else {
            return;
        };
        let Some(line) = s.handshake.as_mut() else {
            return;
        };
        let mut port = None;
        let drop_it;
        loop {
            let mut byte = [0u8; 1];
            match s.sock.read(&mut byte) {
                Ok(0) => drop_it = true,
                Ok(_) if byte[0] == b'\n' => {
                    port = parse_connect(line);
                    drop_it = port.is_none();
                }
                Ok(_) if line.len() + 1 < MAX_CONNECT_LINE => {
                    line.push(byte[0]);
                    continue;
                }
                Ok(_) => drop_it = true,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    drop_it = evset.intersects(EventSet::HANG_UP | EventSet::ERROR);
                }
                Err(_) => drop_it = true,
            }
            break;
        }
        if let Some(port) = port {
            s.handshake = None;
            events.push(BackendEvent::HostConnect { id, port });
            self.update_registration(id);
        } else if drop_it {
            debug!("vsock: dropping a host connection with a bad CONNECT line");
            self.remove_stream(id);
        }
    }

    fn stream_event(&mut self, id: StreamId, evset: EventSet, events: &mut Vec<BackendEvent>) {
        let Some(s) = self.streams.get_mut(&id) else {
            return;
        };
        if s.handshake.is_some() {
            self.continue_handshake(id, evset, events);
            return;
        }
        if evset.intersects(EventSet::HANG_UP | EventSet::ERROR) {
            // Reported whatever the interest: leave the epoll set so it does not spin.
            let _ = self.epoll.ctl(
                ControlOperation::Delete,
                s.sock.as_raw_fd(),
                EpollEvent::default(),
            );
            s.registered = None;
            events.push(BackendEvent::Hangup(id));
            return;
        }
        if evset.contains(EventSet::OUT) && s.flush_out() && s.want.1 {
            events.push(BackendEvent::Writable(id));
        }
        if evset.contains(EventSet::IN) && s.want.0 {
            events.push(BackendEvent::Readable(id));
        }
        self.update_registration(id);
    }

    fn expire_handshakes(&mut self, now: Instant) {
        while let Some(&(when, id)) = self.handshakes.front() {
            if when > now {
                break;
            }
            self.handshakes.pop_front();
            if self.streams.get(&id).is_some_and(|s| s.handshake.is_some()) {
                debug!("vsock: host connection sent no CONNECT line in time");
                self.remove_stream(id);
            }
        }
        // Forget deadlines of handshakes that already finished, so the timer does not
        // wake up for them.
        while let Some(&(_, id)) = self.handshakes.front() {
            if self.streams.get(&id).is_some_and(|s| s.handshake.is_some()) {
                break;
            }
            self.handshakes.pop_front();
        }
    }

    fn rearm_timer(&mut self) {
        let next = match (self.muxer_deadline, self.handshakes.front().map(|h| h.0)) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if next == self.timer_set {
            return;
        }
        self.timer_set = next;
        let res = match next {
            // A zero duration would disarm the timer: wake up almost at once instead.
            Some(t) => {
                let d = t.saturating_duration_since(Instant::now());
                self.timer.reset(d.max(Duration::from_nanos(1)), None)
            }
            None => self.timer.clear(),
        };
        if let Err(e) = res {
            warn!("vsock: cannot arm the backend timer: {e}");
        }
    }
}

impl AsRawFd for UnixBackend {
    fn as_raw_fd(&self) -> RawFd {
        self.epoll.as_raw_fd()
    }
}

impl VsockBackend for UnixBackend {
    fn connect(&mut self, port: u32) -> io::Result<StreamId> {
        let mut path: OsString = self.path.clone().into_os_string();
        path.push(format!("_{port}"));
        let sock = connect_nonblocking(Path::new(&path))?;
        if self.streams.len() >= MAX_CONNECTIONS + MAX_HANDSHAKES {
            return Err(io::Error::other("too many vsock streams"));
        }
        self.add_stream(sock, false)
    }

    fn confirm(&mut self, id: StreamId, local_port: u32) -> io::Result<()> {
        let s = self.streams.get_mut(&id).ok_or(io::ErrorKind::NotFound)?;
        s.out
            .extend_from_slice(format!("OK {local_port}\n").as_bytes());
        s.flush_out();
        self.update_registration(id);
        Ok(())
    }

    fn read(&mut self, id: StreamId, buf: &mut [u8]) -> io::Result<usize> {
        let s = self.streams.get_mut(&id).ok_or(io::ErrorKind::NotFound)?;
        s.sock.read(buf)
    }

    fn write(&mut self, id: StreamId, buf: &[u8]) -> io::Result<usize> {
        let s = self.streams.get_mut(&id).ok_or(io::ErrorKind::NotFound)?;
        if !s.flush_out() {
            self.update_registration(id);
            return Err(io::ErrorKind::WouldBlock.into());
        }
        send(&s.sock, buf)
    }

    fn shutdown_write(&mut self, id: StreamId) {
        if let Some(s) = self.streams.get_mut(&id) {
            if s.out.is_empty() {
                let _ = s.sock.shutdown(Shutdown::Write);
            } else {
                s.shut_pending = true;
            }
        }
    }

    fn close(&mut self, id: StreamId) {
        self.remove_stream(id);
    }

    fn set_interest(&mut self, id: StreamId, read: bool, write: bool) {
        if let Some(s) = self.streams.get_mut(&id) {
            s.want = (read, write);
            self.update_registration(id);
        }
    }

    fn set_timer(&mut self, deadline: Option<Instant>) {
        self.muxer_deadline = deadline;
        self.rearm_timer();
    }

    fn poll(&mut self, events: &mut Vec<BackendEvent>) {
        let mut ready = std::mem::take(&mut self.ready);
        let n = match self.epoll.wait(0, &mut ready) {
            Ok(n) => n,
            Err(e) => {
                if e.kind() != io::ErrorKind::Interrupted {
                    warn!("vsock: epoll_wait failed: {e}");
                }
                0
            }
        };
        for ev in &ready[..n] {
            match ev.data() {
                TOKEN_LISTENER => self.accept_all(),
                TOKEN_TIMER => {
                    // Non-blocking: fails harmlessly if the timer was re-armed meanwhile.
                    let _ = self.timer.wait();
                    self.timer_set = None;
                }
                id => self.stream_event(id, ev.event_set(), events),
            }
        }
        self.ready = ready;
        let now = Instant::now();
        self.expire_handshakes(now);
        if self.muxer_deadline.is_some_and(|t| t <= now) {
            self.muxer_deadline = None;
            events.push(BackendEvent::Timer);
        }
        self.rearm_timer();
    }
}

impl Drop for UnixBackend {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::ffi::OsStringExt;

    #[test]
    fn connect_lines() {
        assert_eq!(parse_connect(b"CONNECT 1234"), Some(1234));
        assert_eq!(parse_connect(b"connect 1024"), Some(1024));
        assert_eq!(parse_connect(b"Connect 5\r"), Some(5));
        assert_eq!(parse_connect(b"CONNECT 4294967295"), Some(u32::MAX));
        for bad in [
            &b"CONNECT"[..],
            b"CONNECT ",
            b"CONNECT 4294967296",
            b"CONNECT +5",
            b"CONNECT -5",
            b"CONNECT 0x10",
            b"CONNECT 5 6",
            b"CONNECTS 5",
            b"OK 5",
            b"",
            b"\xff\xfe 5",
        ] {
            assert_eq!(
                parse_connect(bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn refuses_to_replace_a_regular_file() {
        let dir = std::env::temp_dir().join(format!("vsock-file-{}", std::process::id()));
        std::fs::write(&dir, b"precious").unwrap();
        assert!(matches!(
            UnixBackend::new(&dir),
            Err(UnixBackendError::NotASocket(_))
        ));
        assert_eq!(std::fs::read(&dir).unwrap(), b"precious");
        std::fs::remove_file(&dir).unwrap();
    }

    #[test]
    fn too_long_peer_path_is_refused() {
        let long = PathBuf::from(format!("/tmp/{}", "x".repeat(200)));
        assert_eq!(
            connect_nonblocking(&long).unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
    }

    #[test]
    fn os_string_round_trip_keeps_non_utf8_paths() {
        let p = PathBuf::from(OsString::from_vec(b"/tmp/\xffsock".to_vec()));
        let mut q = p.clone().into_os_string();
        q.push("_5");
        assert_eq!(q.as_bytes(), b"/tmp/\xffsock_5");
    }
}
