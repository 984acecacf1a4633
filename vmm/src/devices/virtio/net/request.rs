//! Moving Ethernet frames between virtqueue chains and the backend.
//!
//! No offloads are negotiated, so the virtio-net header is all zero in both directions
//! (except `num_buffers`, 1 on receive): a guest-supplied header is not passed to the host,
//! and the host's header is not passed to the guest.

use virtio_queue::desc::split::Descriptor;
use vm_memory::{Bytes, GuestMemory, Permissions};

use super::{MAX_FRAME_LEN, VNET_HDR_LEN};

/// Why a chain could not carry a frame.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("descriptor has the wrong direction or lies outside guest memory")]
    BadDescriptor,
    #[error("frame of {0} bytes is too short or too long")]
    BadLength(usize),
    #[error("receive buffers of {room} bytes cannot hold a {len}-byte frame")]
    NoRoom { room: usize, len: usize },
}

fn check<M: GuestMemory>(
    mem: &M,
    descs: &[Descriptor],
    writable: bool,
) -> Result<usize, FrameError> {
    let access = if writable {
        Permissions::Write
    } else {
        Permissions::Read
    };
    let mut total = 0usize;
    for d in descs {
        if d.is_write_only() != writable || !mem.check_range(d.addr(), d.len() as usize, access) {
            return Err(FrameError::BadDescriptor);
        }
        total = total.saturating_add(d.len() as usize);
    }
    Ok(total)
}

/// Gathers a transmit chain into `frame` (header zeroed). Returns its length.
pub fn gather_tx<M: GuestMemory>(
    mem: &M,
    descs: &[Descriptor],
    frame: &mut Vec<u8>,
) -> Result<usize, FrameError> {
    let len = check(mem, descs, false)?;
    // Header plus at least an Ethernet header (14 bytes), at most the largest frame.
    if !(VNET_HDR_LEN + 14..=MAX_FRAME_LEN).contains(&len) {
        return Err(FrameError::BadLength(len));
    }
    frame.clear();
    frame.resize(len, 0);
    let mut at = 0;
    for d in descs {
        let n = d.len() as usize;
        mem.read_slice(&mut frame[at..at + n], d.addr())
            .map_err(|_| FrameError::BadDescriptor)?;
        at += n;
    }
    frame[..VNET_HDR_LEN].fill(0);
    Ok(len)
}

/// Scatters `frame` (header included, as read from the backend) into a receive chain.
/// Returns the bytes written.
pub fn scatter_rx<M: GuestMemory>(
    mem: &M,
    descs: &[Descriptor],
    frame: &[u8],
) -> Result<u32, FrameError> {
    let room = check(mem, descs, true)?;
    if frame.len() < VNET_HDR_LEN || frame.len() > MAX_FRAME_LEN {
        return Err(FrameError::BadLength(frame.len()));
    }
    if room < frame.len() {
        return Err(FrameError::NoRoom {
            room,
            len: frame.len(),
        });
    }
    let mut hdr = [0u8; VNET_HDR_LEN];
    // num_buffers (le16, last field of virtio_net_hdr_v1) = 1.
    hdr[VNET_HDR_LEN - 2] = 1;
    let mut src = hdr.iter().chain(&frame[VNET_HDR_LEN..]).copied();
    let mut chunk = Vec::new();
    let mut left = frame.len();
    for d in descs {
        let n = (d.len() as usize).min(left);
        if n == 0 {
            break;
        }
        chunk.clear();
        chunk.extend(src.by_ref().take(n));
        mem.write_slice(&chunk, d.addr())
            .map_err(|_| FrameError::BadDescriptor)?;
        left -= n;
    }
    Ok(frame.len() as u32)
}
