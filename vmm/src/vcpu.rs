//! vCPU threads: run KVM_RUN, hand each exit to `exits::handle_exit`, stop on request.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use kvm_ioctls::{VcpuExit, VcpuFd};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::signal::Killable;

use crate::bus::Buses;
use crate::control::VmControl;
use crate::exits::{self, describe_internal_error, Action, Exit};
use crate::kick::{install_kick_handler, kick_signal, KickError};
use crate::memory::GuestMemory;
use crate::persist;
use crate::stop::{StopReason, StopSignal};

/// Errors starting vCPU threads.
#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    #[error(transparent)]
    Signal(#[from] KickError),
    #[error("cannot start a vCPU thread: {0}")]
    Spawn(std::io::Error),
}

/// One configured vCPU, ready to run.
pub struct Vcpu {
    pub id: u8,
    pub fd: VcpuFd,
}

/// Everything a running vCPU thread shares with the others.
#[derive(Clone)]
pub struct VcpuShared {
    pub buses: Arc<Buses>,
    pub stop: Arc<StopSignal>,
    pub mem: GuestMemory,
    pub control: Arc<VmControl>,
    /// The MSRs a snapshot saves (KVM_GET_MSR_INDEX_LIST).
    pub msr_indices: Arc<[u32]>,
}

/// Raises the stop signal if the thread ends without having done so (e.g. it panicked).
struct StopOnExit(Arc<StopSignal>, u8);

impl Drop for StopOnExit {
    fn drop(&mut self) {
        self.0.request(StopReason::VmmError(format!(
            "vCPU {} thread ended unexpectedly",
            self.1
        )));
    }
}

impl Vcpu {
    /// Runs the vCPU on a new thread until the VM stops.
    pub fn spawn(self, shared: VcpuShared) -> Result<JoinHandle<()>, VcpuError> {
        install_kick_handler()?;
        std::thread::Builder::new()
            .name(format!("vcpu{}", self.id))
            .spawn(move || self.run(shared))
            .map_err(VcpuError::Spawn)
    }

    fn run(mut self, shared: VcpuShared) {
        let _guard = StopOnExit(shared.stop.clone(), self.id);
        crate::seccomp::confine_current(crate::seccomp::ThreadKind::Vcpu);
        let id = self.id;
        let record = |exit: &Exit| {
            if let Some(c) = shared.control.exit_counters(id) {
                c.record(exit);
            }
        };
        while !shared.stop.is_requested() {
            let fd = &mut self.fd;
            shared.control.park_if_paused(id, &mut || {
                persist::vcpu::finish_pending_io(fd);
                persist::vcpu::save(fd, id, &shared.msr_indices).map_err(|e| e.to_string())
            });
            if shared.stop.is_requested() {
                break;
            }
            let action = match self.fd.run() {
                Ok(exit) => {
                    let exit = translate(exit);
                    record(&exit);
                    exits::handle_exit(exit, shared.buses.as_ref())
                }
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                    record(&Exit::Interrupted);
                    exits::handle_exit(Exit::Interrupted, shared.buses.as_ref())
                }
                Err(e) => Action::Stop(StopReason::VmmError(format!(
                    "KVM_RUN failed on vCPU {}: {e}",
                    self.id
                ))),
            };
            match action {
                Action::Resume => {}
                Action::Stop(reason) => shared.stop.request(reason),
                Action::Diagnose => {
                    let msg = self.diagnose(&shared.mem);
                    shared.stop.request(StopReason::GuestFault(msg));
                }
            }
        }
    }

    /// Describes a KVM internal error with the registers and the code bytes at RIP.
    fn diagnose(&mut self, mem: &GuestMemory) -> String {
        // SAFETY: after KVM_EXIT_INTERNAL_ERROR the kvm_run union holds `internal`.
        let suberror = unsafe { self.fd.get_kvm_run().__bindgen_anon_1.internal.suberror };
        let Ok(regs) = self.fd.get_regs() else {
            return describe_internal_error(suberror, 0, None);
        };
        let code = self
            .fd
            .translate_gva(regs.rip)
            .ok()
            .filter(|t| t.valid != 0)
            .and_then(|t| {
                let mut buf = [0u8; 16];
                mem.read_slice(&mut buf, GuestAddress(t.physical_address))
                    .ok()
                    .map(|_| buf)
            });
        if let Ok(s) = self.fd.get_sregs() {
            log::error!(
                "vCPU {}: rip={:#x} rsp={:#x} rax={:#x} rcx={:#x} rflags={:#x} cr0={:#x} cr3={:#x} cr4={:#x} efer={:#x} cs.dpl={}",
                self.id, regs.rip, regs.rsp, regs.rax, regs.rcx, regs.rflags, s.cr0, s.cr3, s.cr4, s.efer, s.cs.dpl
            );
        }
        describe_internal_error(suberror, regs.rip, code.as_ref().map(|c| &c[..]))
    }
}

fn translate(exit: VcpuExit) -> Exit {
    match exit {
        VcpuExit::IoIn(port, data) => Exit::IoIn(port, data),
        VcpuExit::IoOut(port, data) => Exit::IoOut(port, data),
        VcpuExit::MmioRead(addr, data) => Exit::MmioRead(addr, data),
        VcpuExit::MmioWrite(addr, data) => Exit::MmioWrite(addr, data),
        VcpuExit::Hlt => Exit::Hlt,
        VcpuExit::Shutdown => Exit::Shutdown,
        VcpuExit::SystemEvent(t, _) => Exit::SystemEvent(t),
        VcpuExit::InternalError => Exit::InternalError,
        VcpuExit::FailEntry(reason, _) => Exit::FailEntry(reason),
        VcpuExit::Intr => Exit::Interrupted,
        VcpuExit::Exception => Exit::Other("KVM_EXIT_EXCEPTION"),
        VcpuExit::Debug(_) => Exit::Other("KVM_EXIT_DEBUG"),
        VcpuExit::IrqWindowOpen => Exit::Other("KVM_EXIT_IRQ_WINDOW_OPEN"),
        VcpuExit::Nmi => Exit::Other("KVM_EXIT_NMI"),
        VcpuExit::IoapicEoi(_) => Exit::Other("KVM_EXIT_IOAPIC_EOI"),
        _ => Exit::Other("an unsupported KVM exit"),
    }
}

/// Kicks every vCPU thread out of KVM_RUN until it has seen the stop, then joins them.
pub fn stop_and_join(threads: Vec<JoinHandle<()>>) {
    for t in threads {
        while !t.is_finished() {
            // The thread may be between checks: keep kicking until it notices.
            let _ = t.kill(kick_signal());
            std::thread::sleep(Duration::from_millis(1));
        }
        let _ = t.join();
    }
}
