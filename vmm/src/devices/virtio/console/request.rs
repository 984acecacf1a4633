//! Moving console bytes between guest buffers and the host.

use std::collections::VecDeque;
use std::io::Write;

use virtio_queue::desc::split::Descriptor;
use vm_memory::{Bytes, GuestAddress, GuestMemory, Permissions};

/// Guest output is copied out in pieces of this size.
const CHUNK: usize = 4096;

fn in_memory<M: GuestMemory>(mem: &M, d: &Descriptor, access: Permissions) -> bool {
    mem.check_range(d.addr(), d.len() as usize, access)
}

/// Writes the guest's output buffers (a transmitq chain) to `out`. Returns the used length
/// (always 0: nothing is written into a transmit buffer). A chain with device-writable or
/// out-of-RAM descriptors is dropped whole.
pub fn transmit<M: GuestMemory>(mem: &M, descs: &[Descriptor], out: &mut dyn Write) -> u32 {
    if !descs
        .iter()
        .all(|d| !d.is_write_only() && in_memory(mem, d, Permissions::Read))
    {
        log::debug!("virtio-console: malformed transmit chain dropped");
        return 0;
    }
    let mut buf = [0u8; CHUNK];
    for d in descs {
        let mut done = 0usize;
        let len = d.len() as usize;
        while done < len {
            let n = (len - done).min(CHUNK);
            let at = GuestAddress(d.addr().0 + done as u64);
            if mem.read_slice(&mut buf[..n], at).is_err() {
                return 0;
            }
            if let Err(e) = out.write_all(&buf[..n]) {
                log::warn!("virtio-console: output failed, dropping guest output: {e}");
                return 0;
            }
            done += n;
        }
    }
    if let Err(e) = out.flush() {
        log::warn!("virtio-console: output flush failed: {e}");
    }
    0
}

/// Moves pending input bytes into a receiveq chain. Returns the bytes written.
pub fn receive<M: GuestMemory>(mem: &M, descs: &[Descriptor], pending: &mut VecDeque<u8>) -> u32 {
    if !descs
        .iter()
        .all(|d| d.is_write_only() && in_memory(mem, d, Permissions::Write))
    {
        log::debug!("virtio-console: malformed receive chain returned empty");
        return 0;
    }
    let mut written = 0u32;
    for d in descs {
        let n = (d.len() as usize).min(pending.len());
        if n == 0 {
            break;
        }
        let bytes: Vec<u8> = pending.drain(..n).collect();
        if mem.write_slice(&bytes, d.addr()).is_err() {
            break;
        }
        written += n as u32;
    }
    written
}
