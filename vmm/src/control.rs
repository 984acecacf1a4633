//! A running VM's control surface: pausing and resuming the vCPUs, stopping the run, and
//! what `describe` and `metrics` report.
//!
//! Shared (as `Arc<VmControl>`) by the vCPU threads, the main thread and the API thread. It
//! never touches the device event loop: virtio queues only move when the guest runs, so
//! parking the vCPUs is enough to pause the VM.
//!
//! Pausing: `pause` sets the shared state, kicks every vCPU thread out of KVM_RUN with the
//! kick signal (again every millisecond, since a kick that lands just before KVM_RUN is
//! lost), and waits on a condvar until every vCPU has parked. A parked vCPU waits on the
//! same condvar until `resume` or until the main thread shuts the control down after a
//! stop, so a stop while paused still ends the run.
//!
//! Snapshots: a vCPU's state can only be read well on its own thread (its fd lives there,
//! and a pending port IN must first be completed with KVM_RUN). `snapshot` therefore bumps
//! a save generation under the parking lock; each parked vCPU wakes, saves itself into its
//! slot and parks again; once every slot is filled the API thread saves the VM-wide state
//! and memory through the `SnapshotSource`.

use std::os::unix::thread::JoinHandleExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use virtio_bindings::virtio_ids;

use crate::bus::{self, BusEntry, Buses};
use crate::exits::{ExitCounters, ExitCounts};
use crate::kick::kick_signal;
use crate::layout::{
    CMOS_PORT, COM1_IRQ, COM1_PORT, I8042_DATA_PORT, IRQ_FIRST_VIRTIO, MMIO_GAP_START,
    VIRTIO_MMIO_MAX_DEVICES, VIRTIO_MMIO_WINDOW,
};
use crate::persist::{PersistError, SnapshotInfo, SnapshotSource, VcpuState};
use crate::stop::{StopReason, StopSignal};
use vmm_api::api::{
    BusKind, DeviceInfo, DeviceMetrics, StateChange, VmDescription, VmMetrics, VmState,
};

/// How long `pause` waits for every vCPU to park before giving up (and resuming).
pub const PAUSE_TIMEOUT: Duration = Duration::from_secs(10);
const KICK_INTERVAL: Duration = Duration::from_millis(1);

/// Errors of control requests.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ControlError {
    #[error("the VM is stopping")]
    Stopping,
    #[error("the vCPUs did not all stop within {} s; the VM keeps running", PAUSE_TIMEOUT.as_secs())]
    PauseTimeout,
    #[error("the VM is running: pause it first")]
    NotPaused,
    #[error("this VM cannot be snapshotted (it was built without a snapshot source)")]
    NoSource,
    #[error("{0}")]
    Snapshot(String),
}

/// What a parked vCPU saves when asked: its state, or why it could not.
pub type SavedVcpu = Result<VcpuState, String>;

#[derive(Default)]
struct Parking {
    paused: bool,
    parked: usize,
    shut_down: bool,
    /// Bumped by `snapshot`; a parked vCPU that has not saved for this generation does.
    save_generation: u64,
    /// One slot per vCPU for the current generation.
    saved: Vec<Option<SavedVcpu>>,
}

/// One device as the control API reports it.
struct Device {
    info: DeviceInfo,
    entry: BusEntry,
    virtio: bool,
}

/// The control shared by a VM's threads (see the module doc).
pub struct VmControl {
    parking: Mutex<Parking>,
    changed: Condvar,
    /// Fast-path copy of `Parking::paused` for the vCPU loop.
    pause_requested: AtomicBool,
    /// The vCPU threads to kick; emptied before they are joined.
    threads: Mutex<Vec<libc::pthread_t>>,
    stop: Arc<StopSignal>,
    exits: Vec<ExitCounters>,
    devices: OnceLock<Vec<Device>>,
    started: Instant,
    mem_mib: u64,
    source: OnceLock<SnapshotSource>,
}

impl VmControl {
    pub(crate) fn new(vcpus: usize, mem_mib: u64, stop: Arc<StopSignal>) -> Self {
        Self {
            parking: Mutex::default(),
            changed: Condvar::new(),
            pause_requested: AtomicBool::new(false),
            threads: Mutex::default(),
            stop,
            exits: (0..vcpus).map(|_| ExitCounters::default()).collect(),
            devices: OnceLock::new(),
            started: Instant::now(),
            mem_mib,
            source: OnceLock::new(),
        }
    }

    fn lock_parking(&self) -> MutexGuard<'_, Parking> {
        self.parking.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn stopping(&self, p: &Parking) -> bool {
        p.shut_down || self.stop.is_requested()
    }

    /// Stops every vCPU and waits until all are parked. Returns whether the VM was running.
    pub fn pause(&self) -> Result<bool, ControlError> {
        let mut p = self.lock_parking();
        if self.stopping(&p) {
            return Err(ControlError::Stopping);
        }
        let was_running = !p.paused;
        p.paused = true;
        self.pause_requested.store(true, Ordering::SeqCst);
        let deadline = Instant::now() + PAUSE_TIMEOUT;
        while p.parked < self.exits.len() {
            if self.stopping(&p) {
                return Err(ControlError::Stopping);
            }
            if Instant::now() >= deadline {
                self.unpark(&mut p);
                return Err(ControlError::PauseTimeout);
            }
            self.kick_all();
            p = self
                .changed
                .wait_timeout(p, KICK_INTERVAL)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        Ok(was_running)
    }

    /// Lets the vCPUs run again. Returns whether the VM was paused.
    pub fn resume(&self) -> Result<bool, ControlError> {
        let mut p = self.lock_parking();
        if self.stopping(&p) {
            return Err(ControlError::Stopping);
        }
        let was_paused = p.paused;
        self.unpark(&mut p);
        Ok(was_paused)
    }

    fn unpark(&self, p: &mut Parking) {
        p.paused = false;
        self.pause_requested.store(false, Ordering::SeqCst);
        self.changed.notify_all();
    }

    /// Ends the run with `StopReason::Requested` (whether or not the VM is paused).
    /// Returns false if the run was already ending.
    pub fn request_stop(&self) -> bool {
        let first = !self.stop.is_requested();
        self.stop.request(StopReason::Requested);
        first
    }

    /// Running, paused or stopping.
    pub fn state(&self) -> VmState {
        let p = self.lock_parking();
        if self.stopping(&p) {
            VmState::Stopping
        } else if p.paused {
            VmState::Paused
        } else {
            VmState::Running
        }
    }

    /// `pause`/`resume`/`stop` as the API answers them.
    pub fn state_change(&self, changed: bool, message: &str) -> StateChange {
        StateChange {
            state: self.state(),
            changed,
            message: message.into(),
        }
    }

    /// The VM's state, shape and devices.
    pub fn describe(&self) -> VmDescription {
        VmDescription {
            state: self.state(),
            vcpus: u8::try_from(self.exits.len()).unwrap_or(u8::MAX),
            mem_mib: self.mem_mib,
            devices: self.devices().iter().map(|d| d.info.clone()).collect(),
            pid: std::process::id(),
            uptime_ms: u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX),
        }
    }

    /// Exit counters summed over the vCPUs, and per-device counters.
    pub fn metrics(&self) -> VmMetrics {
        let mut exits = ExitCounts::default();
        for c in &self.exits {
            exits.add(&c.snapshot());
        }
        let devices = self.devices().iter().map(device_metrics).collect();
        VmMetrics { exits, devices }
    }

    fn devices(&self) -> &[Device] {
        self.devices.get().map(Vec::as_slice).unwrap_or_default()
    }

    /// Records the device list (once; later calls keep the first list).
    pub(crate) fn set_devices(&self, buses: &Buses) {
        self.devices.get_or_init(|| list_devices(buses));
    }

    /// The exit counters of vCPU `id`.
    pub(crate) fn exit_counters(&self, id: u8) -> Option<&ExitCounters> {
        self.exits.get(usize::from(id))
    }

    /// Called by vCPU `id`'s thread before each KVM_RUN: parks while the VM is paused,
    /// calling `save` whenever a snapshot asks for its state.
    pub(crate) fn park_if_paused(&self, id: u8, save: &mut dyn FnMut() -> SavedVcpu) {
        if !self.pause_requested.load(Ordering::SeqCst) {
            return;
        }
        let mut p = self.lock_parking();
        if !p.paused || p.shut_down {
            return;
        }
        p.parked += 1;
        let mut seen = p.save_generation;
        self.changed.notify_all();
        while p.paused && !p.shut_down {
            if p.save_generation != seen {
                seen = p.save_generation;
                let state = save();
                if let Some(slot) = p.saved.get_mut(usize::from(id)) {
                    *slot = Some(state);
                }
                self.changed.notify_all();
                continue;
            }
            p = self.changed.wait(p).unwrap_or_else(|e| e.into_inner());
        }
        p.parked -= 1;
    }

    /// Records what `snapshot` needs besides the vCPUs (once).
    pub(crate) fn set_snapshot_source(&self, source: SnapshotSource) {
        let _ = self.source.set(source);
    }

    /// Asks every parked vCPU for its state and waits for all of them.
    fn save_vcpus(&self) -> Result<Vec<VcpuState>, ControlError> {
        let n = self.exits.len();
        let mut p = self.lock_parking();
        if self.stopping(&p) {
            return Err(ControlError::Stopping);
        }
        if !p.paused || p.parked < n {
            return Err(ControlError::NotPaused);
        }
        p.save_generation += 1;
        p.saved = (0..n).map(|_| None).collect();
        self.changed.notify_all();
        let deadline = Instant::now() + PAUSE_TIMEOUT;
        while p.saved.iter().any(Option::is_none) {
            if self.stopping(&p) {
                return Err(ControlError::Stopping);
            }
            if Instant::now() >= deadline {
                return Err(ControlError::Snapshot(
                    "the vCPUs did not save their state".into(),
                ));
            }
            p = self
                .changed
                .wait_timeout(p, KICK_INTERVAL)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        p.saved
            .drain(..)
            .flatten()
            .collect::<Result<Vec<_>, String>>()
            .map_err(ControlError::Snapshot)
    }

    /// Saves the paused VM into `dir` (see `persist`). The VM stays paused.
    pub fn snapshot(&self, dir: &std::path::Path) -> Result<SnapshotInfo, ControlError> {
        let source = self.source.get().ok_or(ControlError::NoSource)?;
        let started = Instant::now();
        let vcpus = self.save_vcpus()?;
        source
            .write(dir, vcpus, started)
            .map_err(|e: PersistError| ControlError::Snapshot(e.to_string()))
    }

    /// Makes a spawned vCPU thread kickable by `pause`.
    pub(crate) fn add_thread<T>(&self, t: &JoinHandle<T>) {
        lock(&self.threads).push(t.as_pthread_t());
    }

    /// After the stop: releases parked vCPUs for good and forgets the threads (before
    /// they are joined, so nothing signals a joined thread).
    pub(crate) fn shut_down(&self) {
        let mut p = self.lock_parking();
        p.shut_down = true;
        self.changed.notify_all();
        drop(p);
        lock(&self.threads).clear();
    }

    fn kick_all(&self) {
        for &t in lock(&self.threads).iter() {
            // SAFETY: `t` is a vCPU thread that has not been joined: `shut_down` removes
            // the threads from this list (under this lock) before `Vm::run` joins them, so
            // the pthread_t is still valid. The kick signal has a no-op handler.
            unsafe { libc::pthread_kill(t, kick_signal()) };
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Names the devices on the buses: legacy devices by their port, virtio-mmio devices by
/// their DeviceID register (reading MagicValue and DeviceID has no side effects).
/// Port-I/O devices are never read here (reading a UART's data register consumes a byte).
fn list_devices(buses: &Buses) -> Vec<Device> {
    let mut out = Vec::new();
    for entry in buses.pio.entries() {
        let (kind, irq) = match u16::try_from(entry.base) {
            Ok(COM1_PORT) => ("serial", Some(COM1_IRQ)),
            Ok(I8042_DATA_PORT) => ("i8042", None),
            Ok(CMOS_PORT) => ("cmos", None),
            _ => ("pio", None),
        };
        out.push(device(kind.into(), BusKind::Pio, irq, entry, false));
    }
    for entry in buses.mmio.entries() {
        // Only windows where `attach` puts virtio devices are probed: another device's
        // registers might have read side effects.
        let irq = virtio_irq(entry.base);
        let virtio_id = irq
            .filter(|_| read_reg(&entry, 0) == u32::from_le_bytes(*b"virt"))
            .map(|_| read_reg(&entry, 8));
        let kind = virtio_id.map_or_else(|| "mmio".to_string(), virtio_kind);
        let irq = virtio_id.and(irq);
        out.push(device(kind, BusKind::Mmio, irq, entry, virtio_id.is_some()));
    }
    out
}

fn device(kind: String, bus: BusKind, irq: Option<u32>, entry: BusEntry, virtio: bool) -> Device {
    Device {
        info: DeviceInfo {
            kind,
            bus,
            base: entry.base,
            len: entry.len,
            irq,
        },
        entry,
        virtio,
    }
}

fn read_reg(entry: &BusEntry, offset: u64) -> u32 {
    let mut b = [0u8; 4];
    bus::lock(&entry.device).read(offset, &mut b);
    u32::from_le_bytes(b)
}

/// The IRQ `devices::virtio::attach` gives the device at `base` (windows and IRQs are
/// handed out in step from `MMIO_GAP_START` and `IRQ_FIRST_VIRTIO`).
fn virtio_irq(base: u64) -> Option<u32> {
    let n = base.checked_sub(MMIO_GAP_START)? / VIRTIO_MMIO_WINDOW;
    (n < VIRTIO_MMIO_MAX_DEVICES).then(|| IRQ_FIRST_VIRTIO + n as u32)
}

fn virtio_kind(id: u32) -> String {
    match id {
        virtio_ids::VIRTIO_ID_NET => "virtio-net".into(),
        virtio_ids::VIRTIO_ID_BLOCK => "virtio-blk".into(),
        virtio_ids::VIRTIO_ID_CONSOLE => "virtio-console".into(),
        virtio_ids::VIRTIO_ID_RNG => "virtio-rng".into(),
        virtio_ids::VIRTIO_ID_VSOCK => "virtio-vsock".into(),
        virtio_ids::VIRTIO_ID_FS => "virtio-fs".into(),
        other => format!("virtio-{other}"),
    }
}

/// The virtio-mmio Status register.
const VIRTIO_MMIO_STATUS: u64 = 0x70;

fn device_metrics(d: &Device) -> DeviceMetrics {
    DeviceMetrics {
        kind: d.info.kind.clone(),
        base: d.info.base,
        reads: d.entry.counts.reads.load(Ordering::Relaxed),
        writes: d.entry.counts.writes.load(Ordering::Relaxed),
        virtio_status: d.virtio.then(|| read_reg(&d.entry, VIRTIO_MMIO_STATUS)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::{Bus, BusDevice};

    /// A virtio-mmio register window with a fixed device id and status.
    struct FakeVirtio(u32);
    impl BusDevice for FakeVirtio {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            let v: u32 = match offset {
                0 => u32::from_le_bytes(*b"virt"),
                8 => self.0,
                0x70 => 0xf,
                _ => 0,
            };
            data.copy_from_slice(&v.to_le_bytes()[..data.len()]);
        }
        fn write(&mut self, _: u64, _: &[u8]) {}
    }
    /// Fails the test if read: describe must not probe it.
    struct Nothing;
    impl BusDevice for Nothing {
        fn read(&mut self, _: u64, _: &mut [u8]) {
            panic!("a device outside the virtio windows was read");
        }
        fn write(&mut self, _: u64, _: &[u8]) {}
    }

    fn control(vcpus: usize) -> VmControl {
        VmControl::new(vcpus, 64, Arc::new(StopSignal::new().unwrap()))
    }

    #[test]
    fn devices_are_named_by_port_and_virtio_id() {
        let mut pio = Bus::new();
        let mut mmio = Bus::new();
        let nothing = || Arc::new(Mutex::new(Nothing));
        let virtio = |id| Arc::new(Mutex::new(FakeVirtio(id)));
        pio.insert(nothing(), u64::from(COM1_PORT), 8).unwrap();
        pio.insert(nothing(), 0x500, 1).unwrap();
        let blk = MMIO_GAP_START + VIRTIO_MMIO_WINDOW;
        mmio.insert(virtio(2), blk, 0x1000).unwrap();
        mmio.insert(virtio(99), MMIO_GAP_START, 0x1000).unwrap();
        mmio.insert(nothing(), 0x2000_0000, 0x10).unwrap();
        let c = control(1);
        c.set_devices(&Buses { pio, mmio });
        let d = c.describe();
        let kinds: Vec<_> = d.devices.iter().map(|d| (d.kind.as_str(), d.irq)).collect();
        assert_eq!(
            kinds,
            vec![
                ("serial", Some(COM1_IRQ)),
                ("pio", None),
                ("mmio", None),
                ("virtio-99", Some(IRQ_FIRST_VIRTIO)),
                ("virtio-blk", Some(IRQ_FIRST_VIRTIO + 1)),
            ]
        );
        assert_eq!((d.vcpus, d.mem_mib, d.state), (1, 64, VmState::Running));
        let m = c.metrics();
        assert_eq!(m.devices[4].virtio_status, Some(0xf));
        assert_eq!(m.devices[0].virtio_status, None);
    }

    #[test]
    fn pause_waits_for_every_vcpu_and_stop_releases_them() {
        crate::kick::install_kick_handler().unwrap();
        let c = Arc::new(control(2));
        let parked_threads: Vec<_> = (0..2)
            .map(|_| {
                let c = c.clone();
                std::thread::spawn(move || {
                    let mut laps = 0u64;
                    while !c.stop.is_requested() {
                        c.park_if_paused(0, &mut || Err("not a vCPU".into()));
                        laps += 1;
                        std::thread::yield_now();
                    }
                    laps
                })
            })
            .collect();
        for t in &parked_threads {
            c.add_thread(t);
        }
        assert_eq!(c.pause(), Ok(true));
        assert_eq!(c.lock_parking().parked, 2);
        assert_eq!(c.pause(), Ok(false), "a second pause is no change");
        assert_eq!(c.state(), VmState::Paused);
        assert_eq!(c.resume(), Ok(true));
        assert_eq!(c.resume(), Ok(false));
        assert_eq!(c.pause(), Ok(true));
        assert!(c.request_stop());
        assert!(!c.request_stop());
        assert_eq!(c.state(), VmState::Stopping);
        assert_eq!(c.pause(), Err(ControlError::Stopping));
        c.shut_down();
        for t in parked_threads {
            assert!(t.join().unwrap() > 0);
        }
        assert_eq!(c.stop.reason(), Some(StopReason::Requested));
    }
}
