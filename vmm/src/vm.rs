//! A built VM: runs its vCPUs until the guest, a control request or an error stops it.

use std::sync::{Arc, Mutex};

use kvm_ioctls::VmFd;
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

use crate::bus::{BusError, Buses, SharedDevice};
use crate::config::VmConfig;
use crate::control::VmControl;
use crate::devices::virtio::mmio::MmioTransport;
use crate::event_loop::EventLoop;
use crate::memory::GuestMemory;
use crate::persist::{CpuProfile, SnapshotSource};
use crate::stop::{StopReason, StopSignal};
use crate::vcpu::{self, Vcpu, VcpuError, VcpuShared};

/// A VM ready to run (see `builder::build`).
pub struct Vm {
    // Field order is drop order: vCPUs and the VM fd go before the memory they map.
    vcpus: Vec<Vcpu>,
    _vm_fd: Arc<VmFd>,
    buses: Arc<Buses>,
    stop: Arc<StopSignal>,
    control: Arc<VmControl>,
    event_loop: Option<EventLoop>,
    msr_indices: Arc<[u32]>,
    mem: GuestMemory,
}

/// What `builder` hands over to make a `Vm`.
pub(crate) struct VmParts {
    pub vm_fd: VmFd,
    pub mem: GuestMemory,
    pub vcpus: Vec<Vcpu>,
    pub buses: Buses,
    pub stop: Arc<StopSignal>,
    pub event_loop: EventLoop,
    /// The virtio transports, in attach order (a snapshot saves each).
    pub transports: Vec<Arc<Mutex<MmioTransport>>>,
    /// KVM_GET_MSR_INDEX_LIST: the MSRs a snapshot saves.
    pub msr_indices: Vec<u32>,
    /// The config the VM was built from and its CPU profile, for snapshots.
    pub config: VmConfig,
    pub cpu_profile: CpuProfile,
}

impl Vm {
    pub(crate) fn new(parts: VmParts) -> Self {
        let mem = parts.mem;
        let mem_mib = mem.iter().map(|r| r.len()).sum::<u64>() >> 20;
        let control = Arc::new(VmControl::new(
            parts.vcpus.len(),
            mem_mib,
            parts.stop.clone(),
        ));
        let vm_fd = Arc::new(parts.vm_fd);
        control.set_snapshot_source(SnapshotSource {
            vm_fd: vm_fd.clone(),
            mem: mem.clone(),
            transports: parts.transports,
            config: parts.config,
            cpu_profile: parts.cpu_profile,
        });
        Self {
            vcpus: parts.vcpus,
            _vm_fd: vm_fd,
            buses: Arc::new(parts.buses),
            stop: parts.stop,
            control,
            event_loop: Some(parts.event_loop),
            msr_indices: parts.msr_indices.into(),
            mem,
        }
    }

    /// Maps a device into the guest-physical MMIO space; only before `run` and `control`.
    pub fn attach_mmio(&mut self, dev: SharedDevice, base: u64, len: u64) -> Result<(), BusError> {
        match Arc::get_mut(&mut self.buses) {
            Some(b) => b.mmio.insert(dev, base, len),
            None => Err(BusError::Overlap { base, len }),
        }
    }

    /// Maps a device into the port-I/O space; only before `run` and `control`.
    pub fn attach_pio(&mut self, dev: SharedDevice, base: u16, len: u16) -> Result<(), BusError> {
        let (base, len) = (u64::from(base), u64::from(len));
        match Arc::get_mut(&mut self.buses) {
            Some(b) => b.pio.insert(dev, base, len),
            None => Err(BusError::Overlap { base, len }),
        }
    }

    /// The signal that ends the run; raising it stops the VM from outside.
    pub fn stop_signal(&self) -> Arc<StopSignal> {
        self.stop.clone()
    }

    /// The VM's control (pause, resume, stop, describe, metrics), for another thread such
    /// as the API server. Its device list is fixed from here on.
    pub fn control(&self) -> Arc<VmControl> {
        self.control.set_devices(&self.buses);
        self.control.clone()
    }

    /// Runs until the VM stops; returns why.
    pub fn run(&mut self) -> Result<StopReason, VcpuError> {
        self.run_with(|| {})
    }

    /// As `run`, calling `on_running` once every vCPU thread has started.
    pub fn run_with(&mut self, on_running: impl FnOnce()) -> Result<StopReason, VcpuError> {
        let shared = VcpuShared {
            buses: self.buses.clone(),
            stop: self.stop.clone(),
            mem: self.mem.clone(),
            control: self.control(),
            msr_indices: self.msr_indices.clone(),
        };
        let mut threads = Vec::new();
        for vcpu in self.vcpus.drain(..) {
            match vcpu.spawn(shared.clone()) {
                Ok(t) => {
                    self.control.add_thread(&t);
                    threads.push(t);
                }
                Err(e) => {
                    self.stop.request(StopReason::VmmError(e.to_string()));
                    self.control.shut_down();
                    vcpu::stop_and_join(threads);
                    return Err(e);
                }
            }
        }
        on_running();
        // Every other thread runs now: the main thread's filter only has to allow waiting
        // and tearing down (a filter is inherited by threads spawned after it).
        crate::seccomp::confine_current(crate::seccomp::ThreadKind::Main);
        wait_readable(self.stop.eventfd());
        self.control.shut_down();
        vcpu::stop_and_join(threads);
        if let Some(el) = self.event_loop.take() {
            if let Err(e) = el.stop() {
                log::warn!("device event loop did not stop cleanly: {e}");
            }
        }
        Ok(self
            .stop
            .reason()
            .unwrap_or_else(|| StopReason::VmmError("stopped without a reason".into())))
    }
}

/// Blocks until `fd` is readable.
fn wait_readable(evt: &vmm_sys_util::eventfd::EventFd) {
    use std::os::fd::AsRawFd;
    let mut pfd = libc::pollfd {
        fd: evt.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    loop {
        // SAFETY: `pfd` is a valid pollfd array of length 1 for the duration of the call.
        let r = unsafe { libc::poll(&mut pfd, 1, -1) };
        if r > 0 || (r < 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR)) {
            return;
        }
    }
}
