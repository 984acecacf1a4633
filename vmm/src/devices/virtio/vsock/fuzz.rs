//! Fuzzing entry point for the vsock packet layer and the muxer behind it, shared by the
//! cargo-fuzz target (`vmm/fuzz/fuzz_targets/vsock_packet.rs`) and a bounded random-input
//! unit test.
//!
//! Input layout: byte 0 = number of descriptors (mod 9); then 9 bytes per descriptor
//! (address: u32 LE, length: u32 LE, flags: bit 0 = device-writable); the rest is copied
//! into guest RAM at [`DATA_AT`] (so headers and payloads are fuzzer-controlled too). The
//! chain is parsed as a TX packet, fed to a muxer if valid, and used as an RX buffer for
//! whatever the muxer answers. Nothing may panic; accepted packets must fit their chain.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::time::Instant;

use virtio_queue::desc::split::Descriptor;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::backend::{BackendEvent, StreamId, VsockBackend};
use super::muxer::Muxer;
use super::packet::{read_tx_packet, RxBuffer, HDR_SIZE, MAX_PKT_DATA};

/// Guest RAM size of the fuzz harness.
pub const RAM: u64 = 0x2_0000;
/// Where the input's payload bytes land in guest RAM.
pub const DATA_AT: u64 = 0x100;
const WRITE: u16 = virtio_bindings::virtio_ring::VRING_DESC_F_WRITE as u16;

/// A host side where even ports listen, writes take at most 100 bytes and reads return a
/// few bytes of nothing: enough to drive every muxer path without sockets.
struct FuzzBackend {
    next: StreamId,
    streams: HashMap<StreamId, u32>,
}

impl AsRawFd for FuzzBackend {
    fn as_raw_fd(&self) -> RawFd {
        -1
    }
}

impl VsockBackend for FuzzBackend {
    fn connect(&mut self, port: u32) -> io::Result<StreamId> {
        if port % 2 == 1 {
            return Err(io::ErrorKind::ConnectionRefused.into());
        }
        self.next += 1;
        self.streams.insert(self.next, port);
        Ok(self.next)
    }
    fn confirm(&mut self, _id: StreamId, _local_port: u32) -> io::Result<()> {
        Ok(())
    }
    fn read(&mut self, id: StreamId, buf: &mut [u8]) -> io::Result<usize> {
        match self.streams.get(&id) {
            Some(p) if p % 4 == 0 => Ok(buf.len().min(3)),
            Some(_) => Ok(0),
            None => Err(io::ErrorKind::NotFound.into()),
        }
    }
    fn write(&mut self, id: StreamId, buf: &[u8]) -> io::Result<usize> {
        match self.streams.get(&id) {
            Some(p) if p % 8 == 0 => Err(io::ErrorKind::WouldBlock.into()),
            Some(_) => Ok(buf.len().min(100)),
            None => Err(io::ErrorKind::NotFound.into()),
        }
    }
    fn shutdown_write(&mut self, _id: StreamId) {}
    fn close(&mut self, id: StreamId) {
        assert!(self.streams.remove(&id).is_some(), "closed twice");
    }
    fn set_interest(&mut self, _id: StreamId, _read: bool, _write: bool) {}
    fn set_timer(&mut self, _deadline: Option<Instant>) {}
    fn poll(&mut self, events: &mut Vec<BackendEvent>) {
        for &id in self.streams.keys() {
            events.push(BackendEvent::Readable(id));
        }
    }
}

fn decode(data: &[u8]) -> (Vec<Descriptor>, &[u8]) {
    let n = data.first().map_or(0, |n| usize::from(*n % 9));
    let mut descs = Vec::new();
    let mut rest = data.get(1..).unwrap_or_default();
    for _ in 0..n {
        let Some((d, tail)) = rest.split_first_chunk::<9>() else {
            break;
        };
        let addr = u32::from_le_bytes([d[0], d[1], d[2], d[3]]);
        let len = u32::from_le_bytes([d[4], d[5], d[6], d[7]]);
        let flags = if d[8] & 1 == 1 { WRITE } else { 0 };
        descs.push(Descriptor::new(u64::from(addr), len, flags, 0));
        rest = tail;
    }
    (descs, rest)
}

/// Runs one fuzz input.
pub fn vsock_packet(data: &[u8]) {
    let (descs, payload) = decode(data);
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), RAM as usize)])
        .expect("fuzz guest memory");
    let room = (RAM - DATA_AT) as usize;
    let _ = mem.write_slice(&payload[..payload.len().min(room)], GuestAddress(DATA_AT));

    let mut muxer = Muxer::new(
        3,
        FuzzBackend {
            next: 0,
            streams: HashMap::new(),
        },
    );
    let mut buf = vec![0u8; MAX_PKT_DATA];
    if let Ok(hdr) = read_tx_packet(&mem, descs.iter().copied(), &mut buf) {
        let total: u64 = descs.iter().map(|d| u64::from(d.len())).sum();
        assert!(u64::from(hdr.len) + HDR_SIZE as u64 <= total);
        let len = hdr.len as usize;
        // Once as sent, once as if from the right guest to the host, to reach the muxer.
        muxer.send_pkt(&hdr, &buf[..len]);
        let mut h = hdr;
        h.src_cid = 3;
        h.dst_cid = 2;
        h.type_ = 1;
        muxer.send_pkt(&h, &buf[..len]);
        muxer.process_backend();
    }
    if let Ok(rx) = RxBuffer::new(&mem, descs) {
        let cap = rx.data_capacity();
        for _ in 0..4 {
            if let Some((hdr, n)) = muxer.recv_pkt(&mut buf[..cap]) {
                assert!(n <= cap);
                rx.write(&mem, &hdr, &buf[..n]).expect("checked RX buffer");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fuzz target's property on bounded pseudo-random inputs (for machines without
    /// cargo-fuzz). Inputs are biased towards valid layouts so the muxer is reached.
    #[test]
    fn random_inputs_never_panic() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut rnd = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..2000 {
            let n = (rnd() % 5) as u8;
            let mut input = vec![n];
            for i in 0..n {
                let addr = match rnd() % 4 {
                    0 => rnd() as u32,
                    _ => (DATA_AT + u64::from(i) * 0x40) as u32,
                };
                let len = match rnd() % 4 {
                    0 => rnd() as u32,
                    1 => 44,
                    _ => (rnd() % 200) as u32,
                };
                input.extend_from_slice(&addr.to_le_bytes());
                input.extend_from_slice(&len.to_le_bytes());
                input.push((rnd() % 4 == 0) as u8);
            }
            let mut hdr = [0u8; 44];
            hdr[..8].copy_from_slice(&3u64.to_le_bytes());
            hdr[8..16].copy_from_slice(&2u64.to_le_bytes());
            hdr[16..20].copy_from_slice(&(rnd() as u32 % 16).to_le_bytes());
            hdr[20..24].copy_from_slice(&(rnd() as u32 % 16).to_le_bytes());
            hdr[24..28].copy_from_slice(&(rnd() as u32 % 64).to_le_bytes());
            hdr[28..30].copy_from_slice(&1u16.to_le_bytes());
            hdr[30..32].copy_from_slice(&(rnd() as u16 % 9).to_le_bytes());
            hdr[32..].iter_mut().for_each(|b| *b = rnd() as u8);
            input.extend_from_slice(&hdr);
            input.extend((0..rnd() % 300).map(|_| rnd() as u8));
            vsock_packet(&input);
        }
        vsock_packet(&[]);
        vsock_packet(&[8, 1, 2]);
    }
}
