use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex};

use event_manager::{EventManager, SubscriberOps};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::event_handler::RxState;
use super::request::{gather_tx, scatter_rx, FrameError};
use super::*;
use crate::devices::virtio::test_utils::{
    activate_ctx, test_interrupt, test_mem, TestQueue, WRITE,
};

#[derive(Default)]
struct Wire {
    to_guest: VecDeque<Vec<u8>>,
    from_guest: Vec<Vec<u8>>,
    /// The receive offloads last asked for.
    offload: u32,
}

/// A backend whose "fd" is an eventfd, readable while frames wait for the guest.
struct FakeBackend {
    wire: Arc<Mutex<Wire>>,
    evt: EventFd,
    cap: u32,
}

impl FakeBackend {
    fn new() -> (Self, Arc<Mutex<Wire>>, EventFd) {
        Self::with_offloads(0)
    }

    fn with_offloads(cap: u32) -> (Self, Arc<Mutex<Wire>>, EventFd) {
        let wire = Arc::new(Mutex::new(Wire::default()));
        let evt = EventFd::new(EFD_NONBLOCK).unwrap();
        let b = Self {
            wire: wire.clone(),
            evt: evt.try_clone().unwrap(),
            cap,
        };
        (b, wire, evt)
    }
}

impl AsRawFd for FakeBackend {
    fn as_raw_fd(&self) -> RawFd {
        self.evt.as_raw_fd()
    }
}

impl NetBackend for FakeBackend {
    fn read_frame(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut w = self.wire.lock().unwrap();
        let Some(f) = w.to_guest.pop_front() else {
            let _ = self.evt.read();
            return Err(io::ErrorKind::WouldBlock.into());
        };
        buf[..f.len()].copy_from_slice(&f);
        Ok(f.len())
    }
    fn write_frame(&mut self, frame: &[u8]) -> io::Result<()> {
        self.wire.lock().unwrap().from_guest.push(frame.to_vec());
        Ok(())
    }
    fn offload_capability(&self) -> u32 {
        self.cap
    }
    fn set_offload(&mut self, flags: u32) -> io::Result<()> {
        assert_eq!(
            flags & !self.cap,
            0,
            "asked for more than the backend can do"
        );
        self.wire.lock().unwrap().offload = flags;
        Ok(())
    }
}

fn frame(fill: u8, len: usize) -> Vec<u8> {
    let mut f = vec![0xee; VNET_HDR_LEN]; // host header garbage: must not reach the guest
    f.extend(std::iter::repeat_n(fill, len));
    f
}

#[test]
fn tx_sends_frames_with_a_clean_header() {
    let mem = test_mem();
    let (backend, wire, _evt) = FakeBackend::new();
    let mut net = Net::new(Box::new(backend), Some([2, 0, 0, 0, 0, 1])).unwrap();
    let rxq = TestQueue::new(&mem, 0x10_0000, 16);
    let mut txq = TestQueue::new(&mem, 0x20_0000, 16);
    let (interrupt, irq) = test_interrupt();
    net.activate(activate_ctx(
        &mem,
        &[&rxq, &txq],
        interrupt,
        VIRTIO_F_VERSION_1,
    ))
    .unwrap();
    mem.write_slice(&[0x55; VNET_HDR_LEN], GuestAddress(0x1000))
        .unwrap();
    mem.write_slice(&[0xab; 60], GuestAddress(0x2000)).unwrap();
    txq.add_chain(&[(0x1000, VNET_HDR_LEN as u32, 0), (0x2000, 60, 0)]);
    txq.add_chain(&[(0x1000, 12, 0), (0x2000, 60, WRITE)]); // wrong direction
    txq.add_chain(&[(0x1000, 12, 0)]); // no Ethernet header
    net.process_tx();
    let w = wire.lock().unwrap();
    assert_eq!(w.from_guest.len(), 1);
    assert_eq!(
        w.from_guest[0][..VNET_HDR_LEN],
        [0; VNET_HDR_LEN],
        "no offloads accepted: the guest's header stays in the guest"
    );
    assert_eq!(w.from_guest[0][VNET_HDR_LEN..], [0xab; 60]);
    assert_eq!(txq.used().len(), 3);
    assert_eq!(irq.eventfd().read().unwrap(), 1);

    let mut mac = [0u8; 6];
    net.read_config(0, &mut mac);
    assert_eq!(mac, [2, 0, 0, 0, 0, 1]);
    assert_ne!(net.avail_features() & 1 << VIRTIO_NET_F_MAC, 0);
}

#[test]
fn rx_waits_for_buffers_and_stops_polling() {
    let mem = test_mem();
    let (backend, wire, evt) = FakeBackend::new();
    let net = Arc::new(Mutex::new(Net::new(Box::new(backend), None).unwrap()));
    let mut em: EventManager<Arc<Mutex<Net>>> = EventManager::new().unwrap();
    em.add_subscriber(net.clone());
    let mut rxq = TestQueue::new(&mem, 0x10_0000, 16);
    let txq = TestQueue::new(&mem, 0x20_0000, 16);
    let (interrupt, _irq) = test_interrupt();
    net.lock()
        .unwrap()
        .activate(activate_ctx(
            &mem,
            &[&rxq, &txq],
            interrupt,
            VIRTIO_F_VERSION_1,
        ))
        .unwrap();
    em.run_with_timeout(1000).unwrap(); // activation: backend polled

    wire.lock()
        .unwrap()
        .to_guest
        .extend([frame(1, 100), frame(2, 200)]);
    evt.write(1).unwrap();
    em.run_with_timeout(1000).unwrap(); // no buffers: one frame held, backend no longer polled
    assert!(!net.lock().unwrap().backend_polled);
    assert_eq!(
        em.run_with_timeout(10).unwrap(),
        0,
        "must not spin without buffers"
    );

    rxq.add_chain(&[(0x1000, 4, WRITE), (0x2000, 2000, WRITE)]);
    // Too small for the 212-byte frame, and without mergeable buffers: dropped.
    rxq.add_chain(&[(0x3000, 100, WRITE)]);
    assert_eq!(net.lock().unwrap().process_rx(), RxState::Drained);
    assert_eq!(rxq.used(), vec![(0, 112), (2, 0)]);
    let mut got = [0u8; 112];
    mem.read_slice(&mut got[..4], GuestAddress(0x1000)).unwrap();
    mem.read_slice(&mut got[4..], GuestAddress(0x2000)).unwrap();
    assert_eq!(got[..VNET_HDR_LEN], [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0]);
    assert_eq!(got[VNET_HDR_LEN..], [1; 100]);
}

#[test]
fn frame_helpers_reject_hostile_chains() {
    use virtio_queue::desc::split::Descriptor;
    let mem = test_mem();
    let d = |a, l, f| Descriptor::new(a, l, f, 0);
    let mut buf = Vec::new();
    assert_eq!(
        gather_tx(&mem, &[d(0xff_ff00, 0x200, 0)], &mut buf, true),
        Err(FrameError::BadDescriptor)
    );
    assert_eq!(
        gather_tx(&mem, &[d(0x1000, 0x10_0000, 0)], &mut buf, true),
        Err(FrameError::BadLength(0x10_0000))
    );
    assert_eq!(
        scatter_rx(&mem, &[vec![d(0x1000, 64, 0)]], &frame(0, 20), false),
        Err(FrameError::BadDescriptor)
    );
    assert_eq!(
        scatter_rx(&mem, &[vec![d(0x1000, 4, WRITE)]], &frame(0, 20), false),
        Err(FrameError::NoRoom { room: 4, len: 32 })
    );
    // One good chain and one outside guest memory: the set is refused.
    assert_eq!(
        scatter_rx(
            &mem,
            &[vec![d(0x1000, 16, WRITE)], vec![d(0xff_ff00, 0x200, WRITE)]],
            &frame(0, 20),
            false
        ),
        Err(FrameError::BadDescriptor)
    );
}

const ALL_RX: u32 = libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6 | libc::TUN_F_TSO_ECN;

fn feature(bit: u32) -> u64 {
    1 << bit
}

#[test]
fn offloads_are_offered_as_the_backend_allows_and_follow_the_driver() {
    use virtio_bindings::virtio_net::*;
    let (plain, _, _) = FakeBackend::new();
    let f = Net::new(Box::new(plain), None).unwrap().avail_features();
    assert_ne!(f & feature(VIRTIO_NET_F_MRG_RXBUF), 0);
    assert_eq!(
        f & (feature(VIRTIO_NET_F_CSUM) | feature(VIRTIO_NET_F_GUEST_CSUM)),
        0
    );

    let (csum_only, _, _) = FakeBackend::with_offloads(libc::TUN_F_CSUM);
    let f = Net::new(Box::new(csum_only), None)
        .unwrap()
        .avail_features();
    assert_ne!(f & feature(VIRTIO_NET_F_GUEST_CSUM), 0);
    assert_ne!(
        f & feature(VIRTIO_NET_F_HOST_TSO4),
        0,
        "the tap takes TSO from the guest"
    );
    assert_eq!(f & feature(VIRTIO_NET_F_GUEST_TSO4), 0);

    let mem = test_mem();
    let rxq = TestQueue::new(&mem, 0x10_0000, 16);
    let txq = TestQueue::new(&mem, 0x20_0000, 16);
    for (acked, want) in [
        (
            feature(VIRTIO_NET_F_GUEST_CSUM) | feature(VIRTIO_NET_F_GUEST_TSO4),
            libc::TUN_F_CSUM | libc::TUN_F_TSO4,
        ),
        // TSO without checksum offload is not a valid driver choice: nothing.
        (feature(VIRTIO_NET_F_GUEST_TSO4), 0),
        (0, 0),
    ] {
        let (b, wire, _) = FakeBackend::with_offloads(ALL_RX);
        let mut net = Net::new(Box::new(b), None).unwrap();
        let all = net.avail_features();
        assert_eq!(all & acked, acked);
        let (interrupt, _irq) = test_interrupt();
        net.activate(activate_ctx(
            &mem,
            &[&rxq, &txq],
            interrupt,
            VIRTIO_F_VERSION_1 | acked,
        ))
        .unwrap();
        assert_eq!(wire.lock().unwrap().offload, want, "acked {acked:#x}");
    }
}

#[test]
fn with_checksum_offload_the_guest_header_reaches_the_host_but_num_buffers() {
    use virtio_bindings::virtio_net::VIRTIO_NET_F_CSUM;
    let mem = test_mem();
    let (backend, wire, _evt) = FakeBackend::with_offloads(ALL_RX);
    let mut net = Net::new(Box::new(backend), None).unwrap();
    let rxq = TestQueue::new(&mem, 0x10_0000, 16);
    let mut txq = TestQueue::new(&mem, 0x20_0000, 16);
    let (interrupt, _irq) = test_interrupt();
    let acked = VIRTIO_F_VERSION_1 | feature(VIRTIO_NET_F_CSUM);
    net.activate(activate_ctx(&mem, &[&rxq, &txq], interrupt, acked))
        .unwrap();
    // flags NEEDS_CSUM, csum_start 34, csum_offset 16; num_buffers garbage.
    let hdr = [1, 0, 0, 0, 0, 0, 34, 0, 16, 0, 0xee, 0xee];
    mem.write_slice(&hdr, GuestAddress(0x1000)).unwrap();
    mem.write_slice(&[0xab; 60], GuestAddress(0x2000)).unwrap();
    txq.add_chain(&[(0x1000, VNET_HDR_LEN as u32, 0), (0x2000, 60, 0)]);
    net.process_tx();
    let w = wire.lock().unwrap();
    assert_eq!(
        w.from_guest[0][..VNET_HDR_LEN],
        [1, 0, 0, 0, 0, 0, 34, 0, 16, 0, 0, 0]
    );
}

/// A frame of `len` payload bytes with a TSO header from the host.
fn tso_frame(len: usize) -> Vec<u8> {
    // flags NEEDS_CSUM, gso TCPV4, hdr_len 66, gso_size 1448, csum_start 34, csum_offset 16.
    let mut f = vec![1, 1, 66, 0, 0xa8, 0x05, 34, 0, 16, 0, 0xee, 0xee];
    f.extend((0..len).map(|i| i as u8));
    f
}

#[test]
fn mergeable_buffers_carry_a_large_frame_over_several_chains() {
    use virtio_bindings::virtio_net::{
        VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_MRG_RXBUF,
    };
    let mem = test_mem();
    let (backend, wire, _evt) = FakeBackend::with_offloads(ALL_RX);
    let mut net = Net::new(Box::new(backend), None).unwrap();
    let mut rxq = TestQueue::new(&mem, 0x10_0000, 16);
    let txq = TestQueue::new(&mem, 0x20_0000, 16);
    let (interrupt, _irq) = test_interrupt();
    let acked = VIRTIO_F_VERSION_1
        | feature(VIRTIO_NET_F_MRG_RXBUF)
        | feature(VIRTIO_NET_F_GUEST_CSUM)
        | feature(VIRTIO_NET_F_GUEST_TSO4);
    net.activate(activate_ctx(&mem, &[&rxq, &txq], interrupt, acked))
        .unwrap();
    // 12 + 4000 bytes over 1500-byte buffers: three chains. Two posted: it waits, and
    // takes nothing.
    wire.lock().unwrap().to_guest.push_back(tso_frame(4000));
    rxq.add_chain(&[(0x1_0000, 1500, WRITE)]);
    rxq.add_chain(&[(0x2_0000, 1500, WRITE)]);
    assert_eq!(net.process_rx(), RxState::NeedBuffers);
    assert!(rxq.used().is_empty());
    rxq.add_chain(&[(0x3_0000, 1500, WRITE)]);
    assert_eq!(net.process_rx(), RxState::Drained);
    assert_eq!(rxq.used(), vec![(0, 1500), (1, 1500), (2, 1012)]);
    let mut hdr = [0u8; VNET_HDR_LEN];
    mem.read_slice(&mut hdr, GuestAddress(0x1_0000)).unwrap();
    assert_eq!(
        hdr,
        [1, 1, 66, 0, 0xa8, 0x05, 34, 0, 16, 0, 3, 0],
        "offload fields, num_buffers 3"
    );
    let mut tail = [0u8; 4];
    mem.read_slice(&mut tail, GuestAddress(0x3_0000 + 1008))
        .unwrap();
    assert_eq!(
        tail,
        [3996u32 as u8, 3997u32 as u8, 3998u32 as u8, 3999u32 as u8]
    );
}
