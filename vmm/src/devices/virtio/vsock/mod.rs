//! virtio-vsock (device type 19) backed by host Unix sockets ("hybrid vsock", as
//! Firecracker and Cloud Hypervisor do it).
//!
//! | module | what |
//! | --- | --- |
//! | [`packet`] | the 44-byte header; packets in and out of descriptor chains |
//! | [`connection`] | one stream's state machine and flow control |
//! | [`muxer`] | routing between the guest and host streams; what the guest gets next |
//! | [`backend`] | the host side as a trait ([`VsockBackend`]) |
//! | [`unix`] | the real backend: Unix socket `P`, `CONNECT`/`OK`, `P_<port>` |
//! | `event_handler` | the virtqueues and the event loop (plumbing only) |
//! | [`fuzz`] | the fuzz target's entry point (packet parser + muxer) |
//!
//! Queues: 0 = RX (device → driver packets), 1 = TX (driver → device), 2 = event (used
//! once after a restore from a snapshot: `VIRTIO_VSOCK_EVENT_TRANSPORT_RESET`, so the guest
//! drops connections that pointed at the old host side and re-reads its CID, which a
//! clone may have changed). The config space is the guest CID, a little-endian u64.
//!
//! Building one (the VMM builder):
//!
//! ```ignore
//! let vsock = Arc::new(Mutex::new(Vsock::new(guest_cid, "/run/vm/vsock.sock")?));
//! attach_virtio_mmio(&vm, &mut mmio_bus, &mut cmdline, &mut slots, &event_loop, &mem, vsock)?;
//! ```

pub mod backend;
pub mod connection;
mod event_handler;
#[cfg(any(test, feature = "testing"))]
pub mod fuzz;
pub mod muxer;
pub mod packet;
pub mod unix;

#[cfg(test)]
mod device_tests;
#[cfg(test)]
mod muxer_tests;
#[cfg(test)]
pub mod test_backend;
#[cfg(test)]
mod unix_tests;

use std::path::PathBuf;

use virtio_bindings::virtio_ids::VIRTIO_ID_VSOCK;
use virtio_queue::{Queue, QueueT};
use vm_memory::Bytes;

pub use self::backend::VsockBackend;
pub use self::unix::{UnixBackend, UnixBackendError};
use super::activation::Activation;
use super::device::DeviceState;
use super::{
    add_used, read_config_bytes, ActivateContext, ActivateError, VirtioDevice, VIRTIO_F_VERSION_1,
};
use muxer::Muxer;
use packet::MAX_PKT_DATA;

/// Entries in each queue.
pub const QUEUE_SIZE: u16 = 256;
/// Queue indices.
pub const RX_QUEUE: usize = 0;
/// Driver → device packets.
pub const TX_QUEUE: usize = 1;
/// Device events (unused).
pub const EVENT_QUEUE: usize = 2;
const NUM_QUEUES: usize = 3;

/// Errors creating a vsock device.
#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    #[error("vsock guest CID {0} is invalid: it must be at least 3 and below 2^32 - 1")]
    InvalidCid(u64),
    #[error("cannot create the vsock device's eventfd: {0}")]
    EventFd(std::io::Error),
    #[error("cannot start the vsock Unix socket backend: {0}")]
    Backend(UnixBackendError),
}

/// The queues of an active device (the event queue is unused).
pub(crate) struct Queues {
    rx: Queue,
    tx: Queue,
    event: Queue,
}

/// A virtio-vsock device over a [`VsockBackend`] ([`UnixBackend`] unless testing).
pub struct Vsock<B: VsockBackend = UnixBackend> {
    muxer: Muxer<B>,
    activation: Activation,
    state: DeviceState<Queues>,
    /// Payload of the packet being moved (TX or RX).
    pkt_buf: Vec<u8>,
    /// A TRANSPORT_RESET was sent and the driver has not yet handled it (it re-posts the
    /// event buffer when it has). Meanwhile nothing goes to the guest: the driver handles
    /// RX before events, so a connection made before it handled the reset would be reset
    /// by it silently, and the host side would wait forever.
    reset_pending: bool,
}

impl Vsock<UnixBackend> {
    /// A device for a guest with CID `guest_cid`, whose host side is the Unix socket
    /// `uds_path` (removed first if a stale socket is there; removed again on drop).
    pub fn new(guest_cid: u64, uds_path: impl Into<PathBuf>) -> Result<Self, VsockError> {
        check_cid(guest_cid)?;
        let backend = UnixBackend::new(uds_path).map_err(VsockError::Backend)?;
        Self::with_backend(guest_cid, backend)
    }
}

fn check_cid(cid: u64) -> Result<(), VsockError> {
    // 0-2 are reserved (hypervisor, local, host); u32::MAX is VMADDR_CID_ANY and Linux
    // keeps CIDs in 32 bits.
    if (3..u64::from(u32::MAX)).contains(&cid) {
        Ok(())
    } else {
        Err(VsockError::InvalidCid(cid))
    }
}

impl<B: VsockBackend> Vsock<B> {
    /// A device over any backend.
    pub fn with_backend(guest_cid: u64, backend: B) -> Result<Self, VsockError> {
        check_cid(guest_cid)?;
        Ok(Self {
            muxer: Muxer::new(guest_cid, backend),
            activation: Activation::new().map_err(VsockError::EventFd)?,
            state: DeviceState::Inactive,
            pkt_buf: vec![0; MAX_PKT_DATA],
            reset_pending: false,
        })
    }

    /// The guest's CID.
    pub fn guest_cid(&self) -> u64 {
        self.muxer.guest_cid()
    }

    /// The muxer (tests, diagnostics).
    pub fn muxer(&mut self) -> &mut Muxer<B> {
        &mut self.muxer
    }

    /// Puts `VIRTIO_VSOCK_EVENT_TRANSPORT_RESET` in the driver's next event buffer. Returns
    /// whether it was delivered (false: not active, no buffer posted, or a bad buffer).
    pub fn send_transport_reset(&mut self) -> bool {
        let Some(a) = self.state.active_mut() else {
            return false;
        };
        let Some(chain) = a.data.event.pop_descriptor_chain(&a.mem) else {
            log::warn!("vsock: the driver posted no event buffer for TRANSPORT_RESET");
            return false;
        };
        let head = chain.head_index();
        let event = EVENT_TRANSPORT_RESET.to_le_bytes();
        let target = chain
            .writable()
            .find(|d| d.len() as usize >= event.len())
            .map(|d| d.addr());
        let len = match target.map(|addr| a.mem.write_slice(&event, addr)) {
            Some(Ok(())) => event.len() as u32,
            _ => {
                log::warn!("vsock: the driver's event buffer cannot take TRANSPORT_RESET");
                0
            }
        };
        if !add_used(&a.mem, &mut a.data.event, &a.interrupt, head, len) {
            return false;
        }
        a.interrupt.signal_used_queue();
        self.reset_pending = len != 0;
        len != 0
    }
}

/// `VIRTIO_VSOCK_EVENT_TRANSPORT_RESET` (`struct virtio_vsock_event { le32 id; }`).
const EVENT_TRANSPORT_RESET: u32 = 0;

impl<B: VsockBackend> VirtioDevice for Vsock<B> {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_VSOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE; NUM_QUEUES]
    }

    fn avail_features(&self) -> u64 {
        // Stream sockets only: no VIRTIO_VSOCK_F_SEQPACKET.
        VIRTIO_F_VERSION_1
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.guest_cid().to_le_bytes(), offset, data);
    }

    fn activate(&mut self, mut ctx: ActivateContext) -> Result<(), ActivateError> {
        let [rx, tx, event] = ctx.take_queues::<NUM_QUEUES>()?;
        let evts = self.state.activate(ctx, Queues { rx, tx, event });
        self.activation.activate(evts)
    }

    fn restored(&mut self) {
        self.send_transport_reset();
    }

    fn reset(&mut self) {
        // The driver forgot its sockets: drop ours without telling it.
        self.muxer.reset();
        self.reset_pending = false;
        self.state.reset();
        self.activation.deactivate();
    }
}
