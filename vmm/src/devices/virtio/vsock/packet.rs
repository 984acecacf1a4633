//! The vsock packet layer: `struct virtio_vsock_hdr` and moving packets in and out of
//! descriptor chains.
//!
//! Every packet is a 44-byte little-endian header followed by `hdr.len` payload bytes. The
//! guest lays a TX packet out over read-only descriptors and offers RX buffers as write-only
//! descriptors. Linux puts the header and the payload in separate descriptors (and may
//! scatter the payload over several), older drivers use one buffer for both, so nothing
//! here assumes where a descriptor boundary falls: the chain is treated as one byte
//! stream, the header its first 44 bytes.
//!
//! These are pure functions over guest memory and a list of descriptors: the guest is
//! hostile, so every length and address is checked before anything is copied, and a bad
//! chain is an error, never a panic.

use virtio_queue::desc::split::Descriptor;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

/// Size of `struct virtio_vsock_hdr`.
pub const HDR_SIZE: usize = 44;

/// Largest payload we accept from or give to the guest in one packet (Linux uses 64 KiB
/// as its largest TX buffer, `VIRTIO_VSOCK_MAX_PKT_BUF_SIZE`).
pub const MAX_PKT_DATA: usize = 64 * 1024;

/// `VIRTIO_VSOCK_TYPE_STREAM`: the only socket type this device supports.
pub const TYPE_STREAM: u16 = 1;

/// Packet operations (`enum virtio_vsock_op`).
pub mod op {
    /// Connection request.
    pub const REQUEST: u16 = 1;
    /// Connection accepted.
    pub const RESPONSE: u16 = 2;
    /// Connection reset (refused, or torn down).
    pub const RST: u16 = 3;
    /// One or both directions closed; see the flags.
    pub const SHUTDOWN: u16 = 4;
    /// Stream data.
    pub const RW: u16 = 5;
    /// The sender's `buf_alloc`/`fwd_cnt` changed.
    pub const CREDIT_UPDATE: u16 = 6;
    /// Asks the receiver for a `CREDIT_UPDATE`.
    pub const CREDIT_REQUEST: u16 = 7;
}

/// `SHUTDOWN` flag: the sender will receive no more data.
pub const SHUTDOWN_RCV: u32 = 1;
/// `SHUTDOWN` flag: the sender will send no more data.
pub const SHUTDOWN_SEND: u32 = 2;

/// Errors reading a packet from a TX chain or writing one into an RX chain.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    #[error("descriptor chain holds {0} bytes, less than a {HDR_SIZE}-byte vsock header")]
    ChainTooShortForHeader(usize),
    #[error("vsock header announces {0} payload bytes, more than the {MAX_PKT_DATA}-byte maximum")]
    DataTooLong(u32),
    #[error("vsock header announces {need} payload bytes but the chain only holds {have}")]
    ChainTooShortForData { need: usize, have: usize },
    #[error("descriptor at {addr:#x}+{len:#x} is not inside guest RAM")]
    BadAddress { addr: u64, len: u32 },
    #[error("TX chain contains a device-writable descriptor")]
    WriteOnlyInTx,
    #[error("RX chain contains a device-readable descriptor")]
    ReadOnlyInRx,
    #[error("payload of {0} bytes does not fit the RX buffer")]
    DataTooLongForBuffer(usize),
    #[error("guest memory access failed at {0:#x}")]
    Memory(u64),
}

/// `struct virtio_vsock_hdr`, in host byte order.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct VsockHeader {
    pub src_cid: u64,
    pub dst_cid: u64,
    pub src_port: u32,
    pub dst_port: u32,
    /// Payload length.
    pub len: u32,
    pub type_: u16,
    pub op: u16,
    pub flags: u32,
    /// The sender's receive buffer size for this connection.
    pub buf_alloc: u32,
    /// Bytes the sender has consumed from its receive buffer, ever (wraps).
    pub fwd_cnt: u32,
}

impl VsockHeader {
    /// Decodes the little-endian wire format.
    pub fn from_bytes(b: &[u8; HDR_SIZE]) -> Self {
        let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap_or_default());
        let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap_or_default());
        let u16_at = |o: usize| u16::from_le_bytes(b[o..o + 2].try_into().unwrap_or_default());
        Self {
            src_cid: u64_at(0),
            dst_cid: u64_at(8),
            src_port: u32_at(16),
            dst_port: u32_at(20),
            len: u32_at(24),
            type_: u16_at(28),
            op: u16_at(30),
            flags: u32_at(32),
            buf_alloc: u32_at(36),
            fwd_cnt: u32_at(40),
        }
    }

    /// Encodes the little-endian wire format.
    pub fn to_bytes(&self) -> [u8; HDR_SIZE] {
        let mut b = [0u8; HDR_SIZE];
        b[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        b[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        b[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..30].copy_from_slice(&self.type_.to_le_bytes());
        b[30..32].copy_from_slice(&self.op.to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        b
    }
}

/// One guest buffer of a chain, already checked to lie in guest RAM.
#[derive(Clone, Copy)]
struct Segment {
    addr: GuestAddress,
    len: usize,
}

/// Collects the descriptors of a chain after checking direction and bounds; returns them
/// with their total length.
fn segments<M: GuestMemoryBackend>(
    mem: &M,
    descs: impl IntoIterator<Item = Descriptor>,
    want_write_only: bool,
) -> Result<(Vec<Segment>, usize), PacketError> {
    let mut segs = Vec::new();
    let mut total = 0usize;
    for d in descs {
        if d.is_write_only() != want_write_only {
            return Err(if want_write_only {
                PacketError::ReadOnlyInRx
            } else {
                PacketError::WriteOnlyInTx
            });
        }
        let len = d.len() as usize;
        let bad = || PacketError::BadAddress {
            addr: d.addr().0,
            len: d.len(),
        };
        if d.addr().0.checked_add(len as u64).is_none()
            || !GuestMemoryBackend::check_range(mem, d.addr(), len)
        {
            return Err(bad());
        }
        if len == 0 {
            continue;
        }
        // A queue has at most 2^15 descriptors of at most 4 GiB each: no overflow on
        // 64-bit hosts, but stay checked anyway.
        total = total.checked_add(len).ok_or_else(bad)?;
        segs.push(Segment {
            addr: d.addr(),
            len,
        });
    }
    Ok((segs, total))
}

/// Copies bytes `[skip, skip + out.len())` of the chain into `out`.
fn gather<M: GuestMemoryBackend>(
    mem: &M,
    segs: &[Segment],
    mut skip: usize,
    out: &mut [u8],
) -> Result<(), PacketError> {
    let mut done = 0;
    for s in segs {
        if done == out.len() {
            break;
        }
        if skip >= s.len {
            skip -= s.len;
            continue;
        }
        let n = (s.len - skip).min(out.len() - done);
        let addr = s.addr.0 + skip as u64;
        mem.read_slice(&mut out[done..done + n], GuestAddress(addr))
            .map_err(|_| PacketError::Memory(addr))?;
        done += n;
        skip = 0;
    }
    Ok(())
}

/// Copies `data` into the chain from byte `skip` on; the caller checked it fits.
fn scatter<M: GuestMemoryBackend>(
    mem: &M,
    segs: &[Segment],
    mut skip: usize,
    data: &[u8],
) -> Result<(), PacketError> {
    let mut done = 0;
    for s in segs {
        if done == data.len() {
            break;
        }
        if skip >= s.len {
            skip -= s.len;
            continue;
        }
        let n = (s.len - skip).min(data.len() - done);
        let addr = s.addr.0 + skip as u64;
        mem.write_slice(&data[done..done + n], GuestAddress(addr))
            .map_err(|_| PacketError::Memory(addr))?;
        done += n;
        skip = 0;
    }
    Ok(())
}

/// Reads only the header of a TX chain (to name the connection of a packet whose payload
/// is unusable).
pub fn read_tx_header<M: GuestMemoryBackend>(
    mem: &M,
    descs: impl IntoIterator<Item = Descriptor>,
) -> Result<VsockHeader, PacketError> {
    let (segs, total) = segments(mem, descs, false)?;
    header_of(mem, &segs, total)
}

fn header_of<M: GuestMemoryBackend>(
    mem: &M,
    segs: &[Segment],
    total: usize,
) -> Result<VsockHeader, PacketError> {
    if total < HDR_SIZE {
        return Err(PacketError::ChainTooShortForHeader(total));
    }
    let mut raw = [0u8; HDR_SIZE];
    gather(mem, segs, 0, &mut raw)?;
    Ok(VsockHeader::from_bytes(&raw))
}

/// Reads the packet a guest placed in a TX chain: the header, and its payload into
/// `data[..hdr.len]` (`data` must hold [`MAX_PKT_DATA`] bytes).
///
/// Rejects chains with device-writable descriptors, buffers outside guest RAM, a
/// truncated header, a payload longer than [`MAX_PKT_DATA`] or than the chain.
pub fn read_tx_packet<M: GuestMemoryBackend>(
    mem: &M,
    descs: impl IntoIterator<Item = Descriptor>,
    data: &mut [u8],
) -> Result<VsockHeader, PacketError> {
    let (segs, total) = segments(mem, descs, false)?;
    let hdr = header_of(mem, &segs, total)?;
    let len = hdr.len as usize;
    if len > MAX_PKT_DATA || len > data.len() {
        return Err(PacketError::DataTooLong(hdr.len));
    }
    if len > total - HDR_SIZE {
        return Err(PacketError::ChainTooShortForData {
            need: len,
            have: total - HDR_SIZE,
        });
    }
    gather(mem, &segs, HDR_SIZE, &mut data[..len])?;
    Ok(hdr)
}

/// A guest RX buffer, checked and ready to receive one packet.
pub struct RxBuffer {
    segs: Vec<Segment>,
    total: usize,
}

impl RxBuffer {
    /// Checks an RX chain: only device-writable descriptors inside guest RAM, with room for
    /// at least the header.
    pub fn new<M: GuestMemoryBackend>(
        mem: &M,
        descs: impl IntoIterator<Item = Descriptor>,
    ) -> Result<Self, PacketError> {
        let (segs, total) = segments(mem, descs, true)?;
        if total < HDR_SIZE {
            return Err(PacketError::ChainTooShortForHeader(total));
        }
        Ok(Self { segs, total })
    }

    /// Payload bytes this buffer can take (capped at [`MAX_PKT_DATA`]).
    pub fn data_capacity(&self) -> usize {
        (self.total - HDR_SIZE).min(MAX_PKT_DATA)
    }

    /// Writes `hdr` (with `len` set to `data.len()`) and `data`; returns the bytes written,
    /// the value for the used ring.
    pub fn write<M: GuestMemoryBackend>(
        &self,
        mem: &M,
        hdr: &VsockHeader,
        data: &[u8],
    ) -> Result<u32, PacketError> {
        if data.len() > self.data_capacity() {
            return Err(PacketError::DataTooLongForBuffer(data.len()));
        }
        let mut hdr = *hdr;
        // data_capacity() <= MAX_PKT_DATA, so this fits.
        hdr.len = data.len() as u32;
        scatter(mem, &self.segs, 0, &hdr.to_bytes())?;
        scatter(mem, &self.segs, HDR_SIZE, data)?;
        Ok((HDR_SIZE + data.len()) as u32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_bindings::bindings::virtio_ring::VRING_DESC_F_WRITE;
    use vm_memory::GuestMemoryMmap;

    const W: u16 = VRING_DESC_F_WRITE as u16;

    fn mem() -> GuestMemoryMmap<()> {
        // Two regions with a hole between them, to test chains that leave RAM.
        GuestMemoryMmap::from_ranges(&[
            (GuestAddress(0), 0x10_0000),
            (GuestAddress(0x20_0000), 0x10_0000),
        ])
        .unwrap()
    }

    fn desc(addr: u64, len: u32, flags: u16) -> Descriptor {
        Descriptor::new(addr, len, flags, 0)
    }

    fn sample_hdr(len: u32) -> VsockHeader {
        VsockHeader {
            src_cid: 3,
            dst_cid: 2,
            src_port: 1234,
            dst_port: 5000,
            len,
            type_: TYPE_STREAM,
            op: op::RW,
            flags: 0,
            buf_alloc: 0x4_0000,
            fwd_cnt: 17,
        }
    }

    #[test]
    fn header_round_trips_in_le() {
        let h = sample_hdr(9);
        let b = h.to_bytes();
        assert_eq!(&b[0..8], &3u64.to_le_bytes());
        assert_eq!(&b[24..28], &9u32.to_le_bytes());
        assert_eq!(&b[30..32], &op::RW.to_le_bytes());
        assert_eq!(VsockHeader::from_bytes(&b), h);
    }

    #[test]
    fn tx_header_and_data_in_separate_descriptors() {
        let m = mem();
        m.write_slice(&sample_hdr(5).to_bytes(), GuestAddress(0x1000))
            .unwrap();
        m.write_slice(b"hello", GuestAddress(0x2000)).unwrap();
        let mut buf = vec![0u8; MAX_PKT_DATA];
        let h = read_tx_packet(&m, [desc(0x1000, 44, 0), desc(0x2000, 5, 0)], &mut buf).unwrap();
        assert_eq!(h, sample_hdr(5));
        assert_eq!(&buf[..5], b"hello");
    }

    #[test]
    fn tx_header_split_across_descriptors_and_data_scattered() {
        let m = mem();
        let h = sample_hdr(6);
        let b = h.to_bytes();
        m.write_slice(&b[..10], GuestAddress(0x1000)).unwrap();
        m.write_slice(&b[10..], GuestAddress(0x3000)).unwrap();
        m.write_slice(b"abcdef", GuestAddress(0x5000)).unwrap();
        // A trailing descriptor beyond hdr.len is fine (the driver may over-allocate).
        let descs = [
            desc(0x1000, 10, 0),
            desc(0x3000, 34, 0),
            desc(0x4000, 0, 0),
            desc(0x5000, 2, 0),
            desc(0x5002, 4, 0),
            desc(0x6000, 100, 0),
        ];
        let mut buf = vec![0u8; MAX_PKT_DATA];
        assert_eq!(read_tx_packet(&m, descs, &mut buf).unwrap(), h);
        assert_eq!(&buf[..6], b"abcdef");
    }

    #[test]
    fn tx_single_buffer_holding_header_and_data() {
        let m = mem();
        m.write_slice(&sample_hdr(3).to_bytes(), GuestAddress(0x1000))
            .unwrap();
        m.write_slice(b"xyz", GuestAddress(0x1000 + 44)).unwrap();
        let mut buf = vec![0u8; MAX_PKT_DATA];
        read_tx_packet(&m, [desc(0x1000, 47, 0)], &mut buf).unwrap();
        assert_eq!(&buf[..3], b"xyz");
    }

    #[test]
    fn tx_malformed_chains_are_rejected() {
        let m = mem();
        let mut buf = vec![0u8; MAX_PKT_DATA];
        m.write_slice(&sample_hdr(100).to_bytes(), GuestAddress(0x1000))
            .unwrap();
        assert_eq!(
            read_tx_packet(&m, [desc(0x1000, 43, 0)], &mut buf),
            Err(PacketError::ChainTooShortForHeader(43))
        );
        assert_eq!(
            read_tx_packet(&m, [], &mut buf),
            Err(PacketError::ChainTooShortForHeader(0))
        );
        assert_eq!(
            read_tx_packet(&m, [desc(0x1000, 44, 0), desc(0x2000, 50, 0)], &mut buf),
            Err(PacketError::ChainTooShortForData {
                need: 100,
                have: 50
            })
        );
        assert_eq!(
            read_tx_packet(&m, [desc(0x1000, 44, W)], &mut buf),
            Err(PacketError::WriteOnlyInTx)
        );
        // Straddles the hole after the first region.
        assert!(matches!(
            read_tx_packet(&m, [desc(0xf_fff0, 44, 0)], &mut buf),
            Err(PacketError::BadAddress { .. })
        ));
        // Wraps the address space.
        assert!(matches!(
            read_tx_packet(&m, [desc(u64::MAX - 4, 44, 0)], &mut buf),
            Err(PacketError::BadAddress { .. })
        ));
        m.write_slice(&sample_hdr(u32::MAX).to_bytes(), GuestAddress(0x1000))
            .unwrap();
        assert_eq!(
            read_tx_packet(&m, [desc(0x1000, 44, 0)], &mut buf),
            Err(PacketError::DataTooLong(u32::MAX))
        );
        m.write_slice(
            &sample_hdr(MAX_PKT_DATA as u32 + 1).to_bytes(),
            GuestAddress(0x1000),
        )
        .unwrap();
        assert_eq!(
            read_tx_packet(
                &m,
                [desc(0x1000, 44, 0), desc(0x2000, 0x2_0000, 0)],
                &mut buf
            ),
            Err(PacketError::DataTooLong(MAX_PKT_DATA as u32 + 1))
        );
    }

    #[test]
    fn rx_writes_header_and_data_across_descriptors() {
        let m = mem();
        let rx = RxBuffer::new(
            &m,
            [desc(0x1000, 20, W), desc(0x2000, 30, W), desc(0x3000, 8, W)],
        )
        .unwrap();
        assert_eq!(rx.data_capacity(), 14);
        let n = rx.write(&m, &sample_hdr(999), b"0123456789").unwrap();
        assert_eq!(n, 54);
        let mut raw = [0u8; HDR_SIZE];
        m.read_slice(&mut raw[..20], GuestAddress(0x1000)).unwrap();
        m.read_slice(&mut raw[20..], GuestAddress(0x2000)).unwrap();
        assert_eq!(VsockHeader::from_bytes(&raw), sample_hdr(10));
        let mut data = [0u8; 10];
        m.read_slice(&mut data[..6], GuestAddress(0x2000 + 24))
            .unwrap();
        m.read_slice(&mut data[6..], GuestAddress(0x3000)).unwrap();
        assert_eq!(&data, b"0123456789");
        assert_eq!(
            rx.write(&m, &sample_hdr(0), &[0u8; 15]),
            Err(PacketError::DataTooLongForBuffer(15))
        );
    }

    #[test]
    fn rx_malformed_chains_are_rejected() {
        let m = mem();
        assert!(matches!(
            RxBuffer::new(&m, [desc(0x1000, 44, 0)]),
            Err(PacketError::ReadOnlyInRx)
        ));
        assert!(matches!(
            RxBuffer::new(&m, [desc(0x1000, 40, W)]),
            Err(PacketError::ChainTooShortForHeader(40))
        ));
        assert!(matches!(
            RxBuffer::new(&m, [desc(0x1f_0000, 0x2_0000, W)]),
            Err(PacketError::BadAddress { .. })
        ));
        // Huge buffers are capped.
        let rx = RxBuffer::new(&m, [desc(0x20_0000, 0x10_0000, W)]).unwrap();
        assert_eq!(rx.data_capacity(), MAX_PKT_DATA);
    }

    /// A bounded random-input test over the parser, for machines without cargo-fuzz: the
    /// same property as `fuzz/fuzz_targets/vsock_packet.rs` (never panic, and any packet
    /// accepted is consistent with its chain).
    #[test]
    fn random_chains_never_panic() {
        let m = mem();
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut rnd = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut buf = vec![0u8; MAX_PKT_DATA];
        for _ in 0..3000 {
            let n = rnd() % 6;
            let descs: Vec<Descriptor> = (0..n)
                .map(|_| {
                    let addr = match rnd() % 4 {
                        0 => rnd(),
                        1 => 0x20_0000 - (rnd() % 0x100),
                        _ => rnd() % 0x30_0000,
                    };
                    let len = match rnd() % 3 {
                        0 => rnd() as u32,
                        _ => (rnd() % 200) as u32,
                    };
                    desc(addr, len, if rnd() % 8 == 0 { W } else { 0 })
                })
                .collect();
            let mut hdr = sample_hdr((rnd() % 300) as u32);
            if rnd() % 5 == 0 {
                hdr.len = rnd() as u32;
            }
            if let Some(d) = descs.first() {
                let _ = m.write_slice(&hdr.to_bytes()[..], d.addr());
            }
            if let Ok(h) = read_tx_packet(&m, descs.clone(), &mut buf) {
                let total: u64 = descs.iter().map(|d| d.len() as u64).sum();
                assert!(h.len as u64 + HDR_SIZE as u64 <= total);
            }
            if let Ok(rx) = RxBuffer::new(&m, descs) {
                let cap = rx.data_capacity();
                rx.write(&m, &hdr, &buf[..cap]).unwrap();
            }
        }
    }
}
