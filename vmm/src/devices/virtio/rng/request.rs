//! Filling one virtio-rng request chain with host entropy.

use std::io;

use virtio_queue::desc::split::Descriptor;
use vm_memory::{Bytes, GuestMemory, Permissions};

/// Most bytes handed out per chain (the driver asks again for more).
pub const MAX_REQUEST_BYTES: usize = 64 << 10;

/// Fills `buf` from the host's `getrandom(2)`.
pub fn getrandom(buf: &mut [u8]) -> io::Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        let rest = &mut buf[filled..];
        // SAFETY: the pointer and length describe `rest`, a live, exclusively borrowed buffer
        // that getrandom only writes within.
        let r = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        filled += r as usize;
    }
    Ok(())
}

/// Fills the chain's buffers with entropy; returns the bytes written. Chains with a
/// device-readable descriptor or a buffer outside guest RAM get nothing.
pub fn handle<M: GuestMemory>(mem: &M, descs: &[Descriptor]) -> u32 {
    let valid = descs.iter().all(|d| {
        d.is_write_only() && mem.check_range(d.addr(), d.len() as usize, Permissions::Write)
    });
    if !valid {
        log::debug!("virtio-rng: malformed request");
        return 0;
    }
    let mut entropy = vec![0u8; MAX_REQUEST_BYTES];
    let mut written = 0usize;
    for d in descs {
        let n = (d.len() as usize).min(MAX_REQUEST_BYTES - written);
        if n == 0 {
            break;
        }
        let chunk = &mut entropy[..n];
        if let Err(e) = getrandom(chunk) {
            log::error!("virtio-rng: getrandom failed: {e}");
            break;
        }
        if mem.write_slice(chunk, d.addr()).is_err() {
            break;
        }
        written += n;
    }
    written as u32
}
