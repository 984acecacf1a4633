//! Fuzzing entry point for virtio-blk descriptor-chain handling, shared by the cargo-fuzz
//! target (`vmm/fuzz/fuzz_targets/blk_chain.rs`) and a bounded random-input unit test.
//!
//! The input becomes the first bytes of a small guest RAM that holds the descriptor table,
//! the available ring, request headers and buffers: the fuzzer controls every descriptor
//! (addresses, lengths, flags, next links, indirect tables) and the available index. The
//! device must neither panic nor touch memory outside guest RAM.

use std::cell::RefCell;

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::request::{self, Disk};
use crate::devices::virtio::{process_chains, VirtioInterrupt};
use crate::memory::GuestMemory;

const RAM: usize = 0x1_0000;
const QUEUE_SIZE: u16 = 16;
const DESC_TABLE: u64 = 0x0;
const AVAIL_RING: u64 = 0x100;
const USED_RING: u64 = 0x200;

struct NoIrq;
impl crate::devices::interrupt::Interrupt for NoIrq {
    fn trigger(&self) -> std::io::Result<()> {
        Ok(())
    }
}

thread_local! {
    static DISK: RefCell<Option<Disk>> = const { RefCell::new(None) };
}

fn scratch_disk() -> Disk {
    let tmp = vmm_sys_util::tempfile::TempFile::new().expect("temp file for the fuzz disk");
    let file = tmp.into_file();
    file.set_len(64 * request::SECTOR_SIZE)
        .expect("size the fuzz disk");
    let read_only = false;
    Disk::new(file, read_only, "fuzz").expect("fuzz disk")
}

/// Runs one virtio-blk queue pass over guest memory initialised from `data`.
pub fn blk_chain(data: &[u8]) {
    let mem: GuestMemory =
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), RAM)]).expect("fuzz guest memory");
    let n = data.len().min(RAM);
    mem.write_slice(&data[..n], GuestAddress(0))
        .expect("in range");
    let mut queue = Queue::new(QUEUE_SIZE).expect("valid size");
    queue.set_size(QUEUE_SIZE);
    queue.set_desc_table_address(Some(DESC_TABLE as u32), Some(0));
    queue.set_avail_ring_address(Some(AVAIL_RING as u32), Some(0));
    queue.set_used_ring_address(Some(USED_RING as u32), Some(0));
    queue.set_ready(true);
    let interrupt = VirtioInterrupt::new(std::sync::Arc::new(NoIrq));
    DISK.with(|d| {
        let mut d = d.borrow_mut();
        let disk = d.get_or_insert_with(scratch_disk);
        process_chains(&mem, &mut queue, &interrupt, |descs| {
            request::handle(&mem, descs, disk)
        });
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// xorshift64*: deterministic, dependency-free input generator.
    struct Rand(u64);
    impl Rand {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
    }

    /// Random, but biased towards structure: plausible descriptors (small addresses inside
    /// RAM, header/status-like lengths, NEXT/WRITE/INDIRECT flags) mixed with noise.
    fn input(r: &mut Rand) -> Vec<u8> {
        let mut v = vec![0u8; 0x1000];
        for b in v.iter_mut() {
            *b = r.next() as u8;
        }
        for i in 0..QUEUE_SIZE as usize {
            let at = i * 16;
            let addr = match r.next() % 4 {
                0 => r.next(),
                _ => 0x300 + (r.next() % 0xfd00),
            };
            let len = match r.next() % 4 {
                0 => 16,
                1 => 1,
                2 => 512 * (1 + r.next() as u32 % 4),
                _ => r.next() as u32,
            };
            let flags = (r.next() % 8) as u16;
            let next = (r.next() % 20) as u16;
            v[at..at + 8].copy_from_slice(&addr.to_le_bytes());
            v[at + 8..at + 12].copy_from_slice(&len.to_le_bytes());
            v[at + 12..at + 14].copy_from_slice(&flags.to_le_bytes());
            v[at + 14..at + 16].copy_from_slice(&next.to_le_bytes());
        }
        // avail.idx: usually a sane count, sometimes anything.
        let idx = if r.next().is_multiple_of(8) {
            r.next() as u16
        } else {
            (r.next() % 17) as u16
        };
        v[0x102..0x104].copy_from_slice(&idx.to_le_bytes());
        // Request headers at the start of the buffer area.
        for h in (0x300..0x400).step_by(16) {
            v[h..h + 4].copy_from_slice(&((r.next() % 9) as u32).to_le_bytes());
            v[h + 8..h + 16].copy_from_slice(&(r.next() % 80).to_le_bytes());
        }
        v
    }

    #[test]
    fn random_chains_never_panic() {
        let mut r = Rand(0x5eed_1234_abcd_ef01);
        for _ in 0..3000 {
            blk_chain(&input(&mut r));
        }
        blk_chain(&[]);
        blk_chain(&[0xff; RAM + 100]);
    }
}
