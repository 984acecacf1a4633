//! Test helpers: guest memory, and a driver-side view of a split virtqueue laid out in it
//! (addresses computed by virtio-queue's `MockSplitQueue`).

use std::sync::{Arc, Mutex, Once};

use virtio_queue::desc::split::Descriptor;
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::Queue;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::{ActivateContext, VirtioInterrupt};
use crate::devices::interrupt::IrqFd;
use crate::memory::GuestMemory;

/// Descriptor flag: another descriptor follows.
pub const NEXT: u16 = virtio_bindings::virtio_ring::VRING_DESC_F_NEXT as u16;
/// Descriptor flag: device-writable.
pub const WRITE: u16 = virtio_bindings::virtio_ring::VRING_DESC_F_WRITE as u16;
/// Size of the test guest RAM.
pub const MEM_SIZE: u64 = 0x100_0000;

/// 16 MiB of guest RAM at 0.
pub fn test_mem() -> GuestMemory {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).unwrap()
}

/// The driver's side of one split queue.
pub struct TestQueue {
    mem: GuestMemory,
    size: u16,
    desc: GuestAddress,
    avail: GuestAddress,
    used: GuestAddress,
    next_desc: u16,
    avail_idx: u16,
}

impl TestQueue {
    /// A queue of `size` entries whose rings start at `start`.
    pub fn new(mem: &GuestMemory, start: u64, size: u16) -> Self {
        let mock = MockSplitQueue::create(mem, GuestAddress(start), size);
        Self {
            mem: mem.clone(),
            size,
            desc: mock.desc_table_addr(),
            avail: mock.avail_addr(),
            used: mock.used_addr(),
            next_desc: 0,
            avail_idx: 0,
        }
    }

    /// The device-side queue, configured and ready.
    pub fn queue(&self) -> Queue {
        MockSplitQueue::create(&self.mem, self.desc, self.size)
            .create_queue::<Queue>()
            .unwrap()
    }

    /// The number of entries.
    pub fn size(&self) -> u16 {
        self.size
    }

    /// Ring addresses: (descriptor table, avail ring, used ring).
    pub fn addrs(&self) -> (u64, u64, u64) {
        (self.desc.0, self.avail.0, self.used.0)
    }

    /// Writes descriptor `index` verbatim.
    pub fn write_desc(&self, index: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let at = self.desc.unchecked_add(16 * u64::from(index));
        self.mem
            .write_obj(Descriptor::new(addr, len, flags, next), at)
            .unwrap();
    }

    /// Offers the chain starting at descriptor `head` to the device.
    pub fn publish(&mut self, head: u16) {
        let slot = u64::from(self.avail_idx % self.size);
        self.mem
            .write_obj(head, self.avail.unchecked_add(4 + 2 * slot))
            .unwrap();
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.mem
            .write_obj(self.avail_idx, self.avail.unchecked_add(2))
            .unwrap();
    }

    /// Writes `descs` (addr, len, flags) as a chain at the next free descriptors, linking them
    /// with NEXT, and offers it. Returns the head index.
    pub fn add_chain(&mut self, descs: &[(u64, u32, u16)]) -> u16 {
        let head = self.next_desc;
        for (i, &(addr, len, flags)) in descs.iter().enumerate() {
            let idx = (self.next_desc + i as u16) % self.size;
            let last = i + 1 == descs.len();
            let flags = if last { flags & !NEXT } else { flags | NEXT };
            self.write_desc(idx, addr, len, flags, (idx + 1) % self.size);
        }
        self.next_desc = (self.next_desc + descs.len() as u16) % self.size;
        self.publish(head);
        head
    }

    /// The used ring entries so far: (descriptor head, bytes written).
    pub fn used(&self) -> Vec<(u32, u32)> {
        let idx: u16 = self.mem.read_obj(self.used.unchecked_add(2)).unwrap();
        (0..idx)
            .map(|i| {
                let at = self.used.unchecked_add(4 + 8 * u64::from(i % self.size));
                let id: u32 = self.mem.read_obj(at).unwrap();
                let len: u32 = self.mem.read_obj(at.unchecked_add(4)).unwrap();
                (id, len)
            })
            .collect()
    }
}

/// An interrupt whose eventfd counts the triggers.
pub fn test_interrupt() -> (Arc<VirtioInterrupt>, Arc<IrqFd>) {
    let irq = Arc::new(IrqFd::new(5).unwrap());
    (Arc::new(VirtioInterrupt::new(irq.clone())), irq)
}

/// An activation context for `queues`.
pub fn activate_ctx(
    mem: &GuestMemory,
    queues: &[&TestQueue],
    interrupt: Arc<VirtioInterrupt>,
    acked_features: u64,
) -> ActivateContext {
    ActivateContext {
        mem: mem.clone(),
        queues: queues.iter().map(|q| q.queue()).collect(),
        queue_evts: queues
            .iter()
            .map(|_| EventFd::new(EFD_NONBLOCK).unwrap())
            .collect(),
        interrupt,
        acked_features,
    }
}

/// Log lines (`LEVEL message`, info and above) from every thread since the test binary
/// started; tests pick theirs by a unique word (e.g. a device tag).
static LOG_LINES: Mutex<Vec<String>> = Mutex::new(Vec::new());

struct CaptureLogger;

impl log::Log for CaptureLogger {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.level() <= log::Level::Info
    }

    fn log(&self, record: &log::Record) {
        if self.enabled(record.metadata()) {
            let line = format!("{} {}", record.level(), record.args());
            LOG_LINES
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(line);
        }
    }

    fn flush(&self) {}
}

/// Starts capturing log lines (once per test binary).
pub fn capture_logs() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        log::set_logger(&CaptureLogger).expect("no other logger in vmm unit tests");
        log::set_max_level(log::LevelFilter::Info);
    });
}

/// The captured log lines that contain `needle`.
pub fn log_lines_with(needle: &str) -> Vec<String> {
    LOG_LINES
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .filter(|l| l.contains(needle))
        .cloned()
        .collect()
}
