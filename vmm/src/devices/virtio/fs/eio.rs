//! Answering the guest's FUSE requests once the backend is gone.
//!
//! Linux's virtio-fs driver ignores `DEVICE_NEEDS_RESET`: without a backend its requests
//! would wait forever (a `cat` in the container hangs in the kernel). So when the backend
//! hangs up, the device takes its queues over: every request the driver made available
//! and nobody answered, and every later one, gets a FUSE reply with `error = -EIO`, and
//! the guest's system calls fail with EIO instead.
//!
//! # Where the backend stopped
//!
//! The backend consumed the available ring up to some index the VMM does not know (it was
//! never told: `GET_VRING_BASE` needs a live backend), and completed requests up to the
//! used index it wrote to guest memory. virtiofsd completes a queue's requests in order,
//! so every chain from the used index to the driver's available index is unanswered:
//! the device resumes both its available and used positions at the used index. (Chains
//! the backend completed out of order would be answered twice; the driver then sees a
//! reply for a request it no longer waits for, which it logs and drops.)
//!
//! # Requests and replies
//!
//! A request chain is device-readable descriptors (`struct fuse_in_header` first: `u32
//! len, u32 opcode, u64 unique, u64 nodeid, u32 uid, u32 gid, u32 pid, u16 total_extlen,
//! u16 padding`, then the arguments) followed by device-writable ones (the reply, `struct
//! fuse_out_header` first: `u32 len, i32 error, u64 unique`). The reply is that header
//! alone: `len = 16`, `error = -EIO`, `unique` copied from the request, written into the
//! first writable descriptor; the used length is 16. A chain without writable descriptors
//! (`FUSE_FORGET` on the hiprio queue) wants no reply and is returned with length 0.
//! Everything is read from guest memory and checked: a malformed chain is returned unused
//! (length 0) and logged once per device.

use std::num::Wrapping;
use std::sync::atomic::Ordering;

use virtio_queue::desc::split::Descriptor;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestMemory};

use crate::devices::virtio::MAX_CHAIN_LEN;
use crate::memory::GuestMemory as VmMemory;

/// Size of `struct fuse_in_header`.
pub const IN_HEADER_LEN: usize = 40;
/// Size of `struct fuse_out_header`: the whole reply.
pub const OUT_HEADER_LEN: u32 = 16;

/// Why a request chain gets no reply.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    #[error("the request holds {0} readable bytes, less than a fuse_in_header")]
    ShortHeader(usize),
    #[error("a device-readable descriptor follows a device-writable one")]
    ReadAfterWrite,
    #[error("the first reply buffer holds {0} bytes, less than a fuse_out_header")]
    ShortReply(u32),
    #[error("a buffer at {0:#x} is outside guest memory")]
    Memory(u64),
    #[error("the chain is longer than {MAX_CHAIN_LEN} descriptors")]
    TooLong,
}

/// Why a queue cannot be taken over.
#[derive(Debug, thiserror::Error)]
pub enum TakeOverError {
    #[error("its rings cannot be read: {0}")]
    Ring(virtio_queue::Error),
    #[error("its available index {avail} is more than a queue ahead of its used index {used}")]
    Indices { avail: u16, used: u16 },
}

/// The reply to one request chain: writes `error = -EIO` for the request's `unique` into
/// the first device-writable descriptor. Returns the used length (16, or 0 for a request
/// that wants no reply).
pub fn reply_eio<M: GuestMemory>(mem: &M, descs: &[Descriptor]) -> Result<u32, ChainError> {
    if descs.len() > MAX_CHAIN_LEN {
        return Err(ChainError::TooLong);
    }
    let split = descs
        .iter()
        .position(Descriptor::is_write_only)
        .unwrap_or(descs.len());
    let (readable, writable) = descs.split_at(split);
    if writable.iter().any(|d| !d.is_write_only()) {
        return Err(ChainError::ReadAfterWrite);
    }
    let mut header = [0u8; IN_HEADER_LEN];
    let mut filled = 0;
    for d in readable {
        let n = (d.len() as usize).min(IN_HEADER_LEN - filled);
        mem.read_slice(&mut header[filled..filled + n], d.addr())
            .map_err(|_| ChainError::Memory(d.addr().0))?;
        filled += n;
        if filled == IN_HEADER_LEN {
            break;
        }
    }
    if filled < IN_HEADER_LEN {
        return Err(ChainError::ShortHeader(filled));
    }
    let Some(out) = writable.first() else {
        return Ok(0);
    };
    if out.len() < OUT_HEADER_LEN {
        return Err(ChainError::ShortReply(out.len()));
    }
    let mut reply = [0u8; OUT_HEADER_LEN as usize];
    reply[0..4].copy_from_slice(&OUT_HEADER_LEN.to_le_bytes());
    reply[4..8].copy_from_slice(&(-libc::EIO).to_le_bytes());
    reply[8..16].copy_from_slice(&header[8..16]);
    mem.write_slice(&reply, out.addr())
        .map_err(|_| ChainError::Memory(out.addr().0))?;
    Ok(OUT_HEADER_LEN)
}

/// A copy of the driver's queue `q` positioned where the backend stopped: at the used
/// index in guest memory, for both the available and the used side.
pub fn resume_at_used_index(mem: &VmMemory, q: &Queue) -> Result<Queue, TakeOverError> {
    let used = q
        .used_idx(mem, Ordering::Acquire)
        .map_err(TakeOverError::Ring)?;
    let avail = q
        .avail_idx(mem, Ordering::Acquire)
        .map_err(TakeOverError::Ring)?;
    if (avail - used).0 > q.size() {
        return Err(TakeOverError::Indices {
            avail: avail.0,
            used: used.0,
        });
    }
    let mut copy = Queue::try_from(q.state()).map_err(TakeOverError::Ring)?;
    copy.set_next_avail(used.0);
    copy.set_next_used(used.0);
    Ok(copy)
}

/// The device's queues while it answers for a dead backend.
pub struct Answering {
    /// Index = queue index; None for a queue the driver did not set up or that could not be
    /// taken over.
    queues: Vec<Option<Queue>>,
    /// Prefix of the log lines (the device's name).
    name: String,
    /// Whether a malformed chain or a broken ring was logged (once per device).
    logged: bool,
}

impl Answering {
    /// Takes over the driver's `queues` (index = queue index).
    pub fn take_over(mem: &VmMemory, queues: &[Queue], name: String) -> Answering {
        let queues = queues
            .iter()
            .enumerate()
            .map(|(i, q)| {
                if !q.ready() {
                    return None;
                }
                resume_at_used_index(mem, q)
                    .map_err(|e| log::warn!("{name}: queue {i} stays unanswered: {e}"))
                    .ok()
            })
            .collect();
        Answering {
            queues,
            name,
            logged: false,
        }
    }

    /// Answers what every queue holds; true if any buffer was used.
    pub fn answer_all(&mut self, mem: &VmMemory) -> bool {
        let mut used = false;
        for i in 0..self.queues.len() {
            used |= self.answer(mem, i);
        }
        used
    }

    /// Answers every chain available on queue `index`, and asks the driver to notify again
    /// (the backend may have left notifications off); true if any buffer was used.
    pub fn answer(&mut self, mem: &VmMemory, index: usize) -> bool {
        let Some(Some(q)) = self.queues.get_mut(index) else {
            return false;
        };
        let mut used = false;
        loop {
            if !avail_in_reach(mem, q) {
                self.queues[index] = None;
                self.log_once(&format!("queue {index}: its available index jumped"));
                return used;
            }
            while let Some(chain) = q.pop_descriptor_chain(mem) {
                let head = chain.head_index();
                let descs: Vec<Descriptor> = chain.take(MAX_CHAIN_LEN + 1).collect();
                let len = reply_eio(mem, &descs).unwrap_or_else(|e| {
                    if !self.logged {
                        self.logged = true;
                        log::warn!("{}: queue {index}: a malformed request: {e}", self.name);
                    }
                    0
                });
                if let Err(e) = q.add_used(mem, head, len) {
                    self.queues[index] = None;
                    self.log_once(&format!("queue {index}: cannot use a buffer: {e}"));
                    return used;
                }
                used = true;
            }
            match q.enable_notification(mem) {
                Ok(true) => continue,
                Ok(false) => return used,
                Err(e) => {
                    self.queues[index] = None;
                    self.log_once(&format!(
                        "queue {index}: cannot re-enable notifications: {e}"
                    ));
                    return used;
                }
            }
        }
    }

    fn log_once(&mut self, what: &str) {
        if !self.logged {
            self.logged = true;
            log::warn!("{}: {what}; the queue is no longer answered", self.name);
        }
    }
}

/// Whether the driver's available index is at most a queue ahead of ours (else the ring is
/// corrupt, and virtio-queue would stop popping without saying so).
fn avail_in_reach(mem: &VmMemory, q: &Queue) -> bool {
    q.avail_idx(mem, Ordering::Acquire)
        .is_ok_and(|idx| (idx - Wrapping(q.next_avail())).0 <= q.size())
}

#[cfg(test)]
#[path = "eio_tests.rs"]
mod tests;
