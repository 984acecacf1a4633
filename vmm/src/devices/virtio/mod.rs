//! Virtio devices and their virtio-mmio transport.
//!
//! # Shape
//!
//! A device implements [`VirtioDevice`] (what the transport needs: identity, queues, features,
//! config space, activation, reset) and, to process its queues, `event_manager::MutEventSubscriber`.
//! The same `Arc<Mutex<Device>>` is thus shared by two threads:
//!
//! * a vCPU thread, through [`mmio::MmioTransport`] on the MMIO bus: register accesses, and
//!   [`VirtioDevice::activate`] once the driver sets `DRIVER_OK`;
//! * the event-loop thread ([`crate::event_loop`]): queue notifications and backend I/O.
//!
//! Activation happens on the vCPU thread but the queue eventfds must be added to the event
//! loop's epoll set on the event-loop thread; [`activation::Activation`] carries them across
//! through an "activate" eventfd (the pattern Firecracker uses).
//!
//! A device sees only guest memory, a [`VirtioInterrupt`] and eventfds ([`ActivateContext`]) —
//! never the VMM. It keeps them in one [`device::DeviceState`] (inactive, or activated with
//! them plus its own queues), the state a snapshot saves per device. Request parsing and I/O live in a pure `request` module per device,
//! event-loop plumbing in an `event_handler` module.
//!
//! See [`mmio`] for how the VMM builder attaches a device (MMIO window, IRQ, ioeventfds,
//! irqfd, event-loop subscription, kernel command line).

pub mod activation;
pub mod attach;
pub mod blk;
pub mod device;
pub mod fs;
pub mod mmio;
pub mod net;
pub mod rng;
pub mod vsock;

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;

use virtio_queue::desc::split::Descriptor;
use virtio_queue::{Queue, QueueT};
use vmm_sys_util::eventfd::EventFd;

use crate::devices::interrupt::Interrupt;
use crate::memory::GuestMemory;

/// Device status bits (virtio 1.x, 2.1).
pub mod status {
    /// The guest found the device.
    pub const ACKNOWLEDGE: u32 = 1;
    /// The guest has a driver for it.
    pub const DRIVER: u32 = 2;
    /// The driver is ready: queues may be used.
    pub const DRIVER_OK: u32 = 4;
    /// Feature negotiation is complete.
    pub const FEATURES_OK: u32 = 8;
    /// The device hit an error it cannot recover from without a reset.
    pub const DEVICE_NEEDS_RESET: u32 = 0x40;
    /// The driver gave up on the device.
    pub const FAILED: u32 = 0x80;
}

/// Interrupt status bits (virtio-mmio `InterruptStatus`).
pub mod int_status {
    /// The device used a buffer in at least one queue.
    pub const USED_RING: u32 = 1;
    /// The device configuration (or the NEEDS_RESET status) changed.
    pub const CONFIG_CHANGE: u32 = 2;
}

/// `VIRTIO_F_VERSION_1`: we only speak virtio 1.x ("modern") to drivers.
pub const VIRTIO_F_VERSION_1: u64 = 1 << virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;

/// Errors a device reports when it cannot start with what the driver set up.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    #[error("device expects {expected} queues, got {got}")]
    QueueCount { expected: usize, got: usize },
    #[error("cannot signal the event loop to start the device: {0}")]
    EventFd(io::Error),
    #[error("device backend failed to start: {0}")]
    Backend(String),
}

/// Everything a device gets when the driver sets `DRIVER_OK`.
pub struct ActivateContext {
    /// Guest RAM, for the rings and buffers.
    pub mem: GuestMemory,
    /// One queue per entry of [`VirtioDevice::queue_max_sizes`], as configured by the driver
    /// (validated by the transport: sizes, alignment, rings inside guest RAM if ready).
    pub queues: Vec<Queue>,
    /// The eventfd the guest's notifications for each queue arrive on (same order as `queues`).
    /// These are duplicates: the transport keeps the originals registered as KVM ioeventfds.
    pub queue_evts: Vec<EventFd>,
    /// How to tell the driver about used buffers and config changes.
    pub interrupt: Arc<VirtioInterrupt>,
    /// The features the driver accepted (a subset of [`VirtioDevice::avail_features`]).
    pub acked_features: u64,
}

impl ActivateContext {
    /// Takes the queues, which must be exactly `N` (else the error the device reports).
    pub fn take_queues<const N: usize>(&mut self) -> Result<[Queue; N], ActivateError> {
        let got = self.queues.len();
        std::mem::take(&mut self.queues)
            .try_into()
            .map_err(|_| ActivateError::QueueCount { expected: N, got })
    }
}

/// A virtio device as the transport sees it.
///
/// Every method is called with guest-controlled arguments: implementations must not panic on
/// any offset or length.
pub trait VirtioDevice: Send {
    /// The virtio device ID (`virtio_bindings::virtio_ids::VIRTIO_ID_*`).
    fn device_type(&self) -> u32;

    /// The maximum size of each queue; its length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];

    /// The feature bits offered to the driver. Must include [`VIRTIO_F_VERSION_1`].
    fn avail_features(&self) -> u64;

    /// Reads `data.len()` bytes of the device-specific configuration space at `offset`.
    /// Bytes past the end of the config space read as zero.
    fn read_config(&self, offset: u64, data: &mut [u8]);

    /// Writes the device-specific configuration space. Devices with a read-only config space
    /// keep the default, which ignores the write.
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        log::debug!(
            "ignoring {}-byte write to read-only virtio config at {offset:#x}",
            data.len()
        );
    }

    /// The driver set `DRIVER_OK`: start processing the queues in `ctx`.
    ///
    /// Called on a vCPU thread. On error the transport sets `DEVICE_NEEDS_RESET`.
    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError>;

    /// The driver wrote 0 to the status register: forget the queues and memory given by
    /// `activate` and stop processing; the device must be ready to be activated again.
    fn reset(&mut self);

    /// The device was activated again from a snapshot (`mmio::persist`): tell the driver
    /// whatever a restore changed. Most devices have nothing to say (the default).
    fn restored(&mut self) {}
}

/// The device-to-driver signals of one virtio-mmio device: interrupt status bits, the config
/// generation and `DEVICE_NEEDS_RESET`, and the interrupt line that announces them.
///
/// Shared between the transport (which reads and acknowledges the bits on guest register
/// accesses) and the device (which sets them from the event-loop thread).
pub struct VirtioInterrupt {
    status: AtomicU32,
    config_generation: AtomicU32,
    needs_reset: AtomicBool,
    irq: Arc<dyn Interrupt>,
}

impl VirtioInterrupt {
    /// Signals delivered through `irq`.
    pub fn new(irq: Arc<dyn Interrupt>) -> Self {
        Self {
            status: AtomicU32::new(0),
            config_generation: AtomicU32::new(0),
            needs_reset: AtomicBool::new(false),
            irq,
        }
    }

    fn raise(&self, bits: u32) {
        self.status.fetch_or(bits, Ordering::SeqCst);
        if let Err(e) = self.irq.trigger() {
            log::error!("cannot raise virtio interrupt: {e}");
        }
    }

    /// The device added buffers to a used ring.
    pub fn signal_used_queue(&self) {
        self.raise(int_status::USED_RING);
    }

    /// The device changed its configuration space.
    pub fn signal_config_change(&self) {
        self.config_generation.fetch_add(1, Ordering::SeqCst);
        self.raise(int_status::CONFIG_CHANGE);
    }

    /// The device cannot go on (e.g. the driver corrupted a ring): set `DEVICE_NEEDS_RESET`
    /// and tell the driver. The device stops using its queues until reset.
    ///
    /// Callers log the reason (one line per failure); this adds none of its own.
    pub fn set_needs_reset(&self) {
        if !self.needs_reset.swap(true, Ordering::SeqCst) {
            self.raise(int_status::CONFIG_CHANGE);
        }
    }

    /// Whether [`Self::set_needs_reset`] was called since the last reset.
    pub fn needs_reset(&self) -> bool {
        self.needs_reset.load(Ordering::SeqCst)
    }

    /// The `InterruptStatus` register.
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    /// The `ConfigGeneration` register.
    pub fn config_generation(&self) -> u32 {
        self.config_generation.load(Ordering::SeqCst)
    }

    /// `InterruptACK`: the driver handled `bits`.
    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }

    /// Sets the registers a snapshot saved; re-raises the line if an interrupt was pending
    /// (the restored guest has not seen it yet, or saw it and will read the bits again).
    pub fn restore(&self, status: u32, config_generation: u32, needs_reset: bool) {
        self.status.store(status, Ordering::SeqCst);
        self.config_generation
            .store(config_generation, Ordering::SeqCst);
        self.needs_reset.store(needs_reset, Ordering::SeqCst);
        if status != 0 {
            if let Err(e) = self.irq.trigger() {
                log::error!("cannot raise virtio interrupt: {e}");
            }
        }
    }

    /// Device reset: no pending interrupt, no failure.
    pub fn reset(&self) {
        self.status.store(0, Ordering::SeqCst);
        self.needs_reset.store(false, Ordering::SeqCst);
    }
}

/// Copies `data.len()` bytes at `offset` out of a device's config space `config`, with zeroes
/// for bytes past its end (never panics on guest-chosen offsets).
pub fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Ok(start) = usize::try_from(offset) else {
        return;
    };
    if let Some(src) = config.get(start..) {
        let n = src.len().min(data.len());
        data[..n].copy_from_slice(&src[..n]);
    }
}

/// Longest descriptor chain a device accepts (indirect tables can be far longer than a
/// queue); longer chains are returned unused.
pub const MAX_CHAIN_LEN: usize = 1024;

/// Consumes every chain the driver made available on `queue`: `f` gets the chain's
/// descriptors (as read from guest memory, not yet validated) and returns how many bytes it
/// wrote into them, which goes to the used ring. Interrupts the driver if it wants to be.
///
/// A used ring the device cannot write sets `DEVICE_NEEDS_RESET`.
pub fn process_chains(
    mem: &GuestMemory,
    queue: &mut Queue,
    interrupt: &VirtioInterrupt,
    mut f: impl FnMut(&[Descriptor]) -> u32,
) {
    if !avail_ring_sane(mem, queue, interrupt) {
        return;
    }
    let mut used_any = false;
    while let Some(chain) = queue.pop_descriptor_chain(mem) {
        let head = chain.head_index();
        let descs: Vec<Descriptor> = chain.take(MAX_CHAIN_LEN + 1).collect();
        let len = if descs.len() > MAX_CHAIN_LEN {
            log::warn!("virtio: descriptor chain longer than {MAX_CHAIN_LEN}, dropped");
            0
        } else {
            f(&descs)
        };
        if !add_used(mem, queue, interrupt, head, len) {
            return;
        }
        used_any = true;
    }
    if used_any {
        notify_used(mem, queue, interrupt);
    }
}

/// Checks the driver's available index before popping chains: an index more than a queue
/// size ahead of ours means a corrupted ring (virtio-queue would silently stop popping), so
/// the device fails with `DEVICE_NEEDS_RESET`. False if the queue must not be processed.
pub fn avail_ring_sane(mem: &GuestMemory, queue: &Queue, interrupt: &VirtioInterrupt) -> bool {
    if interrupt.needs_reset() {
        return false;
    }
    match queue.avail_idx(mem, std::sync::atomic::Ordering::Acquire) {
        Ok(idx) if (idx - std::num::Wrapping(queue.next_avail())).0 <= queue.size() => true,
        Ok(idx) => {
            log::warn!(
                "virtio: available index {} is more than a queue ahead of {}",
                idx.0,
                queue.next_avail()
            );
            interrupt.set_needs_reset();
            false
        }
        Err(e) => {
            log::warn!("virtio: cannot read the available ring: {e}");
            interrupt.set_needs_reset();
            false
        }
    }
}

/// Puts chain `head` in the used ring; false (and `DEVICE_NEEDS_RESET`) if the ring is broken.
pub fn add_used(
    mem: &GuestMemory,
    queue: &mut Queue,
    interrupt: &VirtioInterrupt,
    head: u16,
    len: u32,
) -> bool {
    match queue.add_used(mem, head, len) {
        Ok(()) => true,
        Err(e) => {
            log::warn!("virtio: cannot add to the used ring: {e}");
            interrupt.set_needs_reset();
            false
        }
    }
}

/// Interrupts the driver after buffers were used, unless it asked not to be.
pub fn notify_used(mem: &GuestMemory, queue: &mut Queue, interrupt: &VirtioInterrupt) {
    if queue.needs_notification(mem).unwrap_or(true) {
        interrupt.signal_used_queue();
    }
}

#[cfg(test)]
mod e2e_tests;
#[cfg(test)]
pub(crate) mod test_utils;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::interrupt::IrqFd;

    #[test]
    fn interrupt_bits_and_ack() {
        let irq = Arc::new(IrqFd::new(5).unwrap());
        let vi = VirtioInterrupt::new(irq.clone());
        vi.signal_used_queue();
        vi.signal_config_change();
        assert_eq!(
            vi.status(),
            int_status::USED_RING | int_status::CONFIG_CHANGE
        );
        assert_eq!(vi.config_generation(), 1);
        assert_eq!(irq.eventfd().read().unwrap(), 2);
        vi.ack(int_status::USED_RING);
        assert_eq!(vi.status(), int_status::CONFIG_CHANGE);
        vi.set_needs_reset();
        vi.set_needs_reset();
        assert!(vi.needs_reset());
        assert_eq!(irq.eventfd().read().unwrap(), 1);
        vi.reset();
        assert_eq!(vi.status(), 0);
        assert!(!vi.needs_reset());
    }

    #[test]
    fn config_reads_are_bounded() {
        let cfg = [1u8, 2, 3, 4];
        let mut d = [9u8; 4];
        read_config_bytes(&cfg, 2, &mut d);
        assert_eq!(d, [3, 4, 0, 0]);
        read_config_bytes(&cfg, u64::MAX, &mut d);
        assert_eq!(d, [0; 4]);
    }
}
