//! Port-I/O and MMIO buses: address ranges mapped to devices, used by the vCPU threads.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// A device reachable by guest port-I/O or MMIO accesses.
///
/// `offset` is relative to the start of the range the device was inserted at. Accesses
/// come straight from the guest: a device must accept any offset and length without
/// panicking (ignore writes it does not understand, read back zeroes).
pub trait BusDevice: Send {
    /// A guest read of `data.len()` bytes at `offset`.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// A guest write of `data` at `offset`.
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// A guest read of a byte-wide register: `reg` answers for `offset` (when it fits a byte),
/// the value goes in the first byte, any wider access reads the rest as zero.
pub fn read_byte_register(offset: u64, data: &mut [u8], reg: impl FnOnce(u8) -> u8) {
    let v = u8::try_from(offset).map(reg).unwrap_or(0);
    data.fill(0);
    if let Some(b) = data.first_mut() {
        *b = v;
    }
}

/// A guest write to a byte-wide register: only single-byte writes at offsets that fit a
/// byte reach `reg`; others are dropped.
pub fn write_byte_register(offset: u64, data: &[u8], reg: impl FnOnce(u8, u8)) {
    if let (Ok(o), [v]) = (u8::try_from(offset), data) {
        reg(o, *v);
    }
}

/// Errors inserting devices on a bus.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("bus range {base:#x}+{len:#x} is empty or overlaps another device")]
    Overlap { base: u64, len: u64 },
}

/// A shared device handle as stored on the bus.
pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

/// How many guest reads and writes reached one device (relaxed counters, for metrics).
#[derive(Debug, Default)]
pub struct AccessCounts {
    pub reads: AtomicU64,
    pub writes: AtomicU64,
}

#[derive(Clone)]
struct Entry {
    len: u64,
    device: SharedDevice,
    counts: Arc<AccessCounts>,
}

/// One mapped range, as `Bus::entries` lists it.
#[derive(Clone)]
pub struct BusEntry {
    pub base: u64,
    pub len: u64,
    pub device: SharedDevice,
    pub counts: Arc<AccessCounts>,
}

/// A set of non-overlapping address ranges, each owned by one device.
#[derive(Clone, Default)]
pub struct Bus {
    ranges: BTreeMap<u64, Entry>,
}

impl Bus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Maps `[base, base + len)` to `device`.
    pub fn insert(&mut self, device: SharedDevice, base: u64, len: u64) -> Result<(), BusError> {
        let overlap = || BusError::Overlap { base, len };
        let end = base
            .checked_add(len)
            .filter(|_| len > 0)
            .ok_or_else(overlap)?;
        if let Some((b, e)) = self.ranges.range(..end).next_back() {
            if b + e.len > base {
                return Err(overlap());
            }
        }
        let counts = Arc::default();
        self.ranges.insert(
            base,
            Entry {
                len,
                device,
                counts,
            },
        );
        Ok(())
    }

    fn find(&self, addr: u64) -> Option<(u64, &Entry)> {
        let (base, e) = self.ranges.range(..=addr).next_back()?;
        (addr - base < e.len).then_some((addr - base, e))
    }

    /// Dispatches a read; returns false if no device owns `addr`.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.find(addr) {
            Some((off, e)) => {
                e.counts.reads.fetch_add(1, Ordering::Relaxed);
                lock(&e.device).read(off, data);
                true
            }
            None => false,
        }
    }

    /// Dispatches a write; returns false if no device owns `addr`.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.find(addr) {
            Some((off, e)) => {
                e.counts.writes.fetch_add(1, Ordering::Relaxed);
                lock(&e.device).write(off, data);
                true
            }
            None => false,
        }
    }

    /// The mapped ranges in address order, with their devices and access counters.
    pub fn entries(&self) -> Vec<BusEntry> {
        self.ranges
            .iter()
            .map(|(&base, e)| BusEntry {
                base,
                len: e.len,
                device: e.device.clone(),
                counts: e.counts.clone(),
            })
            .collect()
    }
}

/// Locks a device, tolerating a poisoned mutex: a device thread that panicked must not
/// take the vCPU threads down with it.
pub fn lock(dev: &SharedDevice) -> std::sync::MutexGuard<'_, dyn BusDevice + 'static> {
    dev.lock().unwrap_or_else(|e| e.into_inner())
}

/// The buses a vCPU dispatches guest I/O to.
pub struct Buses {
    pub pio: Bus,
    pub mmio: Bus,
}

impl crate::exits::IoDispatch for Buses {
    fn pio_read(&self, port: u16, data: &mut [u8]) -> bool {
        self.pio.read(u64::from(port), data)
    }
    fn pio_write(&self, port: u16, data: &[u8]) -> bool {
        self.pio.write(u64::from(port), data)
    }
    fn mmio_read(&self, addr: u64, data: &mut [u8]) -> bool {
        self.mmio.read(addr, data)
    }
    fn mmio_write(&self, addr: u64, data: &[u8]) -> bool {
        self.mmio.write(addr, data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Recorder {
        writes: Vec<(u64, Vec<u8>)>,
    }
    impl BusDevice for Recorder {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.writes.push((offset, data.to_vec()));
        }
    }

    #[test]
    fn dispatch_uses_offsets_within_the_range() {
        let dev = Arc::new(Mutex::new(Recorder::default()));
        let mut bus = Bus::new();
        bus.insert(dev.clone(), 0x3f8, 8).unwrap();
        let mut b = [0u8; 1];
        assert!(bus.read(0x3fa, &mut b));
        assert_eq!(b[0], 2);
        assert!(bus.write(0x3ff, &[7]));
        assert!(!bus.write(0x400, &[7]));
        assert!(!bus.read(0x3f7, &mut b));
        assert_eq!(dev.lock().unwrap().writes, vec![(7, vec![7])]);
        let e = &bus.entries()[0];
        assert_eq!((e.base, e.len), (0x3f8, 8));
        assert_eq!(e.counts.reads.load(Ordering::Relaxed), 1);
        assert_eq!(e.counts.writes.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn overlapping_and_empty_ranges_are_rejected() {
        let mut bus = Bus::new();
        let d = || Arc::new(Mutex::new(Recorder::default())) as SharedDevice;
        bus.insert(d(), 0x100, 0x10).unwrap();
        assert!(bus.insert(d(), 0x10f, 1).is_err());
        assert!(bus.insert(d(), 0xf8, 0x10).is_err());
        assert!(bus.insert(d(), 0x200, 0).is_err());
        assert!(bus.insert(d(), u64::MAX, 2).is_err());
        bus.insert(d(), 0x110, 1).unwrap();
        bus.insert(d(), 0xf0, 0x10).unwrap();
    }
}
