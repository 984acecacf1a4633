//! virtio-fs against a vhost-user test backend on a socketpair: negotiation, the memory
//! table, ring setup, the interrupt path, reset, and a backend that dies or misbehaves.

use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ::vhost::vhost_user::message::FrontendReq;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};
use vmm_sys_util::eventfd::EventFd;

use super::test_backend::{Behaviour, TestBackend};
use super::vhost::{RingRecord, VhostError, PROTOCOL_FEATURES_BIT};
use super::*;
use crate::devices::virtio::test_utils::{
    activate_ctx, capture_logs, log_lines_with, test_interrupt, TestQueue,
};
use crate::devices::virtio::{int_status, VirtioInterrupt, VIRTIO_F_VERSION_1};
use crate::event_loop::EventLoop;
use crate::memory::{create_guest_memory, GuestMemory};

const MQ: u64 = 1 << 0;
const REPLY_ACK: u64 = 1 << 3;
const BACKEND_REQ: u64 = 1 << 5;
const CONFIG: u64 = 1 << 9;
/// `VIRTIO_FS_F_NOTIFICATION`: offered by the backend, not passed on.
const FS_NOTIFICATION: u64 = 1;
const EVENT_IDX: u64 = 1 << VIRTIO_RING_F_EVENT_IDX;
const INDIRECT: u64 = 1 << VIRTIO_RING_F_INDIRECT_DESC;

/// What virtiofsd offers, roughly.
fn behaviour() -> Behaviour {
    Behaviour {
        features: VIRTIO_F_VERSION_1
            | INDIRECT
            | EVENT_IDX
            | PROTOCOL_FEATURES_BIT
            | FS_NOTIFICATION,
        protocol_features: MQ | REPLY_ACK | BACKEND_REQ | CONFIG,
        queue_num: 2,
        vring_base: 0,
        die_on: None,
        nack: None,
    }
}

fn device(b: Behaviour, tag: &str) -> (Fs, TestBackend) {
    let (backend, stream) = TestBackend::start(b);
    let fs = Fs::with_stream(stream, Path::new("/test/fs.sock"), tag, 1, 256).unwrap();
    (fs, backend)
}

/// Guest RAM backed by a memfd, as the VMM makes it, with a hiprio and a request queue.
fn memory_and_queues() -> (GuestMemory, TestQueue, TestQueue) {
    let mem = create_guest_memory(16).unwrap();
    let hiprio = TestQueue::new(&mem, 0x10_0000, 16);
    let request = TestQueue::new(&mem, 0x20_0000, 32);
    (mem, hiprio, request)
}

const ACKED: u64 = VIRTIO_F_VERSION_1 | EVENT_IDX;

/// An activation context, and copies of its queue (kick) eventfds.
fn context(
    mem: &GuestMemory,
    queues: &[&TestQueue],
    interrupt: Arc<VirtioInterrupt>,
) -> (ActivateContext, Vec<EventFd>) {
    let ctx = activate_ctx(mem, queues, interrupt, ACKED);
    let kicks = ctx
        .queue_evts
        .iter()
        .map(|e| e.try_clone().unwrap())
        .collect();
    (ctx, kicks)
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

const NEGOTIATION: [FrontendReq; 5] = [
    FrontendReq::SET_OWNER,
    FrontendReq::GET_FEATURES,
    FrontendReq::GET_PROTOCOL_FEATURES,
    FrontendReq::SET_PROTOCOL_FEATURES,
    FrontendReq::GET_QUEUE_NUM,
];

#[test]
fn negotiation_passes_on_the_usable_features_and_config_is_served() {
    let (fs, backend) = device(behaviour(), "myfs");
    assert_eq!(fs.device_type(), 26);
    assert_eq!(fs.queue_max_sizes(), &[256, 256]);
    // Neither the vhost-user bit nor VIRTIO_FS_F_NOTIFICATION reaches the driver.
    assert_eq!(
        fs.avail_features(),
        VIRTIO_F_VERSION_1 | INDIRECT | EVENT_IDX
    );
    let seen = backend.seen();
    assert_eq!(seen.requests, NEGOTIATION);
    // MQ and REPLY_ACK only: no CONFIG (we serve it), no backend channel (no DAX).
    assert_eq!(seen.protocol_features, Some(MQ | REPLY_ACK));
    assert_eq!(seen.features, None, "SET_FEATURES waits for the driver");
    drop(seen);

    let mut config = [0xffu8; 40];
    fs.read_config(0, &mut config);
    assert_eq!(&config[..4], b"myfs");
    assert_eq!(config[4..36], [0; 32]);
    assert_eq!(u32::from_le_bytes(config[36..].try_into().unwrap()), 1);
    let mut tail = [0xffu8; 8];
    fs.read_config(38, &mut tail);
    assert_eq!(tail, [0; 8]);
}

#[test]
fn a_backend_that_cannot_serve_the_device_fails_the_build() {
    let build = |b: Behaviour, queues: u16| {
        let (_backend, stream) = TestBackend::start(b);
        Fs::with_stream(stream, Path::new("/s"), "t", queues, 256).err()
    };
    let two_queues = build(behaviour(), 2);
    assert!(
        matches!(
            two_queues,
            Some(FsError::Vhost(VhostError::TooFewQueues {
                have: 2,
                need: 3
            }))
        ),
        "{two_queues:?}"
    );
    let mut b = behaviour();
    b.features &= !VIRTIO_F_VERSION_1;
    assert!(matches!(
        build(b, 1),
        Some(FsError::Vhost(VhostError::NotModern(_)))
    ));
    let mut b = behaviour();
    b.features &= !PROTOCOL_FEATURES_BIT;
    assert!(matches!(
        build(b, 1),
        Some(FsError::Vhost(VhostError::NoProtocolFeatures(_)))
    ));
    let mut b = behaviour();
    b.die_on = Some((FrontendReq::GET_FEATURES, 1));
    assert!(matches!(
        build(b, 1),
        Some(FsError::Vhost(VhostError::Request {
            what: "GET_FEATURES",
            ..
        }))
    ));
    let missing = Fs::connect(Path::new("/nonexistent/fs.sock"), "t", 1, 256).err();
    assert!(matches!(missing, Some(FsError::Connect(_))), "{missing:?}");
}

#[test]
fn parameters_are_checked() {
    assert!(check_params("t", 1, 1024).is_ok());
    assert!(check_params(&"x".repeat(36), 64, 32768).is_ok());
    for tag in ["", "a\0b", &"x".repeat(37)] {
        assert!(matches!(
            check_params(tag, 1, 1024),
            Err(FsParamError::Tag(_))
        ));
    }
    for size in [0, 1000, 65535] {
        assert!(matches!(
            check_params("t", 1, size),
            Err(FsParamError::QueueSize(_))
        ));
    }
    for n in [0, 65] {
        assert!(matches!(
            check_params("t", n, 1024),
            Err(FsParamError::RequestQueues(_))
        ));
    }
}

#[test]
fn activation_sends_the_memory_table_and_sets_up_every_ring() {
    let (mem, hiprio, request) = memory_and_queues();
    mem.write_slice(b"written by the guest", GuestAddress(0x5000))
        .unwrap();
    let (mut fs, backend) = device(behaviour(), "setup");
    let (interrupt, _irq) = test_interrupt();
    let (ctx, kicks) = context(&mem, &[&hiprio, &request], interrupt);
    fs.activate(ctx).unwrap();

    let seen = backend.seen();
    let ring_setup = [
        FrontendReq::SET_VRING_NUM,
        FrontendReq::SET_VRING_ADDR,
        FrontendReq::SET_VRING_BASE,
        FrontendReq::SET_VRING_CALL,
        FrontendReq::SET_VRING_KICK,
        FrontendReq::SET_VRING_ENABLE,
    ];
    let mut expected = NEGOTIATION.to_vec();
    expected.extend([FrontendReq::SET_FEATURES, FrontendReq::SET_MEM_TABLE]);
    expected.extend(ring_setup);
    expected.extend(ring_setup);
    assert_eq!(seen.requests, expected);
    assert_eq!(seen.features, Some(ACKED | PROTOCOL_FEATURES_BIT));
    // One region: all 16 MiB at guest address 0, at the VMM's mapping, from offset 0.
    assert_eq!(seen.regions.len(), 1);
    let region = &seen.regions[0];
    let vmm_addr = mem.get_host_address(GuestAddress(0)).unwrap() as u64;
    assert_eq!(
        (
            region.gpa,
            region.size,
            region.user_addr,
            region.mmap_offset
        ),
        (0, 16 << 20, vmm_addr, 0)
    );
    assert_ne!(region.file.as_raw_fd(), -1);
    for (i, q) in [&hiprio, &request].into_iter().enumerate() {
        let qi = i as u32;
        assert_eq!(seen.nums[&qi], u32::from(q.size()), "queue {i} size");
        assert_eq!(seen.bases[&qi], 0);
        assert!(seen.calls.contains_key(&qi) && seen.kicks.contains_key(&qi));
        assert!(seen.enabled[&qi]);
        assert_eq!(seen.addrs[&qi].flags, 0);
    }
    let addrs = seen.addrs.clone();
    drop(seen);

    // The backend maps the memfd it got and sees the guest's bytes, and the other way round.
    let backend_view = backend.guest_memory();
    let mut buf = [0u8; 20];
    backend_view
        .read_slice(&mut buf, GuestAddress(0x5000))
        .unwrap();
    assert_eq!(&buf, b"written by the guest");
    backend_view
        .write_slice(b"from the backend", GuestAddress(0x6000))
        .unwrap();
    let mut buf = [0u8; 16];
    mem.read_slice(&mut buf, GuestAddress(0x6000)).unwrap();
    assert_eq!(&buf, b"from the backend");

    // Ring addresses are VMM addresses that the memory table turns back into the rings.
    for (i, q) in [&hiprio, &request].into_iter().enumerate() {
        let a = addrs[&(i as u32)];
        let gpas = [a.desc, a.avail, a.used].map(|va| backend.va_to_gpa(va).unwrap());
        let (d, av, u) = q.addrs();
        assert_eq!(gpas, [d, av, u], "queue {i}");
    }

    // The transport's queue eventfds are the backend's kick fds.
    kicks[1].write(1).unwrap();
    assert_eq!(backend.kicks(1), 1);
    assert_eq!(backend.kicks(0), 0);

    // The device state records what the rings were set up with.
    let active = fs.state().active().unwrap();
    assert_eq!(active.acked_features, ACKED);
    let (d, av, u) = request.addrs();
    assert_eq!(
        active.data.rings[1],
        RingRecord {
            index: 1,
            size: 32,
            desc: d,
            avail: av,
            used: u,
            base: 0
        }
    );
}

#[test]
fn backend_calls_become_used_buffer_interrupts_on_the_event_loop() {
    let (mem, hiprio, request) = memory_and_queues();
    let (fs, backend) = device(behaviour(), "calls");
    let fs = Arc::new(Mutex::new(fs));
    let el = EventLoop::start().unwrap();
    el.add_subscriber(fs.clone()).unwrap();
    let (interrupt, irq) = test_interrupt();
    let (ctx, _kicks) = context(&mem, &[&hiprio, &request], interrupt.clone());
    fs.lock().unwrap().activate(ctx).unwrap();

    for queue in [1, 0] {
        assert_eq!(interrupt.status(), 0);
        backend.call(queue);
        wait_until("the interrupt", || irq.eventfd().read().is_ok());
        assert_eq!(interrupt.status(), int_status::USED_RING, "queue {queue}");
        interrupt.ack(int_status::USED_RING);
    }
    assert!(!interrupt.needs_reset());
    el.stop().unwrap();
}

#[test]
fn reset_stops_the_rings_and_the_device_starts_again() {
    let (mem, hiprio, request) = memory_and_queues();
    let mut b = behaviour();
    b.vring_base = 7;
    let (mut fs, backend) = device(b, "reset");
    let (interrupt, _irq) = test_interrupt();
    let (ctx, _) = context(&mem, &[&hiprio, &request], interrupt.clone());
    fs.activate(ctx).unwrap();
    let before = backend.seen().requests.len();
    fs.reset();
    assert!(!fs.state().is_activated());
    {
        let seen = backend.seen();
        assert_eq!(
            seen.requests[before..],
            [
                FrontendReq::SET_VRING_ENABLE,
                FrontendReq::GET_VRING_BASE,
                FrontendReq::SET_VRING_ENABLE,
                FrontendReq::GET_VRING_BASE,
            ]
        );
        assert_eq!(seen.base_queries, [0, 1]);
        assert!(seen.enabled.values().all(|&e| !e));
    }
    let (ctx, _) = context(&mem, &[&hiprio, &request], interrupt);
    fs.activate(ctx).unwrap();
    let seen = backend.seen();
    let again = &seen.requests[before + 4..];
    assert_eq!(
        again[..2],
        [FrontendReq::SET_FEATURES, FrontendReq::SET_MEM_TABLE]
    );
    assert_eq!(again.len(), 2 + 2 * 6);
    assert!(seen.enabled.values().all(|&e| e));
    assert!(!fs.backend_broken());
}

#[test]
fn a_backend_error_reply_fails_the_activation() {
    let (mem, hiprio, request) = memory_and_queues();
    let mut b = behaviour();
    b.nack = Some(FrontendReq::SET_MEM_TABLE);
    let (mut fs, _backend) = device(b, "nack");
    let (interrupt, _irq) = test_interrupt();
    let (ctx, _) = context(&mem, &[&hiprio, &request], interrupt);
    let err = fs.activate(ctx).unwrap_err().to_string();
    assert!(
        err.contains("SET_MEM_TABLE") && err.contains("'nack'"),
        "{err}"
    );
    assert!(fs.backend_broken());
    assert!(!fs.state().is_activated());
}

#[test]
fn an_unasked_message_is_a_protocol_error() {
    capture_logs();
    let (mem, hiprio, request) = memory_and_queues();
    let (mut fs, backend) = device(behaviour(), "chatty-backend");
    let (interrupt, _irq) = test_interrupt();
    let (ctx, _) = context(&mem, &[&hiprio, &request], interrupt.clone());
    fs.activate(ctx).unwrap();
    assert!(fs.check_backend(), "a quiet backend is fine");
    backend.send_unasked();
    assert!(!fs.check_backend());
    assert!(interrupt.needs_reset());
    assert!(fs.backend_broken());
    let lines = log_lines_with("'chatty-backend'");
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].contains("sent a message nobody asked for"),
        "{lines:?}"
    );
}
