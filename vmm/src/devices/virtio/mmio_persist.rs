//! A virtio-mmio device's state in a snapshot: the transport registers, each queue's
//! configuration and ring positions, the interrupt registers; and its restore, which
//! activates the device again with those queues.
//!
//! Ring positions: every device here returns each chain it pops to the used ring before
//! its event-loop turn ends (vsock and net put back an RX chain they cannot fill), so a
//! device at rest has consumed exactly the chains it used: `next_avail == next_used ==`
//! the used ring's `idx` in guest memory. The snapshot reads that index from guest RAM
//! rather than asking each device, which also covers vhost-user devices whose positions
//! live in the backend. A device's own state beyond its queues (vsock connections, a FUSE
//! session) is not carried over: after a restore the device tells the driver what it needs
//! (`VirtioDevice::restored`: vsock sends TRANSPORT_RESET) and vhost-user devices connect
//! to a fresh backend, given the saved ring positions by `activate` (SET_VRING_BASE).

use serde::{Deserialize, Serialize};
use virtio_queue::{Queue, QueueState, QueueT};
use vm_memory::{Bytes, GuestAddress};

use super::{lock, MmioTransport};
use crate::devices::virtio::status;

/// Errors restoring a transport from a snapshot (a state that does not fit this device).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TransportRestoreError {
    #[error("the snapshot has a virtio device of type {saved} where this VM has type {here}")]
    DeviceType { saved: u32, here: u32 },
    #[error("the snapshot's virtio device of type {0} has {1} queues, the device has {2}")]
    QueueCount(u32, usize, usize),
    #[error("queue {1} of the virtio device of type {0} is invalid in the snapshot")]
    BadQueue(u32, usize),
    #[error("the virtio device of type {0} refused to start again from the snapshot")]
    Activate(u32),
}

/// One queue: what the driver configured and where the rings stand.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueSnapshot {
    pub size: u16,
    pub ready: bool,
    pub desc_table: u64,
    pub avail_ring: u64,
    pub used_ring: u64,
    pub next_avail: u16,
    pub next_used: u16,
}

/// One virtio-mmio device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransportState {
    pub device_type: u32,
    pub device_status: u32,
    pub features_select: u32,
    pub acked_features_select: u32,
    pub acked_features: u64,
    pub queue_select: u32,
    pub queues: Vec<QueueSnapshot>,
    pub interrupt_status: u32,
    pub config_generation: u32,
    pub needs_reset: bool,
}

impl MmioTransport {
    /// The device's state (call with the vCPUs paused).
    pub fn save_state(&self) -> TransportState {
        let active = self.is_activated();
        let queues = self
            .queues
            .iter()
            .map(|q| {
                let mut next = (q.next_avail(), q.next_used());
                if active && q.ready() {
                    // The used ring's idx field follows its 16-bit flags.
                    let at = GuestAddress(q.used_ring()).0.wrapping_add(2);
                    if let Ok(idx) = self.mem.read_obj::<u16>(GuestAddress(at)) {
                        next = (idx, idx);
                    }
                }
                QueueSnapshot {
                    size: q.size(),
                    ready: q.ready(),
                    desc_table: q.desc_table(),
                    avail_ring: q.avail_ring(),
                    used_ring: q.used_ring(),
                    next_avail: next.0,
                    next_used: next.1,
                }
            })
            .collect();
        TransportState {
            device_type: self.device_type,
            device_status: self.device_status,
            features_select: self.features_select,
            acked_features_select: self.acked_features_select,
            acked_features: self.acked_features,
            queue_select: self.queue_select,
            queues,
            interrupt_status: self.interrupt.status(),
            config_generation: self.interrupt.config_generation(),
            needs_reset: self.interrupt.needs_reset(),
        }
    }

    /// Sets a saved state into this freshly attached transport (same device type, same
    /// queues) and, if the driver had started the device, activates it again and lets it
    /// tell the driver about the restore. The saved values are untrusted: queues are
    /// validated as a driver's would be.
    pub fn restore_state(&mut self, s: &TransportState) -> Result<(), TransportRestoreError> {
        let ty = self.device_type;
        if s.device_type != ty {
            return Err(TransportRestoreError::DeviceType {
                saved: s.device_type,
                here: ty,
            });
        }
        if s.queues.len() != self.queues.len() {
            return Err(TransportRestoreError::QueueCount(
                ty,
                s.queues.len(),
                self.queues.len(),
            ));
        }
        let mut queues = Vec::with_capacity(s.queues.len());
        for (i, (saved, q)) in s.queues.iter().zip(&self.queues).enumerate() {
            let state = QueueState {
                max_size: q.max_size(),
                next_avail: saved.next_avail,
                next_used: saved.next_used,
                event_idx_enabled: false,
                size: saved.size,
                ready: saved.ready,
                desc_table: saved.desc_table,
                avail_ring: saved.avail_ring,
                used_ring: saved.used_ring,
            };
            let queue = Queue::try_from(state)
                .ok()
                .filter(|q| !q.ready() || q.is_valid(&self.mem))
                .ok_or(TransportRestoreError::BadQueue(ty, i))?;
            queues.push(queue);
        }
        self.queues = queues;
        self.features_select = s.features_select;
        self.acked_features_select = s.acked_features_select;
        self.acked_features = s.acked_features & self.avail_features;
        self.queue_select = s.queue_select;
        self.interrupt
            .restore(s.interrupt_status, s.config_generation, s.needs_reset);
        let status = s.device_status & !status::DEVICE_NEEDS_RESET;
        if status & status::DRIVER_OK != 0 && status & status::FAILED == 0 {
            if !self.activate() {
                return Err(TransportRestoreError::Activate(ty));
            }
            self.device_status = status;
            lock(&self.device).restored();
        } else {
            self.device_status = status;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::bus::BusDevice;
    use crate::devices::interrupt::IrqFd;
    use crate::devices::virtio::rng::Rng;
    use crate::devices::virtio::test_utils::test_mem;
    use crate::memory::GuestMemory;

    /// Drives a transport through the driver's setup with one queue at `base`.
    fn set_up(t: &mut MmioTransport, base: u64) {
        let w = |t: &mut MmioTransport, off: u64, v: u32| t.write(off, &v.to_le_bytes());
        w(t, 0x70, 1);
        w(t, 0x70, 3);
        w(t, 0x24, 1);
        w(t, 0x20, 1); // VIRTIO_F_VERSION_1 (bit 32)
        w(t, 0x70, 0xb);
        w(t, 0x30, 0);
        w(t, 0x38, 16);
        w(t, 0x80, base as u32);
        w(t, 0x90, (base + 0x1000) as u32);
        w(t, 0xa0, (base + 0x2000) as u32);
        w(t, 0x44, 1);
        w(t, 0x70, 0xf);
    }

    fn transport_on(mem: &GuestMemory) -> MmioTransport {
        let irq = Arc::new(IrqFd::new(5).unwrap());
        let dev = Arc::new(Mutex::new(Rng::new().unwrap()));
        MmioTransport::new(mem.clone(), dev, irq).unwrap()
    }

    fn transport() -> MmioTransport {
        transport_on(&test_mem())
    }

    #[test]
    fn an_active_device_round_trips_with_ring_positions_from_guest_memory() {
        let mem = test_mem();
        let mut t = transport_on(&mem);
        set_up(&mut t, 0x10_0000);
        assert!(t.is_activated());
        // The device has used 5 chains: the used ring's idx says so.
        t.mem.write_obj(5u16, GuestAddress(0x10_2002)).unwrap();
        let s = t.save_state();
        assert_eq!(s.device_status, 0xf);
        assert_eq!((s.queues[0].next_avail, s.queues[0].next_used), (5, 5));
        assert_eq!(s.queues[0].size, 16);
        let text = serde_json::to_string(&s).unwrap();
        let s: TransportState = serde_json::from_str(&text).unwrap();

        let mut r = transport_on(&mem);
        r.restore_state(&s).unwrap();
        assert!(r.is_activated());
        assert_eq!(r.save_state(), s);
        let mut b = [0u8; 4];
        r.read(0x70, &mut b);
        assert_eq!(u32::from_le_bytes(b), 0xf);
    }

    #[test]
    fn a_state_that_does_not_fit_is_refused() {
        let mut t = transport();
        set_up(&mut t, 0x10_0000);
        let good = t.save_state();
        let mut s = good.clone();
        s.device_type = 3;
        assert!(matches!(
            transport().restore_state(&s),
            Err(TransportRestoreError::DeviceType { saved: 3, .. })
        ));
        let mut s = good.clone();
        s.queues.push(s.queues[0]);
        assert!(transport().restore_state(&s).is_err());
        let mut s = good.clone();
        s.queues[0].size = 3; // not a power of two
        assert_eq!(
            transport().restore_state(&s),
            Err(TransportRestoreError::BadQueue(s.device_type, 0))
        );
        let mut s = good;
        s.queues[0].used_ring = u64::MAX - 8; // outside guest memory
        assert!(transport().restore_state(&s).is_err());
    }
}
