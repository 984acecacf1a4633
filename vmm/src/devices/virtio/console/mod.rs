//! virtio-console, single port (no `VIRTIO_CONSOLE_F_MULTIPORT`, no resize).
//!
//! Guest output (transmitq) goes to a host writer (stdout, a log file); guest input
//! (receiveq) comes from an optional host reader polled by the event loop. The 8250 serial
//! stays for early boot messages; this device is the fast path once the kernel is up
//! (`console=hvc0`).
//!
//! Input is buffered up to [`MAX_PENDING_INPUT`] bytes while the guest has no receive buffers;
//! beyond that it is dropped (like a serial line without flow control), so a stalled guest
//! cannot make the VMM grow without bound.

pub mod event_handler;
pub mod request;

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::sync::Arc;

use virtio_bindings::virtio_ids::VIRTIO_ID_CONSOLE;
use virtio_queue::Queue;

use super::activation::Activation;
use super::{
    read_config_bytes, ActivateContext, ActivateError, VirtioDevice, VirtioInterrupt,
    VIRTIO_F_VERSION_1,
};
use crate::memory::GuestMemory;

/// Entries per queue.
pub const QUEUE_SIZE: u16 = 256;
/// Input bytes kept while the guest posts no receive buffers.
pub const MAX_PENDING_INPUT: usize = 64 << 10;
/// Index of the receive queue (host to guest).
pub const RX_QUEUE: usize = 0;
/// Index of the transmit queue (guest to host).
pub const TX_QUEUE: usize = 1;

/// A host input source: readable, and pollable by the event loop. Use an unbuffered source
/// (a `File` or `OwnedFd`-backed type, not `std::io::Stdin`, whose userspace buffer epoll
/// cannot see).
pub trait ConsoleInput: Read + AsRawFd + Send {}
impl<T: Read + AsRawFd + Send> ConsoleInput for T {}

/// Errors creating a console.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    #[error("cannot create the console's eventfd: {0}")]
    EventFd(std::io::Error),
}

struct Active {
    mem: GuestMemory,
    rx: Queue,
    tx: Queue,
    interrupt: Arc<VirtioInterrupt>,
}

/// A virtio console with one port.
pub struct Console {
    output: Box<dyn Write + Send>,
    input: Option<Box<dyn ConsoleInput>>,
    input_polled: bool,
    pending_input: VecDeque<u8>,
    activation: Activation,
    active: Option<Active>,
}

impl Console {
    /// A console writing guest output to `output` and, if given, feeding `input` to the guest.
    pub fn new(
        output: Box<dyn Write + Send>,
        input: Option<Box<dyn ConsoleInput>>,
    ) -> Result<Self, ConsoleError> {
        Ok(Self {
            output,
            input,
            input_polled: false,
            pending_input: VecDeque::new(),
            activation: Activation::new().map_err(ConsoleError::EventFd)?,
            active: None,
        })
    }
}

impl VirtioDevice for Console {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_CONSOLE
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE]
    }

    fn avail_features(&self) -> u64 {
        VIRTIO_F_VERSION_1
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // struct virtio_console_config {cols, rows, max_nr_ports, emerg_wr}: all unused
        // without SIZE/MULTIPORT/EMERG_WRITE, so zero.
        read_config_bytes(&[0u8; 12], offset, data);
    }

    fn activate(&mut self, mut ctx: ActivateContext) -> Result<(), ActivateError> {
        let [rx, tx] = ctx.take_queues()?;
        self.active = Some(Active {
            mem: ctx.mem,
            rx,
            tx,
            interrupt: ctx.interrupt,
        });
        self.activation.activate(ctx.queue_evts)
    }

    fn reset(&mut self) {
        self.active = None;
        self.activation.deactivate();
    }
}

#[cfg(test)]
mod tests;
