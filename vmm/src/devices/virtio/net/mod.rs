//! virtio-net on a host TAP device (or any [`tap::NetBackend`]).
//!
//! One receive and one transmit queue. Offered features: `VIRTIO_F_VERSION_1`,
//! `VIRTIO_NET_F_MAC` when a MAC is configured, mergeable receive buffers (a frame may fill
//! several receive chains, `num_buffers` says how many) and, when the backend can do them
//! (a tap with a virtio-net header), checksum and TSO offloads both ways: the guest may send
//! frames with partial checksums and up to 64 KiB TCP segments (`CSUM`, `HOST_TSO4/6`,
//! `HOST_ECN`; the host kernel checks their headers), and gets such frames when its driver
//! accepts `GUEST_CSUM`/`GUEST_TSO4/6`/`GUEST_ECN`, which turns the same `TUN_F_*` on at the
//! tap. Without them every frame is complete and the header is zero.
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
use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_ECN, VIRTIO_NET_F_GUEST_TSO4,
    VIRTIO_NET_F_GUEST_TSO6, VIRTIO_NET_F_HOST_ECN, VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6,
    VIRTIO_NET_F_MAC, VIRTIO_NET_F_MRG_RXBUF,
};
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

/// The driver's choices that change how frames move.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Negotiated {
    /// The guest sends partial checksums / TSO: its header goes to the backend.
    tx_offloads: bool,
    /// The guest takes them: the backend's header goes to the guest.
    rx_offloads: bool,
    /// Mergeable receive buffers.
    mrg_rxbuf: bool,
}

/// Receive features (bit) and the tap offload each needs.
const RX_OFFLOADS: [(u32, u32); 4] = [
    (VIRTIO_NET_F_GUEST_CSUM, libc::TUN_F_CSUM),
    (VIRTIO_NET_F_GUEST_TSO4, libc::TUN_F_TSO4),
    (VIRTIO_NET_F_GUEST_TSO6, libc::TUN_F_TSO6),
    (VIRTIO_NET_F_GUEST_ECN, libc::TUN_F_TSO_ECN),
];

/// The tap offloads for the features the driver accepted. TSO needs checksum offload
/// (virtio 1.2, 5.1.3.1), so nothing without `GUEST_CSUM`.
fn tun_offloads(acked: u64) -> u32 {
    if acked & (1 << VIRTIO_NET_F_GUEST_CSUM) == 0 {
        return 0;
    }
    RX_OFFLOADS
        .iter()
        .filter(|(bit, _)| acked & (1 << bit) != 0)
        .fold(0, |f, (_, tun)| f | tun)
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
    /// What the driver accepted (set at activation).
    negotiated: Negotiated,
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
            negotiated: Negotiated::default(),
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
        let bit = |b: u32| 1u64 << b;
        let mut f = VIRTIO_F_VERSION_1 | bit(VIRTIO_NET_F_MRG_RXBUF);
        if self.mac.is_some() {
            f |= bit(VIRTIO_NET_F_MAC);
        }
        let cap = self.backend.offload_capability();
        if cap & libc::TUN_F_CSUM != 0 {
            // A backend with a virtio-net header takes offloaded frames from the guest.
            f |= bit(VIRTIO_NET_F_CSUM)
                | bit(VIRTIO_NET_F_HOST_TSO4)
                | bit(VIRTIO_NET_F_HOST_TSO6)
                | bit(VIRTIO_NET_F_HOST_ECN);
            for (feature, tun) in RX_OFFLOADS {
                if cap & tun != 0 {
                    f |= bit(feature);
                }
            }
        }
        f
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // struct virtio_net_config: mac[6], status (le16, needs F_STATUS), ...
        let mut config = [0u8; 8];
        config[..6].copy_from_slice(&self.mac.unwrap_or_default());
        read_config_bytes(&config, offset, data);
    }

    fn activate(&mut self, mut ctx: ActivateContext) -> Result<(), ActivateError> {
        let [rx, tx] = ctx.take_queues()?;
        let acked = ctx.acked_features;
        let mut tun = tun_offloads(acked);
        if let Err(e) = self.backend.set_offload(tun) {
            log::warn!("virtio-net: the host refused receive offloads {tun:#x}: {e}");
            tun = 0;
        }
        self.negotiated = Negotiated {
            tx_offloads: acked & (1 << VIRTIO_NET_F_CSUM) != 0,
            rx_offloads: tun != 0,
            mrg_rxbuf: acked & (1 << VIRTIO_NET_F_MRG_RXBUF) != 0,
        };
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
