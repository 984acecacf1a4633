//! virtio-fs (device type 26) as a vhost-user frontend: the guest's FUSE requests are served
//! by a separate backend process (virtiofsd) that maps guest RAM and processes the rings
//! itself. The VMM only sets the backend up ([`vhost`]), serves the config space and relays
//! the backend's interrupts ([`event_handler`]).
//!
//! | module | what |
//! | --- | --- |
//! | [`vhost`] | the vhost-user messages: negotiation, memory table, rings, stop |
//! | [`event_handler`] | the event loop: call eventfds → interrupt; backend hang-up → take-over |
//! | [`eio`] | without a backend: every FUSE request answered with EIO |
//!
//! Queues: 0 = hiprio, 1..=N = request queues, all of `queue_size` entries at most. Config
//! space: `tag[36]` (NUL-padded) then `num_request_queues` (le32). No DAX window.
//!
//! # Notifications
//!
//! Guest → backend: the transport's queue eventfds, which KVM signals on a `QueueNotify`
//! write (ioeventfd), go to the backend as its kick fds (`SET_VRING_KICK`): no VMM thread is
//! on the request path. (A notification that reaches the MMIO bus instead is written to the
//! same eventfd by the transport, so the backend sees it too.)
//!
//! Backend → guest: not an irqfd. Linux's virtio-mmio interrupt handler reads InterruptStatus
//! and ignores an interrupt without the used-buffer bit, so the device gives the backend call
//! eventfds of its own, polls them on the event loop and, on each, sets the bit and injects
//! ([`super::VirtioInterrupt::signal_used_queue`]).
//!
//! # Failures
//!
//! The backend socket is connected (and features negotiated) when the device is built, so a
//! missing backend is a build error. Later, a backend that hangs up, writes unasked, or fails
//! a request breaks the connection: the device logs one line, sets `DEVICE_NEEDS_RESET` if
//! active, and never talks to that backend again. The VMM and its other devices go on. (A
//! request written to a backend that died unnoticed fails with EPIPE: like the vsock
//! backend, this relies on the VMM binary ignoring SIGPIPE, as Rust binaries do.)
//!
//! Linux's driver does not act on `DEVICE_NEEDS_RESET`, so its requests would wait for the
//! dead backend forever. When an active device's backend hangs up, the device takes the
//! queues over ([`eio`]): the queue eventfds, which KVM keeps signalling on the guest's
//! notifications, go back to the event loop (the backend's copies died with it), and every
//! unanswered request, then every new one, gets a FUSE reply with `error = -EIO`. A
//! backend that is still there but breaks the protocol keeps the rings (it can still reach
//! them): the device only sets `DEVICE_NEEDS_RESET`.

pub mod eio;
pub mod event_handler;
pub mod vhost;

#[cfg(test)]
mod failure_tests;
#[cfg(test)]
mod test_backend;
#[cfg(test)]
mod tests;

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use virtio_bindings::virtio_ids::VIRTIO_ID_FS;
use virtio_queue::Queue;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use self::eio::Answering;
use self::vhost::{RingRecord, VhostError, VhostUserBackend, DRIVER_FEATURES};
use super::activation::Activation;
use super::device::DeviceState;
use super::{read_config_bytes, ActivateContext, ActivateError, VirtioDevice};

pub use vmm_api::config::{
    check_fs_params as check_params, FsParamError, FS_QUEUE_SIZE_MAX as QUEUE_SIZE_MAX,
    FS_REQUEST_QUEUES_MAX as REQUEST_QUEUES_MAX, FS_TAG_MAX_LEN as TAG_MAX_LEN,
};

/// Size of the config space: the tag and `num_request_queues` (le32).
const CONFIG_LEN: usize = TAG_MAX_LEN + 4;

/// Errors creating a virtio-fs device.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error(transparent)]
    Params(#[from] FsParamError),
    #[error("cannot connect to the vhost-user socket (is virtiofsd running?): {0}")]
    Connect(std::io::Error),
    #[error("vhost-user negotiation failed: {0}")]
    Vhost(VhostError),
    #[error("the backend's features {0:#x} leave nothing the driver can use")]
    Features(u64),
    #[error("cannot create the device's eventfd: {0}")]
    EventFd(std::io::Error),
}

/// What an active device keeps besides memory, interrupt and features: what each ring was
/// set up with in the backend, and what it needs to answer the requests itself.
pub struct Rings {
    /// One per ring the driver made ready, in queue order.
    pub rings: Vec<RingRecord>,
    /// The driver's queues as it set them up (index = queue index).
    queues: Vec<Queue>,
    /// Duplicates of the transport's queue eventfds (KVM ioeventfds): the backend's kick
    /// fds while it lives, the event loop's after a take-over.
    kicks: Vec<EventFd>,
    /// Set when the backend is gone and the device answers every request with EIO.
    answering: Option<Answering>,
}

/// A virtio-fs device whose requests a vhost-user backend serves.
pub struct Fs {
    tag: String,
    socket: PathBuf,
    config: [u8; CONFIG_LEN],
    queue_sizes: Vec<u16>,
    avail_features: u64,
    backend: VhostUserBackend,
    /// Whether the socket is in the event loop's epoll set.
    socket_polled: bool,
    activation: Activation,
    state: DeviceState<Rings>,
}

impl Fs {
    /// A device exporting the backend at `socket` to the guest as `tag`, with
    /// `num_request_queues` request queues of up to `queue_size` entries.
    pub fn connect(
        socket: &Path,
        tag: &str,
        num_request_queues: u16,
        queue_size: u16,
    ) -> Result<Self, FsError> {
        check_params(tag, num_request_queues, queue_size)?;
        let stream = UnixStream::connect(socket).map_err(FsError::Connect)?;
        Self::with_stream(stream, socket, tag, num_request_queues, queue_size)
    }

    /// A device over an already connected backend socket (`socket` names it in messages).
    pub fn with_stream(
        stream: UnixStream,
        socket: &Path,
        tag: &str,
        num_request_queues: u16,
        queue_size: u16,
    ) -> Result<Self, FsError> {
        check_params(tag, num_request_queues, queue_size)?;
        let queue_sizes = vec![queue_size; 1 + usize::from(num_request_queues)];
        let backend =
            VhostUserBackend::negotiate(stream, queue_sizes.len()).map_err(FsError::Vhost)?;
        let avail_features = backend.features() & DRIVER_FEATURES;
        if avail_features & super::VIRTIO_F_VERSION_1 == 0 {
            return Err(FsError::Features(backend.features()));
        }
        let mut config = [0u8; CONFIG_LEN];
        config[..tag.len()].copy_from_slice(tag.as_bytes());
        config[TAG_MAX_LEN..].copy_from_slice(&u32::from(num_request_queues).to_le_bytes());
        Ok(Self {
            tag: tag.into(),
            socket: socket.into(),
            config,
            queue_sizes,
            avail_features,
            backend,
            socket_polled: false,
            activation: Activation::new().map_err(FsError::EventFd)?,
            state: DeviceState::Inactive,
        })
    }

    /// The tag the guest mounts.
    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// The device's state: the acked features and, per ring, what the backend was told.
    pub fn state(&self) -> &DeviceState<Rings> {
        &self.state
    }

    /// Whether the backend connection broke (the device stays unusable).
    pub fn backend_broken(&self) -> bool {
        self.backend.is_broken()
    }

    /// The prefix of every log line and error of this device.
    fn name(&self) -> String {
        format!("virtio-fs '{}' ({})", self.tag, self.socket.display())
    }
}

impl VirtioDevice for Fs {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_FS
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn avail_features(&self) -> u64 {
        self.avail_features
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn activate(&mut self, mut ctx: ActivateContext) -> Result<(), ActivateError> {
        if ctx.queues.len() != self.queue_sizes.len() {
            return Err(ActivateError::QueueCount {
                expected: self.queue_sizes.len(),
                got: ctx.queues.len(),
            });
        }
        let calls = (0..ctx.queues.len())
            .map(|_| EventFd::new(EFD_NONBLOCK))
            .collect::<Result<Vec<_>, _>>()
            .map_err(ActivateError::EventFd)?;
        let rings = self
            .backend
            .start(
                &ctx.mem,
                ctx.acked_features,
                &ctx.queues,
                &ctx.queue_evts,
                &calls,
            )
            .map_err(|e| ActivateError::Backend(format!("{}: {e}", self.name())))?;
        // The backend got its own copies of the kick eventfds; ours are kept for a
        // take-over, and the event loop polls the call eventfds instead.
        let rings = Rings {
            rings,
            queues: std::mem::take(&mut ctx.queues),
            kicks: std::mem::take(&mut ctx.queue_evts),
            answering: None,
        };
        drop(self.state.activate(ctx, rings));
        self.activation.activate(calls)
    }

    fn reset(&mut self) {
        if let Some(active) = self.state.reset() {
            if !self.backend.is_broken() {
                match self.backend.stop(&active.data.rings) {
                    Ok(bases) => log::debug!("{}: rings stopped at {bases:?}", self.name()),
                    Err(e) => log::warn!("{}: cannot stop the backend: {e}", self.name()),
                }
            }
        }
        self.activation.deactivate();
    }
}
