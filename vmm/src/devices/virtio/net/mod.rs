//! virtio-net on a host TAP device (or any [`tap::NetBackend`]).
//!
//! One receive and one transmit queue, no offloads, no mergeable receive buffers: the guest
//! posts MTU-sized receive buffers and every frame fits one chain. Offered features:
//! `VIRTIO_F_VERSION_1` and, when a MAC is configured, `VIRTIO_NET_F_MAC`.
//!
//! Receive: when the TAP is readable, a frame is read and copied into the next receive
//! chain; with no receive buffer available the frame waits and the TAP stops being polled
//! until the guest posts buffers (no busy loop, no unbounded queue). Transmit: each chain is
//! written to the TAP as one frame; a frame the TAP refuses (full, down) is dropped, as a
//! real NIC would, and the guest's TCP retransmits.

pub mod event_handler;
pub mod request;
pub mod tap;

use virtio_bindings::virtio_ids::VIRTIO_ID_NET;
use virtio_bindings::virtio_net::VIRTIO_NET_F_MAC;
use virtio_queue::Queue;

use self::tap::NetBackend;
use super::activation::Activation;
use super::device::DeviceState;
use super::{read_config_bytes, ActivateContext, ActivateError, VirtioDevice, VIRTIO_F_VERSION_1};

/// Entries per queue.
pub const QUEUE_SIZE: u16 = 256;
/// `struct virtio_net_hdr_v1` (virtio 1.x always includes `num_buffers`).
pub const VNET_HDR_LEN: usize = 12;
/// Largest frame we move: header plus a 64 KiB Ethernet frame (the guest may raise its MTU).
pub const MAX_FRAME_LEN: usize = VNET_HDR_LEN + 65550;
/// Index of the receive queue.
pub const RX_QUEUE: usize = 0;
/// Index of the transmit queue.
pub const TX_QUEUE: usize = 1;

/// Errors creating a network device.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("cannot create the network device's eventfd: {0}")]
    EventFd(std::io::Error),
}

/// The queues of an active device.
pub(crate) struct Queues {
    rx: Queue,
    tx: Queue,
}

/// A virtio network device.
pub struct Net {
    backend: Box<dyn NetBackend>,
    mac: Option<[u8; 6]>,
    /// A frame read from the backend, waiting for a receive buffer (`rx_len` bytes of it).
    rx_frame: Vec<u8>,
    rx_len: usize,
    tx_frame: Vec<u8>,
    backend_polled: bool,
    activation: Activation,
    state: DeviceState<Queues>,
}

impl Net {
    /// A device on `backend` (e.g. [`tap::Tap::open`]), with guest MAC `mac` if given (else
    /// the guest picks a random one).
    pub fn new(backend: Box<dyn NetBackend>, mac: Option<[u8; 6]>) -> Result<Self, NetError> {
        Ok(Self {
            backend,
            mac,
            rx_frame: vec![0; MAX_FRAME_LEN],
            rx_len: 0,
            tx_frame: Vec::with_capacity(MAX_FRAME_LEN),
            backend_polled: false,
            activation: Activation::new().map_err(NetError::EventFd)?,
            state: DeviceState::Inactive,
        })
    }
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_NET
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE]
    }

    fn avail_features(&self) -> u64 {
        let mac = if self.mac.is_some() {
            1 << VIRTIO_NET_F_MAC
        } else {
            0
        };
        VIRTIO_F_VERSION_1 | mac
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // struct virtio_net_config: mac[6], status (le16, needs F_STATUS), ...
        let mut config = [0u8; 8];
        config[..6].copy_from_slice(&self.mac.unwrap_or_default());
        read_config_bytes(&config, offset, data);
    }

    fn activate(&mut self, mut ctx: ActivateContext) -> Result<(), ActivateError> {
        let [rx, tx] = ctx.take_queues()?;
        let evts = self.state.activate(ctx, Queues { rx, tx });
        self.activation.activate(evts)
    }

    fn reset(&mut self) {
        self.state.reset();
        self.rx_len = 0;
        self.activation.deactivate();
    }
}

#[cfg(test)]
mod tests;
