//! Device-level tests: virtqueues laid out in guest memory (`MockSplitQueue` addresses),
//! packets written and read the way a driver does.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use event_manager::{EventManager, SubscriberOps};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

use super::muxer::{FIRST_LOCAL_PORT, HOST_CID};
use super::packet::{op, VsockHeader, HDR_SIZE, TYPE_STREAM};
use super::test_backend::TestBackend;
use super::{Vsock, VsockError, QUEUE_SIZE};
use crate::devices::interrupt::IrqFd;
use crate::devices::virtio::test_utils::{
    activate_ctx, test_interrupt, test_mem, TestQueue, WRITE,
};
use crate::devices::virtio::{VirtioDevice, VIRTIO_F_VERSION_1};
use crate::memory::GuestMemory;

const CID: u64 = 3;
/// TX packets are built here, one 64 KiB slot each.
const TX_AREA: u64 = 0x40_0000;
/// RX buffers: a 44-byte header buffer and a 4 KiB data buffer per slot, like Linux.
const RX_AREA: u64 = 0x80_0000;

struct Driver {
    mem: GuestMemory,
    rx: TestQueue,
    tx: TestQueue,
    ev: TestQueue,
    irq: Arc<IrqFd>,
    tx_slot: u64,
    rx_slot: u64,
    /// (header address, data address) of each RX chain offered, in order.
    rx_bufs: Vec<(u64, u64)>,
    rx_seen: usize,
}

fn guest_pkt(op: u16, src: u32, dst: u32, len: u32) -> VsockHeader {
    VsockHeader {
        src_cid: CID,
        dst_cid: HOST_CID,
        src_port: src,
        dst_port: dst,
        len,
        type_: TYPE_STREAM,
        op,
        flags: 0,
        buf_alloc: 64 * 1024,
        fwd_cnt: 0,
    }
}

impl Driver {
    fn new() -> Self {
        let mem = test_mem();
        let (_, irq) = test_interrupt();
        Self {
            rx: TestQueue::new(&mem, 0x10_0000, QUEUE_SIZE),
            tx: TestQueue::new(&mem, 0x11_0000, QUEUE_SIZE),
            ev: TestQueue::new(&mem, 0x12_0000, QUEUE_SIZE),
            mem,
            irq,
            tx_slot: 0,
            rx_slot: 0,
            rx_bufs: Vec::new(),
            rx_seen: 0,
        }
    }

    /// Activates `dev`; returns clones of the queue eventfds.
    fn activate<B: super::VsockBackend>(&mut self, dev: &mut Vsock<B>) -> Vec<EventFd> {
        let (interrupt, irq) = test_interrupt();
        self.irq = irq;
        let ctx = activate_ctx(
            &self.mem,
            &[&self.rx, &self.tx, &self.ev],
            interrupt,
            VIRTIO_F_VERSION_1,
        );
        let evts = ctx
            .queue_evts
            .iter()
            .map(|e| e.try_clone().unwrap())
            .collect();
        dev.activate(ctx).unwrap();
        evts
    }

    /// Queues a TX packet, header and payload in separate descriptors.
    fn send(&mut self, hdr: VsockHeader, data: &[u8]) {
        let at = TX_AREA + self.tx_slot * 0x1_0000;
        self.tx_slot = (self.tx_slot + 1) % 32;
        self.mem
            .write_slice(&hdr.to_bytes(), GuestAddress(at))
            .unwrap();
        self.mem
            .write_slice(data, GuestAddress(at + 0x100))
            .unwrap();
        if data.is_empty() {
            self.tx.add_chain(&[(at, HDR_SIZE as u32, 0)]);
        } else {
            self.tx
                .add_chain(&[(at, HDR_SIZE as u32, 0), (at + 0x100, data.len() as u32, 0)]);
        }
    }

    /// Offers `n` RX buffers.
    fn offer_rx(&mut self, n: usize) {
        for _ in 0..n {
            let at = RX_AREA + self.rx_slot * 0x2000;
            self.rx_slot = (self.rx_slot + 1) % 128;
            self.rx
                .add_chain(&[(at, HDR_SIZE as u32, WRITE), (at + 0x1000, 4096, WRITE)]);
            self.rx_bufs.push((at, at + 0x1000));
        }
    }

    /// The packets the device put in RX buffers since the last call.
    fn received(&mut self) -> Vec<(VsockHeader, Vec<u8>)> {
        let used = self.rx.used();
        let mut out = Vec::new();
        for &(_, len) in &used[self.rx_seen..] {
            let (h_at, d_at) = self.rx_bufs[self.rx_seen];
            self.rx_seen += 1;
            if len == 0 {
                continue;
            }
            let mut raw = [0u8; HDR_SIZE];
            self.mem.read_slice(&mut raw, GuestAddress(h_at)).unwrap();
            let h = VsockHeader::from_bytes(&raw);
            assert_eq!(len as usize, HDR_SIZE + h.len as usize);
            let mut data = vec![0u8; h.len as usize];
            self.mem.read_slice(&mut data, GuestAddress(d_at)).unwrap();
            out.push((h, data));
        }
        out
    }

    fn interrupts(&self) -> u64 {
        self.irq.eventfd().read().unwrap_or(0)
    }
}

fn test_device() -> Vsock<TestBackend> {
    let mut b = TestBackend::new();
    b.listening.insert(5000);
    Vsock::with_backend(CID, b).unwrap()
}

#[test]
fn identity_and_config_space() {
    let dev = test_device();
    assert_eq!(dev.device_type(), 19);
    assert_eq!(dev.queue_max_sizes().len(), 3);
    assert_ne!(dev.avail_features() & VIRTIO_F_VERSION_1, 0);
    let mut cid = [0u8; 8];
    dev.read_config(0, &mut cid);
    assert_eq!(u64::from_le_bytes(cid), CID);
    let mut hi = [0xffu8; 4];
    dev.read_config(4, &mut hi);
    assert_eq!(hi, [0; 4]);
    let mut past = [0xffu8; 4];
    dev.read_config(u64::MAX, &mut past);
    assert_eq!(past, [0; 4]);
    for bad in [0, 1, 2, u64::from(u32::MAX), u64::MAX] {
        assert!(matches!(
            Vsock::with_backend(bad, TestBackend::new()),
            Err(VsockError::InvalidCid(_))
        ));
    }
}

#[test]
fn wrong_queue_count_fails_activation() {
    let mut dev = test_device();
    let d = Driver::new();
    let (interrupt, _) = test_interrupt();
    assert!(dev
        .activate(activate_ctx(
            &d.mem,
            &[&d.rx, &d.tx],
            interrupt,
            VIRTIO_F_VERSION_1
        ))
        .is_err());
}

#[test]
fn guest_connect_and_data_through_the_queues() {
    let mut dev = test_device();
    let mut d = Driver::new();
    d.activate(&mut dev);
    d.offer_rx(4);
    assert_eq!(d.interrupts(), 0);

    d.send(guest_pkt(op::REQUEST, 1234, 5000, 0), b"");
    dev.process_tx();
    dev.process_rx();
    assert_eq!(d.tx.used().len(), 1, "TX buffer returned");
    let r = d.received();
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].0.op, op::RESPONSE);
    assert_eq!((r[0].0.src_cid, r[0].0.dst_cid), (HOST_CID, CID));
    assert!(d.interrupts() >= 1);

    d.send(guest_pkt(op::RW, 1234, 5000, 5), b"hello");
    dev.process_tx();
    let s = dev.muxer().backend().streams_to(5000)[0];
    assert_eq!(dev.muxer().backend_mut().stream(s).received, b"hello");

    dev.muxer().backend_mut().host_send(s, b"world");
    dev.process_backend();
    let r = d.received();
    assert_eq!(r.len(), 1);
    assert_eq!((r[0].0.op, r[0].1.as_slice()), (op::RW, &b"world"[..]));

    // Nothing new: no used buffers, no interrupt.
    d.interrupts();
    dev.process_rx();
    dev.process_backend();
    assert_eq!(d.interrupts(), 0);
    assert!(d.received().is_empty());
}

#[test]
fn rx_waits_for_buffers_and_keeps_unused_ones() {
    let mut dev = test_device();
    let mut d = Driver::new();
    d.activate(&mut dev);
    // Replies queue up while the guest has no RX buffers.
    d.send(guest_pkt(op::REQUEST, 1, 5000, 0), b"");
    d.send(guest_pkt(op::REQUEST, 2, 6000, 0), b"");
    dev.process_tx();
    dev.process_rx();
    assert!(d.rx.used().is_empty());
    d.offer_rx(3);
    dev.process_rx();
    let r = d.received();
    assert_eq!(
        r.iter().map(|p| p.0.op).collect::<Vec<_>>(),
        [op::RST, op::RESPONSE]
    );
    // The third buffer stays with the device for later.
    assert_eq!(d.rx.used().len(), 2);
    let s = dev.muxer().backend().streams_to(5000)[0];
    dev.muxer().backend_mut().host_send(s, b"later");
    dev.process_backend();
    assert_eq!(d.received()[0].1, b"later");
}

#[test]
fn malformed_chains_are_dropped_or_reset_never_panic() {
    let mut dev = test_device();
    let mut d = Driver::new();
    d.activate(&mut dev);
    d.offer_rx(1);
    d.send(guest_pkt(op::REQUEST, 1234, 5000, 0), b"");
    dev.process_tx();
    dev.process_rx();
    assert_eq!(d.received()[0].0.op, op::RESPONSE);

    // TX: a device-writable descriptor, a header outside RAM, a short header, an
    // empty chain, a self-looping chain.
    d.tx.add_chain(&[(TX_AREA, HDR_SIZE as u32, WRITE)]);
    d.tx.add_chain(&[(0xff_fff0, HDR_SIZE as u32, 0)]);
    d.tx.add_chain(&[(TX_AREA, 10, 0)]);
    d.tx.add_chain(&[(TX_AREA, 0, 0)]);
    let head = d.tx.add_chain(&[(TX_AREA, 20, 0)]);
    d.tx.write_desc(
        head,
        TX_AREA,
        20,
        crate::devices::virtio::test_utils::NEXT,
        head,
    );
    // A RW whose payload is missing: its connection must be reset (data would be lost).
    let at = TX_AREA + 0x8000;
    d.mem
        .write_slice(
            &guest_pkt(op::RW, 1234, 5000, 100).to_bytes(),
            GuestAddress(at),
        )
        .unwrap();
    d.tx.add_chain(&[(at, HDR_SIZE as u32, 0), (at + 0x100, 10, 0)]);
    dev.process_tx();
    assert_eq!(d.tx.used().len(), 7, "every chain returned");
    assert!(d.tx.used().iter().skip(1).all(|u| u.1 == 0));

    // RX: a read-only buffer and a too-small one are returned empty; the RST for the
    // broken connection lands in the next good buffer.
    d.rx.add_chain(&[(RX_AREA, 64, 0)]);
    d.rx_bufs.push((0, 0));
    d.rx.add_chain(&[(RX_AREA, 20, WRITE)]);
    d.rx_bufs.push((0, 0));
    d.offer_rx(1);
    dev.process_rx();
    let used = d.rx.used();
    assert_eq!(used.len(), 4);
    assert_eq!((used[1].1, used[2].1), (0, 0));
    let r = d.received();
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].0.op, op::RST);
    let s = dev.muxer().backend().streams_to(5000)[0];
    assert!(dev.muxer().backend_mut().stream(s).closed);
}

#[test]
fn runaway_available_index_fails_the_device() {
    let mut dev = test_device();
    let mut d = Driver::new();
    let (interrupt, _) = test_interrupt();
    let ctx = activate_ctx(
        &d.mem,
        &[&d.rx, &d.tx, &d.ev],
        interrupt.clone(),
        VIRTIO_F_VERSION_1,
    );
    dev.activate(ctx).unwrap();
    d.send(guest_pkt(op::REQUEST, 1234, 5000, 0), b"");
    let (_, avail, _) = d.tx.addrs();
    d.mem.write_obj(1000u16, GuestAddress(avail + 2)).unwrap();
    dev.process_tx();
    assert!(interrupt.needs_reset());
    assert!(d.tx.used().is_empty());
    dev.process_rx();
    assert_eq!(dev.muxer().connection_count(), 0);
}

#[test]
fn reset_drops_connections_and_reactivation_works() {
    let mut dev = test_device();
    let mut d = Driver::new();
    d.activate(&mut dev);
    d.offer_rx(2);
    d.send(guest_pkt(op::REQUEST, 1234, 5000, 0), b"");
    dev.process_tx();
    dev.process_rx();
    dev.reset();
    assert_eq!(dev.muxer().connection_count(), 0);
    let s = dev.muxer().backend().streams_to(5000)[0];
    assert!(dev.muxer().backend_mut().stream(s).closed);
    // Inactive: queue processing is a no-op.
    dev.process_tx();
    dev.process_rx();

    let mut d = Driver::new();
    d.activate(&mut dev);
    d.offer_rx(1);
    d.send(guest_pkt(op::REQUEST, 1234, 5000, 0), b"");
    dev.process_tx();
    dev.process_rx();
    assert_eq!(d.received()[0].0.op, op::RESPONSE);
}

/// The whole device on an event manager with the real Unix backend: a host client's
/// `CONNECT` reaches the guest as REQUEST through the RX queue, the guest's RESPONSE on TX
/// (with a queue notification) gets the client its `OK`, and bytes flow.
#[test]
fn event_loop_with_unix_backend_end_to_end() {
    let dir = std::env::temp_dir().join(format!("sandbox-vm-vsock-dev-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir(&dir).unwrap();
    let path = dir.join("v.sock");
    let dev = Arc::new(Mutex::new(Vsock::new(CID, &path).unwrap()));
    let mut em: EventManager<Arc<Mutex<Vsock>>> = EventManager::new().unwrap();
    em.add_subscriber(dev.clone());

    let mut d = Driver::new();
    let evts = d.activate(&mut dev.lock().unwrap());
    em.run_with_timeout(100).unwrap();
    d.offer_rx(8);
    evts[0].write(1).unwrap();

    let mut c = UnixStream::connect(&path).unwrap();
    c.write_all(b"CONNECT 1024\n").unwrap();
    let start = Instant::now();
    let mut got = Vec::new();
    while got.is_empty() && start.elapsed() < Duration::from_secs(5) {
        em.run_with_timeout(50).unwrap();
        got = d.received();
    }
    assert_eq!(got[0].0.op, op::REQUEST);
    assert_eq!(got[0].0.dst_port, 1024);

    d.send(guest_pkt(op::RESPONSE, 1024, FIRST_LOCAL_PORT, 0), b"");
    d.send(guest_pkt(op::RW, 1024, FIRST_LOCAL_PORT, 3), b"hey");
    evts[1].write(1).unwrap();
    em.run_with_timeout(100).unwrap();
    let mut buf = [0u8; 64];
    let expect = format!("OK {FIRST_LOCAL_PORT}\nhey");
    let mut n = 0;
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    while n < expect.len() {
        n += c.read(&mut buf[n..]).unwrap();
    }
    assert_eq!(&buf[..n], expect.as_bytes());

    c.write_all(b"back").unwrap();
    let start = Instant::now();
    let mut got = Vec::new();
    while got.is_empty() && start.elapsed() < Duration::from_secs(5) {
        em.run_with_timeout(50).unwrap();
        got = d.received();
    }
    assert_eq!((got[0].0.op, got[0].1.as_slice()), (op::RW, &b"back"[..]));

    drop(em);
    drop(dev);
    assert!(!path.exists(), "socket removed with the device");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn transport_reset_goes_into_the_next_event_buffer() {
    let mut d = Driver::new();
    let mut dev = test_device();
    assert!(!dev.send_transport_reset(), "inactive: nothing to send");
    d.activate(&mut dev);
    assert!(!dev.send_transport_reset(), "no event buffer posted yet");
    let buf = 0x13_0000;
    d.mem.write_obj(0xffff_ffffu32, GuestAddress(buf)).unwrap();
    d.ev.add_chain(&[(buf, 4, WRITE)]);
    dev.restored();
    assert_eq!(d.ev.used(), vec![(0, 4)]);
    assert_eq!(
        d.mem.read_obj::<u32>(GuestAddress(buf)).unwrap(),
        0,
        "TRANSPORT_RESET is 0"
    );
    // Until the driver has handled it, nothing goes to the guest.
    assert!(dev.reset_pending);
    d.offer_rx(1);
    dev.process_rx();
    assert!(d.rx.used().is_empty());
    dev.reset();
    assert!(!dev.reset_pending);
}
