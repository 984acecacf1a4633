//! One vsock stream between a guest socket and a host stream: its state machine and flow
//! control. Pure logic: the host side is reached only through [`VsockBackend`], and packets
//! for the guest are produced on demand when the muxer has an RX buffer to fill.
//!
//! # Lifecycle
//!
//! ```text
//!  host CONNECT ──► Connecting ──(guest RESPONSE)──► Established ──► Closing ──► Dead
//!  guest REQUEST ───────────────(we send RESPONSE)──►     │             │         ▲
//!                                                         └─────(RST, errors)─────┘
//! ```
//!
//! - `Established` may be half-closed in either direction. The guest's SHUTDOWN flags say
//!   it will send (`SEND`) or receive (`RCV`) no more; host end-of-file makes us send
//!   SHUTDOWN(`SEND`), and a host hangup SHUTDOWN(`SEND|RCV`).
//! - After sending SHUTDOWN with both flags we are `Closing`: the guest answers with RST
//!   (Linux does), or the muxer's timeout resets the connection.
//! - A guest SHUTDOWN with both flags means the guest socket is closed: once the bytes
//!   it sent have reached the host, we answer RST and forget the connection.
//! - `Dead` connections only wait for their RST to be delivered, then the muxer drops them.
//!
//! # Flow control (virtio spec 5.10.6.3)
//!
//! Each side advertises `buf_alloc` (its receive buffer) and `fwd_cnt` (bytes it has
//! consumed from it, ever, wrapping) in every packet header. A sender may have at most
//! `peer_buf_alloc - (tx_cnt - peer_fwd_cnt)` bytes in flight.
//!
//! - Host → guest: we read from the host stream only as much as that credit allows, so
//!   nothing is buffered here and the guest is never sent more than it has room for.
//! - Guest → host: bytes the host stream will not take yet wait in `txbuf`, bounded by
//!   our `buf_alloc`; a guest that overruns its credit is reset. As the host drains the
//!   buffer, `fwd_cnt` grows; when the guest's view of our free space gets low we send a
//!   CREDIT_UPDATE (it also learns `fwd_cnt` from every other packet we send).

use std::collections::VecDeque;
use std::io;
use std::num::Wrapping;

use super::backend::{StreamId, VsockBackend};
use super::packet::{op, VsockHeader, SHUTDOWN_RCV, SHUTDOWN_SEND, TYPE_STREAM};

/// Our receive buffer per connection: guest → host bytes the host has not taken yet.
pub const CONN_BUF_ALLOC: u32 = 256 * 1024;

/// Both SHUTDOWN flags.
const SHUTDOWN_BOTH: u32 = SHUTDOWN_RCV | SHUTDOWN_SEND;

/// Where a connection is in its lifecycle (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Host-initiated; waiting for the guest's RESPONSE to our REQUEST.
    Connecting,
    /// Data may flow (possibly only one way).
    Established,
    /// We sent SHUTDOWN(SEND|RCV) and wait for the guest's RST.
    Closing,
    /// Reset; the RST may still have to reach the guest.
    Dead,
}

/// One stream. The muxer owns these, keyed by `(local_port, peer_port)`.
pub struct Connection {
    pub local_port: u32,
    pub peer_port: u32,
    pub stream: StreamId,
    pub state: State,
    /// Bookkeeping for the muxer: queued on its RX list.
    pub in_rxq: bool,
    /// Bookkeeping for the muxer: a timeout for this state is scheduled.
    pub deadline_set: bool,

    need_request: bool,
    need_response: bool,
    need_credit_update: bool,
    need_rst: bool,
    /// SHUTDOWN flags the guest has yet to be told.
    shut_to_send: u32,
    /// SHUTDOWN flags we told the guest.
    shut_sent: u32,
    /// SHUTDOWN flags the guest sent.
    peer_shut: u32,

    stream_open: bool,
    host_readable: bool,
    host_eof: bool,
    host_hup: bool,
    host_write_shut: bool,

    // Guest → host.
    txbuf: VecDeque<u8>,
    rx_cnt: Wrapping<u32>,
    fwd_cnt: Wrapping<u32>,
    last_fwd_cnt_sent: Wrapping<u32>,

    // Host → guest.
    tx_cnt: Wrapping<u32>,
    peer_buf_alloc: u32,
    peer_fwd_cnt: Wrapping<u32>,
}

fn would_block(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
    )
}

impl Connection {
    fn new(local_port: u32, peer_port: u32, stream: StreamId, state: State) -> Self {
        Self {
            local_port,
            peer_port,
            stream,
            state,
            in_rxq: false,
            deadline_set: false,
            need_request: false,
            need_response: false,
            need_credit_update: false,
            need_rst: false,
            shut_to_send: 0,
            shut_sent: 0,
            peer_shut: 0,
            stream_open: true,
            host_readable: false,
            host_eof: false,
            host_hup: false,
            host_write_shut: false,
            txbuf: VecDeque::new(),
            rx_cnt: Wrapping(0),
            fwd_cnt: Wrapping(0),
            last_fwd_cnt_sent: Wrapping(0),
            tx_cnt: Wrapping(0),
            peer_buf_alloc: 0,
            peer_fwd_cnt: Wrapping(0),
        }
    }

    /// The guest's REQUEST `req` was connected to host `stream`: answer RESPONSE.
    pub fn guest_initiated(req: &VsockHeader, stream: StreamId) -> Self {
        let mut c = Self::new(req.dst_port, req.src_port, stream, State::Established);
        c.need_response = true;
        c.update_peer_credit(req);
        c
    }

    /// A host peer wants guest port `peer_port`: send REQUEST from `local_port`.
    pub fn host_initiated(local_port: u32, peer_port: u32, stream: StreamId) -> Self {
        let mut c = Self::new(local_port, peer_port, stream, State::Connecting);
        c.need_request = true;
        c
    }

    /// Bytes the guest can still take from us.
    pub fn peer_credit(&self) -> u32 {
        // A guest that lies (fwd_cnt ahead of what we sent, buf_alloc shrunk below what
        // is in flight) just gets no credit.
        self.peer_buf_alloc
            .saturating_sub((self.tx_cnt - self.peer_fwd_cnt).0)
    }

    /// Bytes from the guest waiting for the host stream.
    pub fn pending_tx(&self) -> usize {
        self.txbuf.len()
    }

    /// The muxer may drop this connection.
    pub fn is_removable(&self) -> bool {
        self.state == State::Dead && !self.need_rst
    }

    fn can_send_data(&self) -> bool {
        self.state == State::Established
            && self.host_readable
            && !self.host_eof
            && self.peer_shut & SHUTDOWN_RCV == 0
            && self.peer_credit() > 0
    }

    /// Something is waiting to be sent to the guest.
    pub fn has_rx(&self) -> bool {
        self.need_rst
            || (self.state != State::Dead
                && (self.need_request
                    || self.need_response
                    || self.need_credit_update
                    || self.shut_to_send != 0
                    || self.can_send_data()))
    }

    /// Whether the muxer wants readable events from the host stream.
    pub fn wants_read(&self) -> bool {
        self.state == State::Established
            && !self.host_readable
            && !self.host_eof
            && !self.host_hup
            && self.peer_shut & SHUTDOWN_RCV == 0
    }

    /// Whether the muxer wants writable events from the host stream.
    pub fn wants_write(&self) -> bool {
        self.stream_open && !self.host_hup && !self.txbuf.is_empty()
    }

    fn close_stream<B: VsockBackend>(&mut self, backend: &mut B) {
        if self.stream_open {
            backend.close(self.stream);
            self.stream_open = false;
        }
    }

    /// Tears the connection down: the host stream is closed and the guest gets RST (unless
    /// it never heard of the connection).
    pub fn kill<B: VsockBackend>(&mut self, backend: &mut B) {
        self.close_stream(backend);
        if self.state != State::Dead {
            self.need_rst = !self.need_request;
        }
        self.state = State::Dead;
        self.txbuf = VecDeque::new();
    }

    fn update_peer_credit(&mut self, hdr: &VsockHeader) {
        self.peer_buf_alloc = hdr.buf_alloc;
        self.peer_fwd_cnt = Wrapping(hdr.fwd_cnt);
    }

    /// A packet from the guest for this connection (header already checked by the muxer).
    pub fn on_guest_pkt<B: VsockBackend>(
        &mut self,
        hdr: &VsockHeader,
        data: &[u8],
        backend: &mut B,
    ) {
        if hdr.op == op::RST {
            // The guest forgot the connection: no reply.
            self.close_stream(backend);
            self.state = State::Dead;
            self.need_rst = false;
            return;
        }
        if self.state == State::Dead {
            return;
        }
        // Every header carries the sender's credit (Linux updates it on every packet too).
        self.update_peer_credit(hdr);
        match hdr.op {
            op::RESPONSE if self.state == State::Connecting && !self.need_request => {
                self.state = State::Established;
                if backend.confirm(self.stream, self.local_port).is_err() {
                    self.kill(backend);
                }
            }
            op::RW => self.on_guest_data(data, backend),
            op::CREDIT_UPDATE => {}
            op::CREDIT_REQUEST => self.need_credit_update = true,
            op::SHUTDOWN => {
                self.peer_shut |= hdr.flags & SHUTDOWN_BOTH;
                self.after_tx_progress(backend);
            }
            // A REQUEST or RESPONSE out of place, or an unknown op: the guest's idea of this
            // connection differs from ours; reset it.
            _ => self.kill(backend),
        }
    }

    fn on_guest_data<B: VsockBackend>(&mut self, data: &[u8], backend: &mut B) {
        let in_buf = (self.rx_cnt - self.fwd_cnt).0 as usize;
        if self.state != State::Established
            || self.peer_shut & SHUTDOWN_SEND != 0
            || in_buf + data.len() > CONN_BUF_ALLOC as usize
        {
            // Data after its own SHUTDOWN, before the handshake, or beyond the credit we
            // gave: a broken or hostile driver.
            self.kill(backend);
            return;
        }
        // data.len() <= MAX_PKT_DATA, checked by the packet layer.
        self.rx_cnt += Wrapping(data.len() as u32);
        let mut taken = 0;
        if self.txbuf.is_empty() {
            match backend.write(self.stream, data) {
                Ok(n) => taken = n.min(data.len()),
                Err(e) if would_block(&e) => {}
                Err(_) => {
                    self.kill(backend);
                    return;
                }
            }
            self.fwd_cnt += Wrapping(taken as u32);
        }
        self.txbuf.extend(&data[taken..]);
        self.after_tx_progress(backend);
    }

    /// Moves buffered guest bytes to the host stream.
    fn flush<B: VsockBackend>(&mut self, backend: &mut B) {
        while !self.txbuf.is_empty() {
            let (front, _) = self.txbuf.as_slices();
            match backend.write(self.stream, front) {
                Ok(0) => break,
                Ok(n) => {
                    let n = n.min(front.len());
                    self.txbuf.drain(..n);
                    self.fwd_cnt += Wrapping(n as u32);
                }
                Err(e) if would_block(&e) => break,
                Err(_) => {
                    self.kill(backend);
                    return;
                }
            }
        }
        self.after_tx_progress(backend);
    }

    /// After guest bytes moved or the guest shut down: pass shutdowns on to the host once
    /// the buffer is empty, and decide whether the guest needs a credit update.
    fn after_tx_progress<B: VsockBackend>(&mut self, backend: &mut B) {
        if self.state == State::Dead {
            return;
        }
        if self.txbuf.is_empty() {
            if self.peer_shut == SHUTDOWN_BOTH {
                // The guest closed its socket and all it sent reached the host.
                self.kill(backend);
                return;
            }
            if self.peer_shut & SHUTDOWN_SEND != 0 && !self.host_write_shut {
                backend.shutdown_write(self.stream);
                self.host_write_shut = true;
            }
        }
        // Tell the guest about freed space once its view of our buffer is less than half
        // free and a quarter of the buffer has been freed since it last heard from us.
        let view_free = CONN_BUF_ALLOC.saturating_sub((self.rx_cnt - self.last_fwd_cnt_sent).0);
        let freed = (self.fwd_cnt - self.last_fwd_cnt_sent).0;
        if view_free < CONN_BUF_ALLOC / 2 && freed >= CONN_BUF_ALLOC / 4 {
            self.need_credit_update = true;
        }
    }

    /// The host stream has data (or end-of-file) for the guest.
    pub fn on_readable(&mut self) {
        self.host_readable = true;
    }

    /// The host stream takes bytes again.
    pub fn on_writable<B: VsockBackend>(&mut self, backend: &mut B) {
        if self.state != State::Dead {
            self.flush(backend);
        }
    }

    /// The host peer is gone.
    pub fn on_hangup<B: VsockBackend>(&mut self, backend: &mut B) {
        self.host_hup = true;
        match self.state {
            State::Dead => {}
            // Nothing can reach the host any more, or nothing can reach the guest.
            _ if self.state == State::Connecting
                || !self.txbuf.is_empty()
                || self.peer_shut & SHUTDOWN_RCV != 0 =>
            {
                self.kill(backend)
            }
            // It had already finished sending: it will not receive either.
            _ if self.host_eof => self.shut_to_send |= SHUTDOWN_BOTH & !self.shut_sent,
            // Drain what the host sent before leaving, then SHUTDOWN both ways.
            _ => self.host_readable = true,
        }
    }

    /// The timeout of the current state expired (Connecting: the guest did not answer our
    /// REQUEST; Closing: it did not answer our SHUTDOWN).
    pub fn on_timeout<B: VsockBackend>(&mut self, backend: &mut B) {
        if matches!(self.state, State::Connecting | State::Closing) {
            self.kill(backend);
        }
    }

    /// Produces the next packet for the guest, reading its payload (if any) from the host
    /// stream into `buf`. Returns the header (without CIDs) and the payload length.
    pub fn next_rx<B: VsockBackend>(
        &mut self,
        backend: &mut B,
        buf: &mut [u8],
    ) -> Option<(VsockHeader, usize)> {
        if self.need_rst {
            self.need_rst = false;
            return Some((self.header(op::RST, 0), 0));
        }
        if self.state == State::Dead {
            return None;
        }
        if self.need_request {
            self.need_request = false;
            return Some((self.header(op::REQUEST, 0), 0));
        }
        if self.need_response {
            self.need_response = false;
            return Some((self.header(op::RESPONSE, 0), 0));
        }
        if self.can_send_data() && !buf.is_empty() {
            let n = buf.len().min(self.peer_credit() as usize);
            match backend.read(self.stream, &mut buf[..n]) {
                Ok(0) => {
                    self.host_eof = true;
                    self.host_readable = false;
                    self.shut_to_send |= if self.host_hup {
                        SHUTDOWN_BOTH
                    } else {
                        SHUTDOWN_SEND
                    };
                }
                Ok(n) => {
                    let n = n.min(buf.len());
                    self.tx_cnt += Wrapping(n as u32);
                    return Some((self.header(op::RW, 0), n));
                }
                Err(e) if would_block(&e) => self.host_readable = false,
                Err(_) => {
                    self.kill(backend);
                    return self.next_rx(backend, buf);
                }
            }
        }
        if self.shut_to_send != 0 {
            let flags = std::mem::take(&mut self.shut_to_send);
            self.shut_sent |= flags;
            if self.shut_sent == SHUTDOWN_BOTH {
                self.state = State::Closing;
                self.deadline_set = false;
            }
            return Some((self.header(op::SHUTDOWN, flags), 0));
        }
        if self.need_credit_update {
            return Some((self.header(op::CREDIT_UPDATE, 0), 0));
        }
        None
    }

    /// A header from us to the guest for this connection; CIDs and `len` are filled in by
    /// the caller. Every packet carries our credit, so the guest is now up to date.
    fn header(&mut self, op: u16, flags: u32) -> VsockHeader {
        self.last_fwd_cnt_sent = self.fwd_cnt;
        self.need_credit_update = false;
        VsockHeader {
            src_port: self.local_port,
            dst_port: self.peer_port,
            type_: TYPE_STREAM,
            op,
            flags,
            buf_alloc: CONN_BUF_ALLOC,
            fwd_cnt: self.fwd_cnt.0,
            ..Default::default()
        }
    }
}
