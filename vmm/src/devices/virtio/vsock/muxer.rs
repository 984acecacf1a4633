//! The vsock muxer: routes guest packets to connections, host events to connections, and
//! picks what the guest receives next. No virtqueues here (see `device.rs`), and no sockets
//! (see [`VsockBackend`]).
//!
//! Connections are keyed by `(local_port, peer_port)`: the host-side port (the guest's
//! destination port for guest-initiated streams, a port we allocate from 2^30 for
//! host-initiated ones) and the guest's port.
//!
//! # What the guest receives, and in which order
//!
//! The device asks [`Muxer::recv_pkt`] for a packet whenever it holds an RX buffer.
//! Replies that belong to no connection (RST for an unknown port or a refused connection)
//! wait in a short queue, served first; when it is full further such replies are dropped
//! (the guest's connect then times out) rather than letting a guest grow our memory.
//! Everything else is state in the connection ([`Connection::has_rx`]), and connections
//! with something to say wait in a FIFO, at most once each, so the FIFO is bounded by the
//! connection cap and streams are served round-robin.
//!
//! # Time
//!
//! Host-initiated connections the guest does not accept in [`CONNECT_TIMEOUT`], and
//! connections the guest does not finish closing in [`CLOSE_TIMEOUT`], are reset. Both
//! timeouts have the same length, so deadlines are pushed in increasing order and a FIFO
//! suffices; stale entries (the connection moved on) are skipped when they expire.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use log::debug;

use super::backend::{BackendEvent, StreamId, VsockBackend};
use super::connection::{Connection, State};
use super::packet::{op, VsockHeader, TYPE_STREAM};

/// The host's CID.
pub const HOST_CID: u64 = 2;
/// Most connections one device holds at once (as Firecracker).
pub const MAX_CONNECTIONS: usize = 1023;
/// First local port for host-initiated connections; they are taken from `[2^30, 2^31)`.
pub const FIRST_LOCAL_PORT: u32 = 1 << 30;
/// How long the guest has to accept a host-initiated connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the guest has to answer our SHUTDOWN(SEND|RCV) with RST.
pub const CLOSE_TIMEOUT: Duration = CONNECT_TIMEOUT;
/// Most queued replies that belong to no connection.
const MAX_LOOSE_RX: usize = 256;

type ConnKey = (u32, u32);

/// The packet router between the guest and a [`VsockBackend`].
pub struct Muxer<B: VsockBackend> {
    guest_cid: u64,
    backend: B,
    conns: HashMap<ConnKey, Connection>,
    by_stream: HashMap<StreamId, ConnKey>,
    /// Connections that may have a packet for the guest (each at most once).
    rxq: VecDeque<ConnKey>,
    /// RSTs for packets that match no connection.
    loose_rx: VecDeque<VsockHeader>,
    /// Timeouts: when, which connection, and the state it must still be in to time out.
    deadlines: VecDeque<(Instant, ConnKey, State)>,
    timer_armed: Option<Instant>,
    timeout: Duration,
    next_local_port: u32,
    events: Vec<BackendEvent>,
}

impl<B: VsockBackend> Muxer<B> {
    /// A muxer for a guest with CID `guest_cid` (at least 3), over `backend`.
    pub fn new(guest_cid: u64, backend: B) -> Self {
        Self {
            guest_cid,
            backend,
            conns: HashMap::new(),
            by_stream: HashMap::new(),
            rxq: VecDeque::new(),
            loose_rx: VecDeque::new(),
            deadlines: VecDeque::new(),
            timer_armed: None,
            timeout: CONNECT_TIMEOUT,
            next_local_port: FIRST_LOCAL_PORT,
            events: Vec::new(),
        }
    }

    /// Changes [`CONNECT_TIMEOUT`] and [`CLOSE_TIMEOUT`] (tests).
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// The guest's CID.
    pub fn guest_cid(&self) -> u64 {
        self.guest_cid
    }

    /// The backend (its fd is what the event loop watches).
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// The backend, mutably (tests drive the host side through it).
    pub fn backend_mut(&mut self) -> &mut B {
        &mut self.backend
    }

    /// Number of live connections.
    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    /// Whether [`Muxer::recv_pkt`] may have something (it can still come back empty).
    pub fn has_pending_rx(&self) -> bool {
        !self.loose_rx.is_empty() || !self.rxq.is_empty()
    }

    /// A packet the guest sent on the TX queue, its payload in `data`.
    pub fn send_pkt(&mut self, hdr: &VsockHeader, data: &[u8]) {
        if hdr.src_cid != self.guest_cid {
            // Forged source: there is nobody sensible to answer.
            debug!("vsock: dropping packet from CID {}", hdr.src_cid);
            return;
        }
        if hdr.dst_cid != HOST_CID || hdr.type_ != TYPE_STREAM {
            // Another VM, or a socket type we do not carry (e.g. SEQPACKET): refuse.
            self.reply_rst(hdr);
            return;
        }
        let key = (hdr.dst_port, hdr.src_port);
        if self.conns.contains_key(&key) {
            if let Some(c) = self.conns.get_mut(&key) {
                c.on_guest_pkt(hdr, data, &mut self.backend);
            }
            self.refresh(key);
            return;
        }
        match hdr.op {
            op::REQUEST => self.guest_connect(hdr),
            // Never answer a reset with a reset.
            op::RST => {}
            _ => self.reply_rst(hdr),
        }
    }

    /// The guest sent a packet with header `hdr` whose payload was unusable (bad chain):
    /// reset the connection it belongs to, as data was lost.
    pub fn guest_error(&mut self, hdr: &VsockHeader) {
        if hdr.src_cid != self.guest_cid {
            return;
        }
        let key = (hdr.dst_port, hdr.src_port);
        match self.conns.get_mut(&key) {
            Some(c) => {
                c.kill(&mut self.backend);
                self.refresh(key);
            }
            None => self.reply_rst(hdr),
        }
    }

    fn guest_connect(&mut self, hdr: &VsockHeader) {
        if self.conns.len() >= MAX_CONNECTIONS {
            debug!(
                "vsock: connection limit reached, refusing port {}",
                hdr.dst_port
            );
            self.reply_rst(hdr);
            return;
        }
        match self.backend.connect(hdr.dst_port) {
            Ok(stream) => {
                let conn = Connection::guest_initiated(hdr, stream);
                self.insert(conn);
            }
            Err(e) => {
                debug!(
                    "vsock: guest connection to host port {} refused: {e}",
                    hdr.dst_port
                );
                self.reply_rst(hdr);
            }
        }
    }

    fn reply_rst(&mut self, hdr: &VsockHeader) {
        if hdr.op == op::RST || self.loose_rx.len() >= MAX_LOOSE_RX {
            return;
        }
        self.loose_rx.push_back(VsockHeader {
            src_cid: hdr.dst_cid,
            dst_cid: self.guest_cid,
            src_port: hdr.dst_port,
            dst_port: hdr.src_port,
            len: 0,
            type_: hdr.type_,
            op: op::RST,
            flags: 0,
            buf_alloc: 0,
            fwd_cnt: 0,
        });
    }

    fn insert(&mut self, conn: Connection) {
        let key = (conn.local_port, conn.peer_port);
        self.by_stream.insert(conn.stream, key);
        self.conns.insert(key, conn);
        self.refresh(key);
    }

    /// Brings the bookkeeping around connection `key` up to date after it changed: drops
    /// it when finished, schedules its timeout, sets its host-side interest and queues it
    /// for RX.
    fn refresh(&mut self, key: ConnKey) {
        let Some(c) = self.conns.get_mut(&key) else {
            return;
        };
        if c.is_removable() {
            c.kill(&mut self.backend);
            let stream = c.stream;
            self.conns.remove(&key);
            self.by_stream.remove(&stream);
            return;
        }
        if matches!(c.state, State::Connecting | State::Closing) && !c.deadline_set {
            c.deadline_set = true;
            self.deadlines
                .push_back((Instant::now() + self.timeout, key, c.state));
        }
        if c.state != State::Dead {
            self.backend
                .set_interest(c.stream, c.wants_read(), c.wants_write());
        }
        if c.has_rx() && !c.in_rxq {
            c.in_rxq = true;
            self.rxq.push_back(key);
        }
        self.arm_timer();
    }

    fn arm_timer(&mut self) {
        let next = self.deadlines.front().map(|d| d.0);
        if next != self.timer_armed {
            self.timer_armed = next;
            self.backend.set_timer(next);
        }
    }

    /// The next packet for the guest: its header and the length of its payload, which is
    /// in `buf[..len]`. `buf` is the room the guest's RX buffer has for payload.
    pub fn recv_pkt(&mut self, buf: &mut [u8]) -> Option<(VsockHeader, usize)> {
        if let Some(h) = self.loose_rx.pop_front() {
            return Some((h, 0));
        }
        // Each queued connection gets one chance; those that still have something to say
        // go to the back (round-robin), those that have nothing for this buffer wait for
        // the next event.
        for _ in 0..self.rxq.len() {
            let Some(key) = self.rxq.pop_front() else {
                break;
            };
            let Some(c) = self.conns.get_mut(&key) else {
                continue;
            };
            c.in_rxq = false;
            let pkt = c.next_rx(&mut self.backend, buf);
            self.refresh(key);
            if let Some((mut hdr, len)) = pkt {
                hdr.src_cid = HOST_CID;
                hdr.dst_cid = self.guest_cid;
                hdr.len = len as u32;
                return Some((hdr, len));
            }
        }
        None
    }

    /// Handles whatever the backend has to report (its fd was readable), and expired
    /// timeouts.
    pub fn process_backend(&mut self) {
        let mut events = std::mem::take(&mut self.events);
        self.backend.poll(&mut events);
        for ev in events.drain(..) {
            match ev {
                BackendEvent::HostConnect { id, port } => self.host_connect(id, port),
                BackendEvent::Readable(id) => self.with_stream(id, |c, _| c.on_readable()),
                BackendEvent::Writable(id) => self.with_stream(id, |c, b| c.on_writable(b)),
                BackendEvent::Hangup(id) => self.with_stream(id, |c, b| c.on_hangup(b)),
                BackendEvent::Timer => {}
            }
        }
        self.events = events;
        self.expire_deadlines(Instant::now());
    }

    fn with_stream(&mut self, id: StreamId, f: impl FnOnce(&mut Connection, &mut B)) {
        let Some(&key) = self.by_stream.get(&id) else {
            return;
        };
        if let Some(c) = self.conns.get_mut(&key) {
            f(c, &mut self.backend);
        }
        self.refresh(key);
    }

    fn host_connect(&mut self, id: StreamId, port: u32) {
        if self.conns.len() >= MAX_CONNECTIONS {
            debug!("vsock: connection limit reached, dropping host connection to port {port}");
            self.backend.close(id);
            return;
        }
        let local_port = self.alloc_local_port(port);
        self.insert(Connection::host_initiated(local_port, port, id));
    }

    /// A port in `[2^30, 2^31)` not used with `peer_port`; there are far more ports than
    /// connections, so this ends quickly.
    fn alloc_local_port(&mut self, peer_port: u32) -> u32 {
        loop {
            let port = self.next_local_port;
            self.next_local_port = if port >= (1 << 31) - 1 {
                FIRST_LOCAL_PORT
            } else {
                port + 1
            };
            if !self.conns.contains_key(&(port, peer_port)) {
                return port;
            }
        }
    }

    /// The driver reset the device: forget every connection (closing the host streams)
    /// without telling the guest, which has forgotten them too.
    pub fn reset(&mut self) {
        for c in self.conns.values_mut() {
            c.kill(&mut self.backend);
        }
        self.conns.clear();
        self.by_stream.clear();
        self.rxq.clear();
        self.loose_rx.clear();
        self.deadlines.clear();
        self.arm_timer();
    }

    fn expire_deadlines(&mut self, now: Instant) {
        while let Some(&(when, key, state)) = self.deadlines.front() {
            if when > now {
                break;
            }
            self.deadlines.pop_front();
            if let Some(c) = self.conns.get_mut(&key).filter(|c| c.state == state) {
                c.on_timeout(&mut self.backend);
                self.refresh(key);
            }
        }
        self.arm_timer();
    }
}

impl<B: VsockBackend> Drop for Muxer<B> {
    fn drop(&mut self) {
        self.reset();
    }
}
