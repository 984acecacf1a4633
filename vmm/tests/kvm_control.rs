//! The control API against a running tiny guest: pause really stops the vCPUs, resume
//! lets them go on, stop ends the run. Needs /dev/kvm; runs in about a second.

mod common;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use vmm::api::{ApiClient, ApiServer, BusKind, VmState};
use vmm::bus::BusDevice;
use vmm::stop::StopReason;

use common::GuestDir;
use test_support::cmd::poll_until;
use test_support::guests::{COUNTING, COUNTING_PORT};

const COUNTER_PORT: u16 = COUNTING_PORT;

/// Remembers the last value written to it.
struct Counter(Arc<AtomicU32>);

impl BusDevice for Counter {
    fn read(&mut self, _: u64, data: &mut [u8]) {
        data.fill(0);
    }
    fn write(&mut self, _: u64, data: &[u8]) {
        if let Ok(b) = <[u8; 4]>::try_from(data) {
            self.0.store(u32::from_le_bytes(b), Ordering::SeqCst);
        }
    }
}

/// A counting guest running on its own thread, with the API server up.
struct Running {
    counter: Arc<AtomicU32>,
    client: ApiClient,
    run: std::thread::JoinHandle<StopReason>,
    _server: ApiServer,
}

fn start(s: &GuestDir, vcpus: u8) -> Running {
    let mut config = s.config(vcpus);
    config.rng = true;
    let mut vm = vmm::builder::build(&config).expect("build");
    let counter = Arc::new(AtomicU32::new(0));
    vm.attach_pio(
        Arc::new(Mutex::new(Counter(counter.clone()))),
        COUNTER_PORT,
        4,
    )
    .unwrap();
    let sock = s.0.join("api.sock");
    let server = ApiServer::start(&sock, vm.control(), None).unwrap();
    let run = std::thread::spawn(move || vm.run().expect("run"));
    let client = ApiClient::connect(&sock, Duration::from_secs(5)).unwrap();
    Running {
        counter,
        client,
        run,
        _server: server,
    }
}

/// Waits (up to 10 s) for the counter to pass `above`.
fn advances_past(counter: &AtomicU32, above: u32) -> bool {
    poll_until(Duration::from_secs(10), Duration::from_millis(1), || {
        counter.load(Ordering::SeqCst) > above
    })
}

#[test]
fn pause_stops_the_guest_and_resume_lets_it_go_on() {
    let s = GuestDir::new("ctl-pause", COUNTING);
    let mut r = start(&s, 1);
    assert!(advances_past(&r.counter, 100), "the guest never counted");

    let d = r.client.describe().unwrap();
    assert_eq!((d.state, d.vcpus, d.mem_mib), (VmState::Running, 1, 16));
    let serial = d.devices.iter().find(|d| d.kind == "serial").unwrap();
    assert_eq!(
        (serial.bus, serial.base, serial.irq),
        (BusKind::Pio, 0x3f8, Some(4))
    );
    assert!(d.devices.iter().any(|d| d.base == u64::from(COUNTER_PORT)));
    let rng = d.devices.iter().find(|d| d.kind == "virtio-rng").unwrap();
    assert_eq!(
        (rng.bus, rng.base, rng.irq),
        (BusKind::Mmio, 0xd000_0000, Some(5))
    );

    let p = r.client.pause().unwrap();
    assert_eq!((p.state, p.changed), (VmState::Paused, true));
    let frozen = r.counter.load(Ordering::SeqCst);
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(
        r.counter.load(Ordering::SeqCst),
        frozen,
        "counted while paused"
    );
    assert_eq!(r.client.describe().unwrap().state, VmState::Paused);
    assert!(
        !r.client.pause().unwrap().changed,
        "a second pause is no change"
    );
    let m = r.client.metrics().unwrap();
    assert!(m.exits.io_out >= u64::from(frozen), "{:?}", m.exits);
    let port = m.devices.iter().find(|d| d.base == u64::from(COUNTER_PORT));
    assert!(port.unwrap().writes >= u64::from(frozen));
    let rng = m.devices.iter().find(|d| d.kind == "virtio-rng").unwrap();
    assert_eq!(rng.virtio_status, Some(0), "no driver touched it");

    let res = r.client.resume().unwrap();
    assert_eq!((res.state, res.changed), (VmState::Running, true));
    assert!(
        advances_past(&r.counter, frozen),
        "no progress after resume"
    );
    assert_eq!(r.client.describe().unwrap().state, VmState::Running);

    let st = r.client.stop().unwrap();
    assert_eq!(st.state, VmState::Stopping);
    assert_eq!(r.run.join().unwrap(), StopReason::Requested);
}

#[test]
fn quick_pause_resume_cycles_then_stop_while_paused() {
    // The second vCPU waits for a SIPI inside KVM_RUN: the pause must kick it out too.
    let s = GuestDir::new("ctl-stop-paused", COUNTING);
    let mut r = start(&s, 2);
    assert!(advances_past(&r.counter, 10));
    for _ in 0..20 {
        assert!(r.client.pause().unwrap().changed);
        assert!(r.client.resume().unwrap().changed);
    }
    assert!(r.client.pause().unwrap().changed);
    let frozen = r.counter.load(Ordering::SeqCst);
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(r.counter.load(Ordering::SeqCst), frozen);
    assert_eq!(r.client.describe().unwrap().vcpus, 2);
    r.client.stop().unwrap();
    assert_eq!(r.run.join().unwrap(), StopReason::Requested);
}
