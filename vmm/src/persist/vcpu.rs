//! One vCPU's KVM state: saved on its own thread while parked, restored into a new vCPU in
//! the order KVM needs.
//!
//! Facts from these hosts (`shared/HOST-KVM.md`, "Snapshot/restore"): the FPU goes through
//! KVM_GET/SET_XSAVE (KVM_SET_FPU would mark it unused); CPUID must be set before SREGS;
//! the guest TSC may follow the host's across a restore (writes to IA32_TSC are ignored
//! there), so an armed TSC-deadline timer is moved by the TSC jump; an IN the vCPU exited
//! for must be completed (KVM_RUN with immediate_exit) before saving, or the restored
//! guest repeats it.

use kvm_bindings::{
    kvm_cpuid_entry2, kvm_debugregs, kvm_lapic_state, kvm_mp_state, kvm_msr_entry, kvm_regs,
    kvm_sregs, kvm_vcpu_events, kvm_xcrs, kvm_xsave, CpuId, Msrs,
};
use kvm_ioctls::VcpuFd;
use serde::{Deserialize, Serialize};

/// IA32_TSC: the guest's time-stamp counter.
pub const MSR_IA32_TSC: u32 = 0x10;
/// IA32_TSC_DEADLINE: the local APIC timer's absolute TSC deadline (0 = disarmed).
pub const MSR_IA32_TSC_DEADLINE: u32 = 0x6e0;
/// KVM reports at most this many CPUID entries for our vCPUs.
const MAX_CPUID_ENTRIES: usize = kvm_bindings::KVM_MAX_CPUID_ENTRIES;

/// Errors saving or restoring a vCPU; each names the vCPU and the piece of state.
#[derive(Debug, thiserror::Error)]
pub enum VcpuStateError {
    #[error("vCPU {id}: cannot {op} its {what}: {err}")]
    Ioctl {
        id: u8,
        op: &'static str,
        what: &'static str,
        err: kvm_ioctls::Error,
    },
    #[error("vCPU {0}: KVM rejected MSR {1:#x} on restore")]
    MsrRejected(u8, u32),
    #[error("vCPU {0}: cannot build the MSR list: {1}")]
    MsrList(u8, String),
    #[error("vCPU {0}: the saved {1} is malformed")]
    Malformed(u8, &'static str),
}

/// Everything KVM holds for one vCPU.
#[derive(Debug, Serialize, Deserialize)]
pub struct VcpuState {
    pub id: u8,
    pub cpuid: Vec<kvm_cpuid_entry2>,
    pub mp_state: kvm_mp_state,
    pub regs: kvm_regs,
    pub sregs: kvm_sregs,
    pub xsave: kvm_xsave,
    pub xcrs: kvm_xcrs,
    pub debugregs: kvm_debugregs,
    pub lapic: kvm_lapic_state,
    /// Every MSR of KVM_GET_MSR_INDEX_LIST that KVM would read back.
    pub msrs: Vec<kvm_msr_entry>,
    pub events: kvm_vcpu_events,
}

struct Ctx(u8);

impl Ctx {
    fn err(
        &self,
        op: &'static str,
        what: &'static str,
    ) -> impl FnOnce(kvm_ioctls::Error) -> VcpuStateError {
        let id = self.0;
        move |err| VcpuStateError::Ioctl { id, op, what, err }
    }
}

/// Completes an I/O or MMIO read the vCPU last exited for, without entering the guest:
/// KVM finishes the pending instruction and returns EINTR at once. Call it on the vCPU's
/// own thread (KVM_RUN), before `save`.
pub fn finish_pending_io(fd: &mut VcpuFd) {
    fd.set_kvm_immediate_exit(1);
    // EINTR is the expected answer; any exit here would be the guest's next, which
    // immediate_exit prevents.
    let _ = fd.run();
    fd.set_kvm_immediate_exit(0);
}

/// Reads the vCPU's whole state. `msr_indices` is KVM_GET_MSR_INDEX_LIST.
pub fn save(fd: &VcpuFd, id: u8, msr_indices: &[u32]) -> Result<VcpuState, VcpuStateError> {
    let c = Ctx(id);
    let cpuid = fd
        .get_cpuid2(MAX_CPUID_ENTRIES)
        .map_err(c.err("read", "CPUID"))?;
    Ok(VcpuState {
        id,
        cpuid: cpuid.as_slice().to_vec(),
        mp_state: fd.get_mp_state().map_err(c.err("read", "MP state"))?,
        regs: fd.get_regs().map_err(c.err("read", "registers"))?,
        sregs: fd.get_sregs().map_err(c.err("read", "special registers"))?,
        xsave: fd.get_xsave().map_err(c.err("read", "XSAVE area"))?,
        xcrs: fd.get_xcrs().map_err(c.err("read", "XCRs"))?,
        debugregs: fd
            .get_debug_regs()
            .map_err(c.err("read", "debug registers"))?,
        lapic: fd.get_lapic().map_err(c.err("read", "local APIC"))?,
        msrs: read_msrs(fd, id, msr_indices)?,
        events: fd.get_vcpu_events().map_err(c.err("read", "events"))?,
    })
}

/// Reads every MSR in `indices` that KVM can read; unreadable ones (KVM stops at the first
/// it cannot read) are left out.
fn read_msrs(fd: &VcpuFd, id: u8, indices: &[u32]) -> Result<Vec<kvm_msr_entry>, VcpuStateError> {
    let mut out = Vec::with_capacity(indices.len());
    let mut rest: &[u32] = indices;
    while !rest.is_empty() {
        let entries: Vec<kvm_msr_entry> = rest
            .iter()
            .map(|&index| kvm_msr_entry {
                index,
                ..Default::default()
            })
            .collect();
        let mut msrs =
            Msrs::from_entries(&entries).map_err(|e| VcpuStateError::MsrList(id, e.to_string()))?;
        let n = fd
            .get_msrs(&mut msrs)
            .map_err(Ctx(id).err("read", "MSRs"))?;
        out.extend_from_slice(&msrs.as_slice()[..n.min(rest.len())]);
        if n < rest.len() {
            log::debug!("vCPU {id}: MSR {:#x} is not readable; not saved", rest[n]);
        }
        rest = rest.get(n + 1..).unwrap_or_default();
    }
    Ok(out)
}

fn set_msrs(fd: &VcpuFd, id: u8, entries: &[kvm_msr_entry]) -> Result<(), VcpuStateError> {
    let msrs =
        Msrs::from_entries(entries).map_err(|e| VcpuStateError::MsrList(id, e.to_string()))?;
    let n = fd.set_msrs(&msrs).map_err(Ctx(id).err("set", "MSRs"))?;
    match entries.get(n) {
        Some(e) => Err(VcpuStateError::MsrRejected(id, e.index)),
        None => Ok(()),
    }
}

fn read_msr(fd: &VcpuFd, id: u8, index: u32) -> Result<u64, VcpuStateError> {
    let entry = kvm_msr_entry {
        index,
        ..Default::default()
    };
    let mut msrs =
        Msrs::from_entries(&[entry]).map_err(|e| VcpuStateError::MsrList(id, e.to_string()))?;
    match fd
        .get_msrs(&mut msrs)
        .map_err(Ctx(id).err("read", "MSRs"))?
    {
        1 => Ok(msrs.as_slice()[0].data),
        _ => Err(VcpuStateError::MsrRejected(id, index)),
    }
}

/// The TSC deadline to arm after a restore, so the timer fires as long after the restore
/// as it was due after the save: `tsc_now + max(0, deadline - tsc_at_save)`; a disarmed
/// timer (0) stays disarmed.
pub fn moved_deadline(saved_deadline: u64, saved_tsc: u64, tsc_now: u64) -> u64 {
    if saved_deadline == 0 {
        return 0;
    }
    tsc_now.saturating_add(saved_deadline.saturating_sub(saved_tsc))
}

/// Sets `state` into a freshly created vCPU, in the order KVM needs: CPUID first (before
/// SREGS), the LAPIC before the MSRs (so a TSC deadline lands in deadline mode), events
/// last; then the TSC-deadline timer is moved by however far the TSC jumped.
pub fn restore(fd: &VcpuFd, state: &VcpuState) -> Result<(), VcpuStateError> {
    let id = state.id;
    let c = Ctx(id);
    let cpuid =
        CpuId::from_entries(&state.cpuid).map_err(|_| VcpuStateError::Malformed(id, "CPUID"))?;
    fd.set_cpuid2(&cpuid).map_err(c.err("set", "CPUID"))?;
    fd.set_mp_state(state.mp_state)
        .map_err(c.err("set", "MP state"))?;
    fd.set_regs(&state.regs)
        .map_err(c.err("set", "registers"))?;
    fd.set_sregs(&state.sregs)
        .map_err(c.err("set", "special registers"))?;
    // SAFETY: KVM reads at most a `kvm_xsave` (4096 bytes) here: the VMM never asks for
    // dynamically enabled XSAVE features (ARCH_REQ_XCOMP_GUEST_PERM), so the guest's XSAVE
    // state fits the legacy KVM_SET_XSAVE buffer.
    unsafe { fd.set_xsave(&state.xsave) }.map_err(c.err("set", "XSAVE area"))?;
    fd.set_xcrs(&state.xcrs).map_err(c.err("set", "XCRs"))?;
    fd.set_debug_regs(&state.debugregs)
        .map_err(c.err("set", "debug registers"))?;
    fd.set_lapic(&state.lapic)
        .map_err(c.err("set", "local APIC"))?;
    let (deadline, others): (Vec<_>, Vec<_>) = state
        .msrs
        .iter()
        .partition(|e| e.index == MSR_IA32_TSC_DEADLINE);
    set_msrs(fd, id, &others)?;
    if let (Some(d), Some(tsc)) = (deadline.first(), saved_msr(state, MSR_IA32_TSC)) {
        let now = read_msr(fd, id, MSR_IA32_TSC)?;
        let entry = kvm_msr_entry {
            index: MSR_IA32_TSC_DEADLINE,
            data: moved_deadline(d.data, tsc, now),
            ..Default::default()
        };
        set_msrs(fd, id, &[entry])?;
    }
    fd.set_vcpu_events(&state.events)
        .map_err(c.err("set", "events"))?;
    Ok(())
}

fn saved_msr(state: &VcpuState, index: u32) -> Option<u64> {
    state.msrs.iter().find(|e| e.index == index).map(|e| e.data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadline_keeps_its_distance_from_the_tsc() {
        // Due 500 ticks after the save; the TSC jumped by a million meanwhile.
        assert_eq!(moved_deadline(10_500, 10_000, 1_010_000), 1_010_500);
        // Already overdue at the save: fires at once after the restore.
        assert_eq!(moved_deadline(9_000, 10_000, 1_010_000), 1_010_000);
        // Disarmed stays disarmed.
        assert_eq!(moved_deadline(0, 10_000, 1_010_000), 0);
        // A TSC that was restored (real KVM: host writes to IA32_TSC take effect).
        assert_eq!(moved_deadline(10_500, 10_000, 10_002), 10_502);
        assert_eq!(moved_deadline(u64::MAX, 0, 5), u64::MAX);
    }

    #[test]
    fn state_round_trips_through_json() {
        let mut s = VcpuState {
            id: 1,
            cpuid: vec![kvm_cpuid_entry2 {
                function: 1,
                eax: 7,
                ..Default::default()
            }],
            mp_state: kvm_mp_state { mp_state: 3 },
            regs: kvm_regs {
                rip: 0x20_0000,
                ..Default::default()
            },
            sregs: Default::default(),
            xsave: Default::default(),
            xcrs: Default::default(),
            debugregs: Default::default(),
            lapic: Default::default(),
            msrs: vec![kvm_msr_entry {
                index: MSR_IA32_TSC,
                data: 42,
                ..Default::default()
            }],
            events: Default::default(),
        };
        s.xsave.region[5] = 0xdead_beef;
        s.lapic.regs[0x20] = 3;
        let text = serde_json::to_string(&s).unwrap();
        let back: VcpuState = serde_json::from_str(&text).unwrap();
        assert_eq!(back.regs.rip, 0x20_0000);
        assert_eq!(back.xsave.region[5], 0xdead_beef);
        assert_eq!(back.lapic.regs[0x20], 3);
        assert_eq!(saved_msr(&back, MSR_IA32_TSC), Some(42));
        assert_eq!(back.cpuid[0].eax, 7);
        assert_eq!(back.mp_state.mp_state, 3);
    }
}
