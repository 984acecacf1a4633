//! The virtio-mmio transport, modern interface only (version 2, virtio 1.x).
//!
//! One [`MmioTransport`] per device sits on the MMIO bus in a `VIRTIO_MMIO_WINDOW`-sized
//! window. It owns the queue configuration until the driver sets `DRIVER_OK`, then hands the
//! queues to the device ([`VirtioDevice::activate`]). Everything the guest writes is checked;
//! a driver that writes nonsense gets `DEVICE_NEEDS_RESET`, never a VMM panic.
//!
//! Guest notifications (writes to `QueueNotify`) are meant to be caught by KVM ioeventfds
//! ([`MmioTransport::queue_notify_events`]); a write that reaches the bus instead (no ioeventfd
//! registered) is forwarded to the same eventfd, so both paths behave the same.

use std::sync::{Arc, Mutex, MutexGuard};

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::{status, ActivateContext, VirtioDevice, VirtioInterrupt, VIRTIO_F_VERSION_1};
use crate::bus::BusDevice;
use crate::devices::interrupt::Interrupt;
use crate::memory::GuestMemory;

/// "virt" in little endian.
pub const MMIO_MAGIC_VALUE: u32 = 0x7472_6976;
/// The modern virtio-mmio interface.
pub const MMIO_VERSION: u32 = 2;
/// Our vendor ID (the spec leaves it to the device; 0 like Firecracker).
pub const VENDOR_ID: u32 = 0;
/// Offset of `QueueNotify` in the window: the ioeventfd address is `base + NOTIFY_REG_OFFSET`.
pub const NOTIFY_REG_OFFSET: u64 = 0x50;
/// Device-specific configuration space starts here.
pub const CONFIG_SPACE_OFFSET: u64 = 0x100;

const REG_MAGIC: u64 = 0x00;
const REG_VERSION: u64 = 0x04;
const REG_DEVICE_ID: u64 = 0x08;
const REG_VENDOR_ID: u64 = 0x0c;
const REG_DEVICE_FEATURES: u64 = 0x10;
const REG_DEVICE_FEATURES_SEL: u64 = 0x14;
const REG_DRIVER_FEATURES: u64 = 0x20;
const REG_DRIVER_FEATURES_SEL: u64 = 0x24;
const REG_QUEUE_SEL: u64 = 0x30;
const REG_QUEUE_NUM_MAX: u64 = 0x34;
const REG_QUEUE_NUM: u64 = 0x38;
const REG_QUEUE_READY: u64 = 0x44;
const REG_INTERRUPT_STATUS: u64 = 0x60;
const REG_INTERRUPT_ACK: u64 = 0x64;
const REG_STATUS: u64 = 0x70;
const REG_QUEUE_DESC_LOW: u64 = 0x80;
const REG_QUEUE_DESC_HIGH: u64 = 0x84;
const REG_QUEUE_AVAIL_LOW: u64 = 0x90;
const REG_QUEUE_AVAIL_HIGH: u64 = 0x94;
const REG_QUEUE_USED_LOW: u64 = 0xa0;
const REG_QUEUE_USED_HIGH: u64 = 0xa4;
const REG_SHM_LEN_LOW: u64 = 0xb0;
const REG_SHM_LEN_HIGH: u64 = 0xb4;
const REG_SHM_BASE_LOW: u64 = 0xb8;
const REG_SHM_BASE_HIGH: u64 = 0xbc;
const REG_CONFIG_GENERATION: u64 = 0xfc;

/// Driver-settable status bits while setting the device up, in the order they are set.
const SETUP_ORDER: [u32; 4] = [
    status::ACKNOWLEDGE,
    status::DRIVER,
    status::FEATURES_OK,
    status::DRIVER_OK,
];

/// Errors creating a transport.
#[derive(Debug, thiserror::Error)]
pub enum MmioError {
    #[error("virtio device offers no queues or a queue of invalid maximum size {0}")]
    QueueMaxSize(u16),
    #[error("virtio device does not offer VIRTIO_F_VERSION_1 (only modern devices are supported)")]
    NotModern,
    #[error("cannot create a virtio queue eventfd: {0}")]
    EventFd(std::io::Error),
}

/// A virtio device behind the virtio-mmio register interface.
pub struct MmioTransport {
    device: Arc<Mutex<dyn VirtioDevice>>,
    mem: GuestMemory,
    interrupt: Arc<VirtioInterrupt>,
    queues: Vec<Queue>,
    queue_evts: Vec<EventFd>,
    device_type: u32,
    avail_features: u64,
    device_status: u32,
    features_select: u32,
    acked_features_select: u32,
    acked_features: u64,
    queue_select: u32,
}

impl MmioTransport {
    /// A transport for `device`, raising `irq` for its interrupts.
    pub fn new(
        mem: GuestMemory,
        device: Arc<Mutex<dyn VirtioDevice>>,
        irq: Arc<dyn Interrupt>,
    ) -> Result<Self, MmioError> {
        let (device_type, avail_features, max_sizes) = {
            let d = lock(&device);
            (
                d.device_type(),
                d.avail_features(),
                d.queue_max_sizes().to_vec(),
            )
        };
        if avail_features & VIRTIO_F_VERSION_1 == 0 {
            return Err(MmioError::NotModern);
        }
        if max_sizes.is_empty() {
            return Err(MmioError::QueueMaxSize(0));
        }
        let queues = max_sizes
            .iter()
            .map(|&m| Queue::new(m).map_err(|_| MmioError::QueueMaxSize(m)))
            .collect::<Result<Vec<_>, _>>()?;
        let queue_evts = max_sizes
            .iter()
            .map(|_| EventFd::new(EFD_NONBLOCK).map_err(MmioError::EventFd))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            device,
            mem,
            interrupt: Arc::new(VirtioInterrupt::new(irq)),
            queues,
            queue_evts,
            device_type,
            avail_features,
            device_status: 0,
            features_select: 0,
            acked_features_select: 0,
            acked_features: 0,
            queue_select: 0,
        })
    }

    /// The eventfd for each queue with the `QueueNotify` value that selects it: register each
    /// as a KVM ioeventfd at `base + NOTIFY_REG_OFFSET` with that value as datamatch (u32).
    pub fn queue_notify_events(&self) -> impl Iterator<Item = (&EventFd, u32)> {
        self.queue_evts.iter().zip(0u32..)
    }

    /// The device's interrupt status, shared with the device.
    pub fn interrupt(&self) -> &Arc<VirtioInterrupt> {
        &self.interrupt
    }

    /// The device status register as the guest reads it.
    pub fn status(&self) -> u32 {
        let needs_reset = if self.interrupt.needs_reset() {
            status::DEVICE_NEEDS_RESET
        } else {
            0
        };
        self.device_status | needs_reset
    }

    /// Whether the driver set DRIVER_OK and the device accepted its queues.
    pub fn is_activated(&self) -> bool {
        self.device_status & status::DRIVER_OK != 0
    }

    /// Queue registers may be written only between FEATURES_OK and DRIVER_OK.
    fn queue_config_allowed(&self) -> bool {
        self.device_status == status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK
            && !self.interrupt.needs_reset()
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(self.queue_select as usize)
    }

    fn fail(&self, what: &str) {
        log::warn!("virtio-mmio (device type {}): {what}", self.device_type);
        self.interrupt.set_needs_reset();
    }

    fn reset(&mut self) {
        if self.device_status != 0 {
            lock(&self.device).reset();
        }
        for q in &mut self.queues {
            q.reset();
        }
        for evt in &self.queue_evts {
            // Drop notifications that were pending for the old queues.
            let _ = evt.read();
        }
        self.device_status = 0;
        self.features_select = 0;
        self.acked_features_select = 0;
        self.acked_features = 0;
        self.queue_select = 0;
        self.interrupt.reset();
    }

    fn set_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        // NEEDS_RESET is the device's to set; the driver echoes it back when writing status.
        let value = value & !status::DEVICE_NEEDS_RESET;
        if value & status::FAILED != 0 {
            log::warn!("virtio driver gave up on device type {}", self.device_type);
            self.device_status |= status::FAILED;
            return;
        }
        let old = self.device_status;
        if value == old {
            return;
        }
        let added = value & !old;
        // Bits are only ever added, one at a time, in SETUP_ORDER.
        let expected = SETUP_ORDER.iter().find(|&&b| old & b == 0).copied();
        if value & old != old || Some(added) != expected {
            log::warn!(
                "ignoring invalid virtio status transition {old:#x} -> {value:#x} (device type {})",
                self.device_type
            );
            return;
        }
        match added {
            status::FEATURES_OK => {
                let unknown = self.acked_features & !self.avail_features;
                if unknown != 0 || self.acked_features & VIRTIO_F_VERSION_1 == 0 {
                    // Not setting FEATURES_OK tells the driver we refuse its feature set.
                    log::warn!(
                        "virtio driver acked features {:#x} (offered {:#x}): refused",
                        self.acked_features,
                        self.avail_features
                    );
                    return;
                }
            }
            status::DRIVER_OK if !self.activate() => return,
            _ => {}
        }
        self.device_status = value;
    }

    /// Validates the queues and hands them to the device. False (and NEEDS_RESET) if the
    /// driver's setup is unusable or the device refuses it.
    fn activate(&mut self) -> bool {
        if self.interrupt.needs_reset() {
            return false;
        }
        let event_idx =
            self.acked_features & (1 << virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX) != 0;
        let mut queues = Vec::with_capacity(self.queues.len());
        for (i, q) in self.queues.iter_mut().enumerate() {
            if q.ready() && !q.is_valid(&self.mem) {
                self.fail(&format!("queue {i} set up outside guest memory"));
                return false;
            }
            q.set_event_idx(event_idx);
            match Queue::try_from(q.state()) {
                Ok(copy) => queues.push(copy),
                Err(e) => {
                    self.fail(&format!("queue {i} state is invalid: {e}"));
                    return false;
                }
            }
        }
        let mut queue_evts = Vec::with_capacity(self.queue_evts.len());
        for evt in &self.queue_evts {
            match evt.try_clone() {
                Ok(e) => queue_evts.push(e),
                Err(e) => {
                    self.fail(&format!("cannot duplicate a queue eventfd: {e}"));
                    return false;
                }
            }
        }
        let ctx = ActivateContext {
            mem: self.mem.clone(),
            queues,
            queue_evts,
            interrupt: self.interrupt.clone(),
            acked_features: self.acked_features,
        };
        if let Err(e) = lock(&self.device).activate(ctx) {
            self.fail(&format!("activation failed: {e}"));
            return false;
        }
        true
    }

    fn read_reg(&self, offset: u64) -> u32 {
        match offset {
            REG_MAGIC => MMIO_MAGIC_VALUE,
            REG_VERSION => MMIO_VERSION,
            REG_DEVICE_ID => self.device_type,
            REG_VENDOR_ID => VENDOR_ID,
            REG_DEVICE_FEATURES => match self.features_select {
                0 => self.avail_features as u32,
                1 => (self.avail_features >> 32) as u32,
                _ => 0,
            },
            REG_QUEUE_NUM_MAX => self
                .queues
                .get(self.queue_select as usize)
                .map_or(0, |q| u32::from(q.max_size())),
            REG_QUEUE_READY => self
                .queues
                .get(self.queue_select as usize)
                .map_or(0, |q| u32::from(q.ready())),
            REG_INTERRUPT_STATUS => self.interrupt.status(),
            REG_STATUS => self.status(),
            // No shared memory regions: their length reads as -1.
            REG_SHM_LEN_LOW | REG_SHM_LEN_HIGH | REG_SHM_BASE_LOW | REG_SHM_BASE_HIGH => u32::MAX,
            REG_CONFIG_GENERATION => self.interrupt.config_generation(),
            _ => {
                log::debug!("virtio-mmio read of unknown register {offset:#x}");
                0
            }
        }
    }

    fn write_reg(&mut self, offset: u64, v: u32) {
        let driver_features_allowed = self.device_status & status::DRIVER != 0
            && self.device_status & status::FEATURES_OK == 0;
        match offset {
            REG_DEVICE_FEATURES_SEL => self.features_select = v,
            REG_DRIVER_FEATURES_SEL => self.acked_features_select = v,
            REG_DRIVER_FEATURES if driver_features_allowed => match self.acked_features_select {
                0 => self.acked_features = (self.acked_features & !0xffff_ffff) | u64::from(v),
                1 => {
                    self.acked_features = (self.acked_features & 0xffff_ffff) | (u64::from(v) << 32)
                }
                _ => log::debug!(
                    "ignoring driver features word {}",
                    self.acked_features_select
                ),
            },
            REG_QUEUE_SEL => self.queue_select = v,
            REG_QUEUE_NUM | REG_QUEUE_READY | REG_QUEUE_DESC_LOW | REG_QUEUE_DESC_HIGH
            | REG_QUEUE_AVAIL_LOW | REG_QUEUE_AVAIL_HIGH | REG_QUEUE_USED_LOW
            | REG_QUEUE_USED_HIGH => self.write_queue_reg(offset, v),
            NOTIFY_REG_OFFSET => match self.queue_evts.get(v as usize) {
                Some(evt) => {
                    if let Err(e) = evt.write(1) {
                        log::error!("cannot forward virtio queue notification: {e}");
                    }
                }
                None => log::debug!("notification for nonexistent queue {v}"),
            },
            REG_INTERRUPT_ACK => self.interrupt.ack(v),
            REG_STATUS => self.set_status(v),
            _ => log::debug!(
                "ignoring virtio-mmio write {v:#x} to {offset:#x} in status {:#x}",
                self.device_status
            ),
        }
    }

    fn write_queue_reg(&mut self, offset: u64, v: u32) {
        if !self.queue_config_allowed() {
            log::debug!(
                "ignoring queue register write in status {:#x}",
                self.device_status
            );
            return;
        }
        let sel = self.queue_select;
        let mem = self.mem.clone();
        let Some(q) = self.selected_queue() else {
            self.fail(&format!("driver configures nonexistent queue {sel}"));
            return;
        };
        let set_low = |addr: u64| (addr & !0xffff_ffff) | u64::from(v);
        let set_high = |addr: u64| (addr & 0xffff_ffff) | (u64::from(v) << 32);
        let result = match offset {
            REG_QUEUE_NUM => u16::try_from(v)
                .map_err(|_| virtio_queue::Error::InvalidSize)
                .and_then(|size| q.try_set_size(size)),
            REG_QUEUE_READY => {
                q.set_ready(v == 1);
                if v == 1 && !q.is_valid(&mem) {
                    q.set_ready(false);
                    Err(virtio_queue::Error::QueueNotReady)
                } else {
                    Ok(())
                }
            }
            REG_QUEUE_DESC_LOW => {
                q.try_set_desc_table_address(GuestAddress(set_low(q.desc_table())))
            }
            REG_QUEUE_DESC_HIGH => {
                q.try_set_desc_table_address(GuestAddress(set_high(q.desc_table())))
            }
            REG_QUEUE_AVAIL_LOW => {
                q.try_set_avail_ring_address(GuestAddress(set_low(q.avail_ring())))
            }
            REG_QUEUE_AVAIL_HIGH => {
                q.try_set_avail_ring_address(GuestAddress(set_high(q.avail_ring())))
            }
            REG_QUEUE_USED_LOW => q.try_set_used_ring_address(GuestAddress(set_low(q.used_ring()))),
            REG_QUEUE_USED_HIGH => {
                q.try_set_used_ring_address(GuestAddress(set_high(q.used_ring())))
            }
            _ => Ok(()),
        };
        if let Err(e) = result {
            self.fail(&format!(
                "bad value {v:#x} for queue {sel} register {offset:#x}: {e}"
            ));
        }
    }
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= CONFIG_SPACE_OFFSET {
            lock(&self.device).read_config(offset - CONFIG_SPACE_OFFSET, data);
            return;
        }
        match <&mut [u8; 4]>::try_from(&mut *data) {
            Ok(word) if offset.is_multiple_of(4) => *word = self.read_reg(offset).to_le_bytes(),
            _ => {
                log::debug!("virtio-mmio {}-byte read at {offset:#x}", data.len());
                data.fill(0);
            }
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= CONFIG_SPACE_OFFSET {
            let allowed = self.device_status & status::DRIVER != 0
                && self.device_status & status::FAILED == 0;
            if allowed {
                lock(&self.device).write_config(offset - CONFIG_SPACE_OFFSET, data);
            }
            return;
        }
        match <[u8; 4]>::try_from(data) {
            Ok(word) if offset.is_multiple_of(4) => {
                self.write_reg(offset, u32::from_le_bytes(word))
            }
            _ => log::debug!(
                "ignoring virtio-mmio {}-byte write at {offset:#x}",
                data.len()
            ),
        }
    }
}

/// Locks a device, tolerating poisoning (a panicked event-loop thread must not take the
/// vCPU threads down too).
fn lock(device: &Mutex<dyn VirtioDevice>) -> MutexGuard<'_, dyn VirtioDevice + 'static> {
    device.lock().unwrap_or_else(|e| e.into_inner())
}

#[path = "mmio_persist.rs"]
pub mod persist;

#[cfg(test)]
#[path = "mmio_tests.rs"]
mod tests;
