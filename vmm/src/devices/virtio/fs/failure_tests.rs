//! A vhost-user backend that dies, during the activation or while the guest waits on a
//! request: the device gets NEEDS_RESET and one log line; the VMM does not panic and another
//! device on the same event loop keeps working. Driven like Linux drives a virtio-mmio
//! device: through the transport's registers, with the device on the real event-loop thread.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vhost::vhost_user::message::FrontendReq;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::test_backend::{Behaviour, TestBackend};
use super::vhost::PROTOCOL_FEATURES_BIT;
use super::Fs;
use crate::bus::BusDevice;
use crate::devices::interrupt::IrqFd;
use crate::devices::virtio::mmio::{MmioTransport, NOTIFY_REG_OFFSET};
use crate::devices::virtio::rng::Rng;
use crate::devices::virtio::status::*;
use crate::devices::virtio::test_utils::{capture_logs, log_lines_with, TestQueue, WRITE};
use crate::devices::virtio::{int_status, ActivateContext, VirtioDevice, VIRTIO_F_VERSION_1};
use crate::event_loop::EventLoop;
use crate::memory::{create_guest_memory, GuestMemory};

fn behaviour() -> Behaviour {
    Behaviour {
        features: VIRTIO_F_VERSION_1 | PROTOCOL_FEATURES_BIT,
        protocol_features: 1 | 1 << 3, // MQ, REPLY_ACK
        queue_num: 2,
        vring_base: 0,
        die_on: None,
        nack: None,
    }
}

fn w(t: &mut MmioTransport, off: u64, v: u32) {
    t.write(off, &v.to_le_bytes());
}

fn r(t: &mut MmioTransport, off: u64) -> u32 {
    let mut b = [0u8; 4];
    t.read(off, &mut b);
    u32::from_le_bytes(b)
}

/// Linux's probe and queue setup, condensed; returns the status register afterwards.
fn driver_setup(t: &mut MmioTransport, queues: &[&TestQueue]) -> u32 {
    w(t, 0x70, 0);
    w(t, 0x70, ACKNOWLEDGE);
    w(t, 0x70, ACKNOWLEDGE | DRIVER);
    w(t, 0x24, 1);
    w(t, 0x20, (VIRTIO_F_VERSION_1 >> 32) as u32);
    w(t, 0x70, ACKNOWLEDGE | DRIVER | FEATURES_OK);
    for (i, q) in queues.iter().enumerate() {
        w(t, 0x30, i as u32);
        w(t, 0x38, u32::from(q.size()));
        let (d, a, u) = q.addrs();
        for (reg, addr) in [(0x80, d), (0x90, a), (0xa0, u)] {
            w(t, reg, addr as u32);
            w(t, reg + 4, (addr >> 32) as u32);
        }
        w(t, 0x44, 1);
    }
    w(t, 0x70, ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK);
    r(t, 0x70)
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "timed out: {what}"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// A VM's worth of devices without KVM: guest RAM, the event loop, a virtio-fs device
/// behind its transport, and an entropy device beside it.
struct Setup {
    mem: GuestMemory,
    el: EventLoop,
    fs: Arc<Mutex<Fs>>,
    transport: MmioTransport,
    irq: Arc<IrqFd>,
    backend: TestBackend,
    rng: Arc<Mutex<Rng>>,
}

fn setup(b: Behaviour, tag: &str) -> Setup {
    let mem = create_guest_memory(16).unwrap();
    let (backend, stream) = TestBackend::start(b);
    let fs = Fs::with_stream(stream, Path::new("/test/fs.sock"), tag, 1, 64).unwrap();
    let fs = Arc::new(Mutex::new(fs));
    let irq = Arc::new(IrqFd::new(5).unwrap());
    let transport = MmioTransport::new(mem.clone(), fs.clone(), irq.clone()).unwrap();
    let el = EventLoop::start().unwrap();
    el.add_subscriber(fs.clone()).unwrap();
    let rng = Arc::new(Mutex::new(Rng::new().unwrap()));
    el.add_subscriber(rng.clone()).unwrap();
    Setup {
        mem,
        el,
        fs,
        transport,
        irq,
        backend,
        rng,
    }
}

impl Setup {
    /// The entropy device, on the same event loop, still answers a request.
    fn rng_still_works(&self) {
        let q = TestQueue::new(&self.mem, 0x80_0000, 16);
        let (interrupt, _irq) = crate::devices::virtio::test_utils::test_interrupt();
        let kick = EventFd::new(EFD_NONBLOCK).unwrap();
        let ctx = ActivateContext {
            mem: self.mem.clone(),
            queues: vec![q.queue()],
            queue_evts: vec![kick.try_clone().unwrap()],
            interrupt,
            acked_features: VIRTIO_F_VERSION_1,
        };
        self.rng.lock().unwrap().activate(ctx).unwrap();
        let mut q = q;
        q.add_chain(&[(0x90_0000, 32, WRITE)]);
        kick.write(1).unwrap();
        wait_until("the entropy device's answer", || q.used().len() == 1);
        assert_eq!(q.used()[0].1, 32);
    }

    /// Waits until the event loop stopped polling the dead backend's socket.
    fn wait_socket_dropped(&self) {
        wait_until("the socket to leave the epoll set", || {
            !self.fs.lock().unwrap().socket_polled
        });
    }
}

#[test]
fn backend_dying_during_activation() {
    capture_logs();
    let mut b = behaviour();
    // Hang up when the request queue's kick fd arrives: mid-handshake.
    b.die_on = Some((FrontendReq::SET_VRING_KICK, 2));
    let mut s = setup(b, "dies-activating");
    let hiprio = TestQueue::new(&s.mem, 0x10_0000, 16);
    let request = TestQueue::new(&s.mem, 0x20_0000, 16);

    let status = driver_setup(&mut s.transport, &[&hiprio, &request]);
    assert_eq!(status & DRIVER_OK, 0, "not started");
    assert_ne!(status & DEVICE_NEEDS_RESET, 0);
    assert_ne!(
        s.transport.interrupt().status() & int_status::CONFIG_CHANGE,
        0
    );
    assert!(s.irq.eventfd().read().is_ok(), "the driver is told");
    s.wait_socket_dropped();
    let lines = log_lines_with("'dies-activating'");
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].contains("activation failed") && lines[0].contains("SET_VRING_KICK"),
        "{lines:?}"
    );
    s.rng_still_works();
    s.el.stop().unwrap();
}

/// A FUSE request header for `unique` at `at`.
fn fuse_request(mem: &GuestMemory, at: u64, unique: u64) {
    let mut h = [0u8; 40];
    h[0..4].copy_from_slice(&40u32.to_le_bytes());
    h[4..8].copy_from_slice(&1u32.to_le_bytes()); // FUSE_LOOKUP
    h[8..16].copy_from_slice(&unique.to_le_bytes());
    mem.write_slice(&h, GuestAddress(at)).unwrap();
}

/// The fuse_out_header the device wrote at `at`: (len, error, unique).
fn fuse_reply(mem: &GuestMemory, at: u64) -> (u32, i32, u64) {
    let mut b = [0u8; 16];
    mem.read_slice(&mut b, GuestAddress(at)).unwrap();
    (
        u32::from_le_bytes(b[0..4].try_into().unwrap()),
        i32::from_le_bytes(b[4..8].try_into().unwrap()),
        u64::from_le_bytes(b[8..16].try_into().unwrap()),
    )
}

#[test]
fn backend_dying_while_a_request_is_in_flight() {
    capture_logs();
    let mut s = setup(behaviour(), "dies-serving");
    let hiprio = TestQueue::new(&s.mem, 0x10_0000, 16);
    let mut request = TestQueue::new(&s.mem, 0x20_0000, 16);
    let status = driver_setup(&mut s.transport, &[&hiprio, &request]);
    assert_eq!(status, ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK);

    // The guest queues a FUSE request and notifies; the backend gets the kick, then dies.
    fuse_request(&s.mem, 0x30_0000, 0xfeed);
    request.add_chain(&[(0x30_0000, 40, 0), (0x31_0000, 4096, WRITE)]);
    s.transport.write(NOTIFY_REG_OFFSET, &1u32.to_le_bytes());
    assert_eq!(s.backend.kicks(1), 1);
    let _ = s.irq.eventfd().read();
    s.backend.kill();

    // The device answers the pending request itself: EIO, with an interrupt.
    let interrupt = s.transport.interrupt().clone();
    wait_until("the EIO reply", || request.used().len() == 1);
    assert_eq!(request.used(), [(0, 16)]);
    assert_eq!(fuse_reply(&s.mem, 0x31_0000), (16, -libc::EIO, 0xfeed));
    assert!(interrupt.needs_reset());
    assert_ne!(r(&mut s.transport, 0x70) & DEVICE_NEEDS_RESET, 0);
    let want = int_status::CONFIG_CHANGE | int_status::USED_RING;
    assert_eq!(interrupt.status() & want, want);
    assert!(s.irq.eventfd().read().is_ok(), "the driver is told");
    s.wait_socket_dropped();
    assert!(s.fs.lock().unwrap().answering());

    // A request after the death: the guest's notification reaches the device.
    interrupt.ack(int_status::USED_RING);
    fuse_request(&s.mem, 0x32_0000, 0xbeef);
    request.add_chain(&[(0x32_0000, 40, 0), (0x33_0000, 16, WRITE)]);
    s.transport.write(NOTIFY_REG_OFFSET, &1u32.to_le_bytes());
    wait_until("the second EIO reply", || request.used().len() == 2);
    assert_eq!(request.used()[1], (2, 16));
    assert_eq!(fuse_reply(&s.mem, 0x33_0000), (16, -libc::EIO, 0xbeef));
    wait_until("the used-buffer interrupt", || {
        interrupt.status() & int_status::USED_RING != 0
    });

    let lines = log_lines_with("'dies-serving'");
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].contains("closed the connection") && lines[0].contains("EIO"),
        "{lines:?}"
    );
    s.rng_still_works();

    // The driver resets the device and tries again: refused, without a panic.
    w(&mut s.transport, 0x70, 0);
    assert!(!s.fs.lock().unwrap().state().is_activated());
    let status = driver_setup(&mut s.transport, &[&hiprio, &request]);
    assert_ne!(status & DEVICE_NEEDS_RESET, 0);
    assert_eq!(status & DRIVER_OK, 0);
    let lines = log_lines_with("'dies-serving'");
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(lines[1].contains("cannot be used again"), "{lines:?}");
    s.el.stop().unwrap();
}

#[test]
fn a_backend_that_breaks_the_protocol_keeps_its_rings() {
    capture_logs();
    let mut s = setup(behaviour(), "chatty-serving");
    let hiprio = TestQueue::new(&s.mem, 0x10_0000, 16);
    let mut request = TestQueue::new(&s.mem, 0x20_0000, 16);
    driver_setup(&mut s.transport, &[&hiprio, &request]);
    fuse_request(&s.mem, 0x30_0000, 1);
    request.add_chain(&[(0x30_0000, 40, 0), (0x31_0000, 16, WRITE)]);
    s.backend.send_unasked();
    let interrupt = s.transport.interrupt().clone();
    wait_until("NEEDS_RESET", || interrupt.needs_reset());
    s.wait_socket_dropped();
    // Still alive, it may still be using the rings: the device does not touch them.
    assert!(!s.fs.lock().unwrap().answering());
    s.transport.write(NOTIFY_REG_OFFSET, &1u32.to_le_bytes());
    assert_eq!(s.backend.kicks(1), 1, "the backend still gets the kicks");
    assert!(request.used().is_empty());
    s.el.stop().unwrap();
}
