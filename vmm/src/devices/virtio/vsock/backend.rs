//! What the muxer needs from the host side: byte streams it can open, read and write
//! without blocking, and an fd the event loop can watch.
//!
//! The real implementation is [`super::unix::UnixBackend`] (hybrid vsock over Unix sockets);
//! tests use [`super::test_backend::TestBackend`].

use std::io;
use std::os::fd::AsRawFd;
use std::time::Instant;

/// Names one host-side stream inside a backend. Never reused while the backend lives.
pub type StreamId = u64;

/// Something that happened on the host side, reported by [`VsockBackend::poll`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendEvent {
    /// A host peer asks to be connected to guest port `port` (hybrid vsock: it wrote
    /// `CONNECT <port>\n`). The muxer answers with [`VsockBackend::confirm`] once the guest
    /// accepts, or [`VsockBackend::close`].
    HostConnect { id: StreamId, port: u32 },
    /// The stream has bytes or end-of-file to read. Only reported while read interest is on.
    Readable(StreamId),
    /// The stream can take more bytes. Only reported while write interest is on.
    Writable(StreamId),
    /// The host peer is gone (closed, or the socket failed). Bytes it sent before may
    /// still be read, then reads return end-of-file; writes fail. Reported once.
    Hangup(StreamId),
    /// The deadline passed to [`VsockBackend::set_timer`] was reached.
    Timer,
}

/// The host side of the vsock device.
///
/// Everything is non-blocking: `read` and `write` return `WouldBlock` rather than wait,
/// and the backend's fd ([`AsRawFd`]) becomes readable when [`VsockBackend::poll`] has
/// something to report. Events are level-triggered on the interest last set for a stream,
/// so the muxer turns interest off while it cannot act on an event (no guest credit, no
/// RX buffers) instead of spinning.
pub trait VsockBackend: AsRawFd + Send {
    /// Opens a stream to the host service behind host vsock port `port` (guest → host
    /// connection). An error makes the muxer refuse the connection with RST.
    fn connect(&mut self, port: u32) -> io::Result<StreamId>;

    /// The guest accepted the host-initiated connection `id`, which it knows by
    /// `local_port` (hybrid vsock: write `OK <local_port>\n` to the host peer).
    fn confirm(&mut self, id: StreamId, local_port: u32) -> io::Result<()>;

    /// Reads into `buf`; `Ok(0)` is end-of-file.
    fn read(&mut self, id: StreamId, buf: &mut [u8]) -> io::Result<usize>;

    /// Writes a prefix of `buf`; returns how much was taken.
    fn write(&mut self, id: StreamId, buf: &[u8]) -> io::Result<usize>;

    /// No more bytes will be written to `id` (the host peer reads end-of-file).
    fn shutdown_write(&mut self, id: StreamId);

    /// Closes and forgets `id`. Unknown ids are ignored.
    fn close(&mut self, id: StreamId);

    /// Which events the muxer wants for `id`.
    fn set_interest(&mut self, id: StreamId, read: bool, write: bool);

    /// Report [`BackendEvent::Timer`] once `deadline` has passed (`None`: no deadline).
    fn set_timer(&mut self, deadline: Option<Instant>);

    /// Appends what happened since the last call to `events`. Called when the fd is readable.
    fn poll(&mut self, events: &mut Vec<BackendEvent>);
}
