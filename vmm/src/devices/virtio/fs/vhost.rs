//! The vhost-user frontend of virtio-fs: the messages the VMM sends to the backend
//! (virtiofsd) on its Unix socket, through the `vhost` crate's [`Frontend`].
//!
//! # Sequence
//!
//! At build time, [`VhostUserBackend::negotiate`]: `SET_OWNER`, `GET_FEATURES` (the device
//! offers the driver what the backend offers, since the transport fixes the offered features
//! when it is created), `GET_PROTOCOL_FEATURES` / `SET_PROTOCOL_FEATURES` (we take `MQ` to
//! check the queue count and `REPLY_ACK` so every request is answered and a backend error
//! shows at once), and `GET_QUEUE_NUM`.
//!
//! At activation, [`VhostUserBackend::start`]: `SET_FEATURES` (the driver's features plus
//! `VHOST_USER_F_PROTOCOL_FEATURES`), `SET_MEM_TABLE` (guest RAM is a memfd: each region goes
//! with its fd and offset, and the backend maps it), then per ring `SET_VRING_NUM`,
//! `SET_VRING_ADDR` (the rings' addresses in the VMM's address space, which the backend
//! translates through the memory table), `SET_VRING_BASE`, `SET_VRING_CALL`,
//! `SET_VRING_KICK` and `SET_VRING_ENABLE`.
//!
//! At reset, [`VhostUserBackend::stop`]: per ring `SET_VRING_ENABLE(0)` and `GET_VRING_BASE`,
//! which stops the ring and returns where the backend's available index is; a re-activation
//! starts again from `SET_FEATURES`. A snapshot would stop the rings the same way and save
//! those indices as each ring's base.
//!
//! The backend does not offer the `CONFIG` protocol feature: the device serves its config
//! space itself. No `BACKEND_REQ` channel is negotiated (it is only needed for DAX).
//!
//! Every request runs on the thread that drives the device (a vCPU thread at activation and
//! reset) and is bounded by [`REPLY_TIMEOUT`]; after any failed request the connection is
//! out of step and [`VhostUserBackend`] refuses further use.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use vhost::vhost_user::message::VhostUserHeaderFlag;
use vhost::vhost_user::{
    Frontend, VhostUserFrontend, VhostUserProtocolFeatures, VhostUserVirtioFeatures,
};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Address, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use crate::devices::virtio::VIRTIO_F_VERSION_1;
use crate::memory::GuestMemory;

/// How long the VMM waits for one reply before it gives up on the backend.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// The virtio features the device passes on from the backend to the driver (the transport
/// and device handle nothing else: no packed rings, no IOMMU, no notification queue).
pub const DRIVER_FEATURES: u64 =
    VIRTIO_F_VERSION_1 | 1 << VIRTIO_RING_F_INDIRECT_DESC | 1 << VIRTIO_RING_F_EVENT_IDX;

/// `VHOST_USER_F_PROTOCOL_FEATURES`: a vhost-user bit, never shown to the driver.
pub const PROTOCOL_FEATURES_BIT: u64 = VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();

/// Errors talking to the vhost-user backend.
#[derive(Debug, thiserror::Error)]
pub enum VhostError {
    #[error("cannot set up the backend socket: {0}")]
    Socket(io::Error),
    #[error("vhost-user {what} failed: {err}")]
    Request {
        what: &'static str,
        err: vhost::Error,
    },
    #[error("the backend does not offer VIRTIO_F_VERSION_1 (features {0:#x})")]
    NotModern(u64),
    #[error("the backend does not offer VHOST_USER_F_PROTOCOL_FEATURES (features {0:#x})")]
    NoProtocolFeatures(u64),
    #[error("the backend serves {have} queues, the device needs {need}")]
    TooFewQueues { have: u64, need: usize },
    #[error("guest memory at {0:#x} is not backed by a file the backend could map")]
    MemoryNotShared(u64),
    #[error("queue {0}'s rings are not in guest memory")]
    RingAddress(usize),
    #[error("the backend connection broke earlier; the device cannot be used again")]
    Broken,
}

/// What the backend was told about one ring: for diagnostics and for a later snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RingRecord {
    /// The queue index (0 = hiprio, then the request queues).
    pub index: usize,
    /// The size the driver chose.
    pub size: u16,
    /// Guest-physical addresses of the descriptor table, available and used rings.
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
    /// The available index the backend started from (`SET_VRING_BASE`).
    pub base: u16,
}

/// What a non-blocking look at the socket found (outside any request).
#[derive(Debug, PartialEq, Eq)]
pub enum PeerState {
    /// Nothing to read: the backend is there and silent, as it should be.
    Quiet,
    /// End of file or a socket error: the backend is gone.
    Closed(String),
    /// Bytes the VMM did not ask for: the backend does not follow the protocol.
    Unexpected,
}

/// One connection to a vhost-user backend.
pub struct VhostUserBackend {
    frontend: Frontend,
    /// Virtio features the backend offers (with `VHOST_USER_F_PROTOCOL_FEATURES`).
    features: u64,
    /// Protocol features both sides use.
    protocol_features: VhostUserProtocolFeatures,
    broken: bool,
}

fn request<T>(what: &'static str, r: vhost::Result<T>) -> Result<T, VhostError> {
    r.map_err(|err| VhostError::Request { what, err })
}

impl VhostUserBackend {
    /// Negotiates with the backend on `stream` for a device of `num_queues` queues.
    pub fn negotiate(stream: UnixStream, num_queues: usize) -> Result<Self, VhostError> {
        stream
            .set_read_timeout(Some(REPLY_TIMEOUT))
            .and_then(|()| stream.set_write_timeout(Some(REPLY_TIMEOUT)))
            .map_err(VhostError::Socket)?;
        let mut frontend = Frontend::from_stream(stream, num_queues as u64);
        request("SET_OWNER", frontend.set_owner())?;
        let features = request("GET_FEATURES", frontend.get_features())?;
        if features & VIRTIO_F_VERSION_1 == 0 {
            return Err(VhostError::NotModern(features));
        }
        if features & PROTOCOL_FEATURES_BIT == 0 {
            return Err(VhostError::NoProtocolFeatures(features));
        }
        let offered = request("GET_PROTOCOL_FEATURES", frontend.get_protocol_features())?;
        let wanted = VhostUserProtocolFeatures::MQ | VhostUserProtocolFeatures::REPLY_ACK;
        let protocol_features = offered & wanted;
        request(
            "SET_PROTOCOL_FEATURES",
            frontend.set_protocol_features(protocol_features),
        )?;
        if protocol_features.contains(VhostUserProtocolFeatures::REPLY_ACK) {
            frontend.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
        }
        if protocol_features.contains(VhostUserProtocolFeatures::MQ) {
            let have = request("GET_QUEUE_NUM", frontend.get_queue_num())?;
            if have < num_queues as u64 {
                return Err(VhostError::TooFewQueues {
                    have,
                    need: num_queues,
                });
            }
        }
        Ok(Self {
            frontend,
            features,
            protocol_features,
            broken: false,
        })
    }

    /// The virtio features the backend offers (including the vhost-user bit).
    pub fn features(&self) -> u64 {
        self.features
    }

    /// The protocol features in use.
    pub fn protocol_features(&self) -> VhostUserProtocolFeatures {
        self.protocol_features
    }

    /// Whether a request failed or the backend went away: nothing more is sent.
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    /// Marks the connection unusable (the backend hung up, or a request failed).
    pub fn set_broken(&mut self) {
        self.broken = true;
    }

    /// Runs `f` unless broken; a failure breaks the connection.
    fn guarded<T>(
        &mut self,
        f: impl FnOnce(&mut Self) -> Result<T, VhostError>,
    ) -> Result<T, VhostError> {
        if self.broken {
            return Err(VhostError::Broken);
        }
        let r = f(self);
        if r.is_err() {
            self.broken = true;
        }
        r
    }

    /// Starts the backend on the driver's queues: `kicks[i]` is what the guest's notifications
    /// for queue `i` arrive on (the transport's ioeventfd), `calls[i]` what the backend
    /// signals when it used buffers. Queues the driver did not make ready are skipped.
    pub fn start(
        &mut self,
        mem: &GuestMemory,
        acked_features: u64,
        queues: &[Queue],
        kicks: &[EventFd],
        calls: &[EventFd],
    ) -> Result<Vec<RingRecord>, VhostError> {
        self.guarded(|this| {
            let features = acked_features | this.features & PROTOCOL_FEATURES_BIT;
            request("SET_FEATURES", this.frontend.set_features(features))?;
            let regions = memory_regions(mem)?;
            request("SET_MEM_TABLE", this.frontend.set_mem_table(&regions))?;
            let mut rings = Vec::with_capacity(queues.len());
            for (index, ((q, kick), call)) in queues.iter().zip(kicks).zip(calls).enumerate() {
                if q.ready() {
                    rings.push(this.start_ring(mem, index, q, kick, call)?);
                }
            }
            Ok(rings)
        })
    }

    fn start_ring(
        &mut self,
        mem: &GuestMemory,
        index: usize,
        q: &Queue,
        kick: &EventFd,
        call: &EventFd,
    ) -> Result<RingRecord, VhostError> {
        let record = RingRecord {
            index,
            size: q.size(),
            desc: q.desc_table(),
            avail: q.avail_ring(),
            used: q.used_ring(),
            base: q.next_avail(),
        };
        let host = |gpa: u64| {
            mem.get_host_address(GuestAddress(gpa))
                .map(|p| p as u64)
                .map_err(|_| VhostError::RingAddress(index))
        };
        let config = VringConfigData {
            queue_max_size: q.max_size(),
            queue_size: record.size,
            flags: 0,
            desc_table_addr: host(record.desc)?,
            used_ring_addr: host(record.used)?,
            avail_ring_addr: host(record.avail)?,
            log_addr: None,
        };
        let fe = &mut self.frontend;
        request("SET_VRING_NUM", fe.set_vring_num(index, record.size))?;
        request("SET_VRING_ADDR", fe.set_vring_addr(index, &config))?;
        request("SET_VRING_BASE", fe.set_vring_base(index, record.base))?;
        request("SET_VRING_CALL", fe.set_vring_call(index, call))?;
        request("SET_VRING_KICK", fe.set_vring_kick(index, kick))?;
        request("SET_VRING_ENABLE", fe.set_vring_enable(index, true))?;
        Ok(record)
    }

    /// Stops the backend's rings (the driver reset the device): disables each and reads
    /// back its available index with `GET_VRING_BASE`, which is what a snapshot would save.
    /// Returns `(queue index, base)` per ring.
    pub fn stop(&mut self, rings: &[RingRecord]) -> Result<Vec<(usize, u32)>, VhostError> {
        self.guarded(|this| {
            let fe = &mut this.frontend;
            rings
                .iter()
                .map(|r| {
                    request("SET_VRING_ENABLE", fe.set_vring_enable(r.index, false))?;
                    let base = request("GET_VRING_BASE", fe.get_vring_base(r.index))?;
                    Ok((r.index, base))
                })
                .collect()
        })
    }

    /// Looks at the socket without blocking, outside any request: the backend never speaks
    /// unasked on this channel, so readable means gone or misbehaving.
    pub fn peer_state(&self) -> PeerState {
        let mut byte = 0u8;
        // SAFETY: recv writes at most 1 byte into `byte`, which outlives the call; the fd is
        // the frontend's socket, open as long as `self`.
        let n = unsafe {
            libc::recv(
                self.as_raw_fd(),
                (&mut byte as *mut u8).cast(),
                1,
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        match n {
            0 => PeerState::Closed("end of file".into()),
            n if n > 0 => PeerState::Unexpected,
            _ => {
                let e = io::Error::last_os_error();
                match e.kind() {
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => PeerState::Quiet,
                    _ => PeerState::Closed(e.to_string()),
                }
            }
        }
    }
}

impl AsRawFd for VhostUserBackend {
    fn as_raw_fd(&self) -> RawFd {
        self.frontend.as_raw_fd()
    }
}

/// Guest RAM as the backend maps it: each region with its memfd and offset.
fn memory_regions(mem: &GuestMemory) -> Result<Vec<VhostUserMemoryRegionInfo>, VhostError> {
    mem.iter()
        .map(|r| {
            VhostUserMemoryRegionInfo::from_guest_region(r)
                .map_err(|_| VhostError::MemoryNotShared(r.start_addr().raw_value()))
        })
        .collect()
}
