//! An in-memory [`VsockBackend`] for muxer and device tests: host streams are byte queues
//! the test fills and inspects, events are level-triggered on the interest the muxer set,
//! like the real backend's epoll set.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::time::Instant;

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::backend::{BackendEvent, StreamId, VsockBackend};

/// One fake host stream.
#[derive(Default)]
pub struct TestStream {
    /// Host port (guest-initiated) or guest port (host-initiated).
    pub port: u32,
    /// Bytes the muxer wrote (what the host peer received).
    pub received: Vec<u8>,
    /// Bytes the host peer sent, not yet read by the muxer.
    pub to_guest: VecDeque<u8>,
    /// The host peer shut down its write side (the muxer reads EOF after `to_guest`).
    pub eof: bool,
    /// How many more bytes a write may take before `WouldBlock` (`None`: unlimited).
    pub write_room: Option<usize>,
    /// `confirm` was called with this local port.
    pub confirmed: Option<u32>,
    /// `shutdown_write` was called.
    pub write_shut: bool,
    /// `close` was called.
    pub closed: bool,
    /// The peer is gone (writes fail with EPIPE).
    pub hung_up: bool,
    hup_reported: bool,
    interest: (bool, bool),
}

/// The fake host side.
pub struct TestBackend {
    evt: EventFd,
    next_id: StreamId,
    /// Host ports with a listening service (guest connections elsewhere are refused).
    pub listening: HashSet<u32>,
    /// Every stream ever opened, closed ones included.
    pub streams: HashMap<StreamId, TestStream>,
    /// Host connection requests not yet reported.
    pending_connects: VecDeque<(StreamId, u32)>,
    /// The deadline the muxer asked for.
    pub timer: Option<Instant>,
}

impl Default for TestBackend {
    fn default() -> Self {
        Self::new()
    }
}

impl TestBackend {
    /// A backend where nothing listens.
    pub fn new() -> Self {
        Self {
            evt: EventFd::new(EFD_NONBLOCK).unwrap(),
            next_id: 1,
            listening: HashSet::new(),
            streams: HashMap::new(),
            pending_connects: VecDeque::new(),
            timer: None,
        }
    }

    fn new_stream(&mut self, port: u32) -> StreamId {
        let id = self.next_id;
        self.next_id += 1;
        self.streams.insert(
            id,
            TestStream {
                port,
                ..Default::default()
            },
        );
        id
    }

    /// A host peer connects and asks for guest port `port`.
    pub fn host_connect(&mut self, port: u32) -> StreamId {
        let id = self.new_stream(port);
        self.pending_connects.push_back((id, port));
        id
    }

    /// The host peer of `id` sends `data`.
    pub fn host_send(&mut self, id: StreamId, data: &[u8]) {
        self.stream(id).to_guest.extend(data);
    }

    /// The host peer of `id` shuts down its write side.
    pub fn host_shutdown(&mut self, id: StreamId) {
        self.stream(id).eof = true;
    }

    /// The host peer of `id` closes the stream.
    pub fn host_close(&mut self, id: StreamId) {
        let s = self.stream(id);
        s.eof = true;
        s.hung_up = true;
    }

    /// The stream `id`.
    pub fn stream(&mut self, id: StreamId) -> &mut TestStream {
        self.streams.get_mut(&id).expect("no such test stream")
    }

    /// The streams opened by guest connections to `port`, in order.
    pub fn streams_to(&self, port: u32) -> Vec<StreamId> {
        let mut v: Vec<_> = self
            .streams
            .iter()
            .filter(|(_, s)| s.port == port)
            .map(|(&id, _)| id)
            .collect();
        v.sort();
        v
    }

    fn live(&mut self, id: StreamId) -> io::Result<&mut TestStream> {
        match self.streams.get_mut(&id) {
            Some(s) if !s.closed => Ok(s),
            _ => Err(io::Error::from(io::ErrorKind::NotFound)),
        }
    }
}

impl AsRawFd for TestBackend {
    fn as_raw_fd(&self) -> RawFd {
        self.evt.as_raw_fd()
    }
}

impl VsockBackend for TestBackend {
    fn connect(&mut self, port: u32) -> io::Result<StreamId> {
        if !self.listening.contains(&port) {
            return Err(io::Error::from(io::ErrorKind::ConnectionRefused));
        }
        Ok(self.new_stream(port))
    }

    fn confirm(&mut self, id: StreamId, local_port: u32) -> io::Result<()> {
        let s = self.live(id)?;
        if s.hung_up {
            return Err(io::Error::from(io::ErrorKind::BrokenPipe));
        }
        s.confirmed = Some(local_port);
        Ok(())
    }

    fn read(&mut self, id: StreamId, buf: &mut [u8]) -> io::Result<usize> {
        let s = self.live(id)?;
        if s.to_guest.is_empty() {
            return if s.eof {
                Ok(0)
            } else {
                Err(io::Error::from(io::ErrorKind::WouldBlock))
            };
        }
        let n = buf.len().min(s.to_guest.len());
        for (d, b) in buf.iter_mut().zip(s.to_guest.drain(..n)) {
            *d = b;
        }
        Ok(n)
    }

    fn write(&mut self, id: StreamId, buf: &[u8]) -> io::Result<usize> {
        let s = self.live(id)?;
        if s.hung_up || s.write_shut {
            return Err(io::Error::from(io::ErrorKind::BrokenPipe));
        }
        let n = s.write_room.map_or(buf.len(), |r| r.min(buf.len()));
        if n == 0 && !buf.is_empty() {
            return Err(io::Error::from(io::ErrorKind::WouldBlock));
        }
        if let Some(r) = &mut s.write_room {
            *r -= n;
        }
        s.received.extend_from_slice(&buf[..n]);
        Ok(n)
    }

    fn shutdown_write(&mut self, id: StreamId) {
        if let Ok(s) = self.live(id) {
            s.write_shut = true;
        }
    }

    fn close(&mut self, id: StreamId) {
        if let Some(s) = self.streams.get_mut(&id) {
            assert!(!s.closed, "stream {id} closed twice");
            s.closed = true;
        }
    }

    fn set_interest(&mut self, id: StreamId, read: bool, write: bool) {
        if let Ok(s) = self.live(id) {
            s.interest = (read, write);
        }
    }

    fn set_timer(&mut self, deadline: Option<Instant>) {
        self.timer = deadline;
    }

    fn poll(&mut self, events: &mut Vec<BackendEvent>) {
        for (id, port) in self.pending_connects.drain(..) {
            events.push(BackendEvent::HostConnect { id, port });
        }
        let mut ids: Vec<_> = self.streams.keys().copied().collect();
        ids.sort();
        for id in ids {
            let s = &mut self.streams.get_mut(&id).unwrap();
            if s.closed {
                continue;
            }
            if s.hung_up {
                if !s.hup_reported {
                    s.hup_reported = true;
                    events.push(BackendEvent::Hangup(id));
                }
                continue;
            }
            if s.interest.0 && (!s.to_guest.is_empty() || s.eof) {
                events.push(BackendEvent::Readable(id));
            }
            if s.interest.1 && s.write_room != Some(0) {
                events.push(BackendEvent::Writable(id));
            }
        }
        if self.timer.is_some_and(|t| t <= Instant::now()) {
            events.push(BackendEvent::Timer);
        }
    }
}
