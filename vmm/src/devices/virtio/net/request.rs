//! Moving Ethernet frames between virtqueue chains and the backend.
//!
//! The 12-byte `virtio_net_hdr_v1` (flags, gso_type, hdr_len, gso_size, csum_start,
//! csum_offset, num_buffers) has the same layout on the tap (`TUNSETVNETHDRSZ` 12) and in the
//! guest. It passes through only for the offloads the driver accepted: without them it is
//! zeroed, so a guest header never reaches the host and the host's never reaches the guest.
//! `num_buffers` is ours: the number of receive chains one frame fills (always 1 without
//! mergeable receive buffers), and zero towards the tap.

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

/// Bytes a receive chain can take; an error if any descriptor is not device-writable or
/// lies outside guest memory.
pub fn rx_room<M: GuestMemory>(mem: &M, descs: &[Descriptor]) -> Result<usize, FrameError> {
    check(mem, descs, true)
}

/// Gathers a transmit chain into `frame`. The guest's header is kept (but `num_buffers`)
/// when the driver accepted transmit offloads (`offloads`), else zeroed. Returns its
/// length.
pub fn gather_tx<M: GuestMemory>(
    mem: &M,
    descs: &[Descriptor],
    frame: &mut Vec<u8>,
    offloads: bool,
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
    let keep = if offloads { NUM_BUFFERS_AT } else { 0 };
    frame[keep..VNET_HDR_LEN].fill(0);
    Ok(len)
}

/// Offset of `num_buffers` (le16, the last field) in the header.
const NUM_BUFFERS_AT: usize = VNET_HDR_LEN - 2;

/// The header the guest gets: the backend's offload fields if the driver accepted receive
/// offloads, and `num_buffers`.
pub fn rx_header(backend_hdr: &[u8], offloads: bool, num_buffers: u16) -> [u8; VNET_HDR_LEN] {
    let mut hdr = [0u8; VNET_HDR_LEN];
    if offloads {
        hdr[..NUM_BUFFERS_AT].copy_from_slice(&backend_hdr[..NUM_BUFFERS_AT]);
    }
    hdr[NUM_BUFFERS_AT..].copy_from_slice(&num_buffers.to_le_bytes());
    hdr
}

/// Scatters `frame` (header included, as read from the backend) over `chains`, in order
/// (more than one only with mergeable receive buffers), with the guest's header
/// ([`rx_header`]) in front. Returns the bytes written into each chain.
pub fn scatter_rx<M: GuestMemory>(
    mem: &M,
    chains: &[Vec<Descriptor>],
    frame: &[u8],
    offloads: bool,
) -> Result<Vec<u32>, FrameError> {
    let mut room = 0usize;
    for descs in chains {
        room = room.saturating_add(check(mem, descs, true)?);
    }
    if frame.len() < VNET_HDR_LEN || frame.len() > MAX_FRAME_LEN {
        return Err(FrameError::BadLength(frame.len()));
    }
    if room < frame.len() {
        return Err(FrameError::NoRoom {
            room,
            len: frame.len(),
        });
    }
    let count = u16::try_from(chains.len()).map_err(|_| FrameError::BadLength(frame.len()))?;
    let hdr = rx_header(frame, offloads, count);
    let mut src = hdr.iter().chain(&frame[VNET_HDR_LEN..]).copied();
    let mut chunk = Vec::new();
    let mut left = frame.len();
    let mut written = Vec::with_capacity(chains.len());
    for descs in chains {
        let mut in_chain = 0;
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
            in_chain += n as u32;
        }
        written.push(in_chain);
    }
    Ok(written)
}
