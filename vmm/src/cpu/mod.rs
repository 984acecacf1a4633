//! vCPU configuration: CPUID, MSRs, local APIC, and the boot CPU's registers.

pub mod cpuid;
pub mod msr;
pub mod regs;

use kvm_bindings::{kvm_lapic_state, CpuId, Msrs, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::{Kvm, VcpuFd};

use crate::compat::HostCompatProfile;

/// Errors configuring a vCPU.
#[derive(Debug, thiserror::Error)]
pub enum CpuError {
    #[error("cannot read KVM's supported CPUID: {0}")]
    SupportedCpuid(kvm_ioctls::Error),
    #[error("cannot read KVM's MSR list: {0}")]
    MsrList(kvm_ioctls::Error),
    #[error("cannot set CPUID on vCPU {0}: {1}")]
    SetCpuid(u8, kvm_ioctls::Error),
    #[error("cannot set MSRs on vCPU {0}: {1}")]
    SetMsrs(u8, String),
    #[error("cannot set up the local APIC of vCPU {0}: {1}")]
    Lapic(u8, kvm_ioctls::Error),
    #[error("cannot set boot registers on vCPU {0}: {1}")]
    Regs(u8, kvm_ioctls::Error),
}

/// What every vCPU of one VM shares: KVM's CPUID and MSR lists, the topology, the profile.
pub struct CpuTemplate {
    supported_cpuid: CpuId,
    msrs: Vec<u32>,
    vcpus: u8,
    profile: Option<HostCompatProfile>,
}

impl CpuTemplate {
    /// Queries KVM once for everything the vCPUs need.
    pub fn new(kvm: &Kvm, vcpus: u8, profile: Option<HostCompatProfile>) -> Result<Self, CpuError> {
        let supported_cpuid = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(CpuError::SupportedCpuid)?;
        let msrs = kvm
            .get_msr_index_list()
            .map_err(CpuError::MsrList)?
            .as_slice()
            .to_vec();
        Ok(Self {
            supported_cpuid,
            msrs,
            vcpus,
            profile,
        })
    }

    /// KVM_GET_MSR_INDEX_LIST: the MSRs KVM can save and restore.
    pub fn msr_indices(&self) -> &[u32] {
        &self.msrs
    }

    /// The CPUID vCPU `id` gets: KVM's supported set, shaped by the topology and profile.
    pub fn cpuid(&self, id: u8) -> CpuId {
        let mut cpuid = self.supported_cpuid.clone();
        cpuid::configure_cpuid(cpuid.as_mut_slice(), id, self.vcpus, self.profile.as_ref());
        cpuid
    }

    /// Configures vCPU `id`; `boot_entry` is set for the boot CPU only (the others wait for
    /// the INIT/SIPI the guest sends through the in-kernel APIC).
    pub fn configure(
        &self,
        vcpu: &VcpuFd,
        id: u8,
        boot_entry: Option<u64>,
    ) -> Result<(), CpuError> {
        vcpu.set_cpuid2(&self.cpuid(id))
            .map_err(|e| CpuError::SetCpuid(id, e))?;

        let entries = msr::boot_msrs(&self.msrs);
        let msrs =
            Msrs::from_entries(&entries).map_err(|e| CpuError::SetMsrs(id, e.to_string()))?;
        let set = vcpu
            .set_msrs(&msrs)
            .map_err(|e| CpuError::SetMsrs(id, e.to_string()))?;
        if set != entries.len() {
            let failed = entries[set].index;
            return Err(CpuError::SetMsrs(
                id,
                format!("KVM rejected MSR {failed:#x}"),
            ));
        }

        let mut lapic = vcpu.get_lapic().map_err(|e| CpuError::Lapic(id, e))?;
        set_lint_modes(&mut lapic);
        vcpu.set_lapic(&lapic).map_err(|e| CpuError::Lapic(id, e))?;

        if let Some(entry) = boot_entry {
            vcpu.set_regs(&regs::boot_regs(entry))
                .map_err(|e| CpuError::Regs(id, e))?;
            let sregs = vcpu.get_sregs().map_err(|e| CpuError::Regs(id, e))?;
            vcpu.set_sregs(&regs::long_mode_sregs(sregs))
                .map_err(|e| CpuError::Regs(id, e))?;
            vcpu.set_fpu(&regs::boot_fpu())
                .map_err(|e| CpuError::Regs(id, e))?;
        }
        Ok(())
    }
}

const APIC_LVT_LINT0: usize = 0x350;
const APIC_LVT_LINT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

fn lapic_reg(l: &kvm_lapic_state, off: usize) -> u32 {
    let b = &l.regs[off..off + 4];
    u32::from_le_bytes([b[0] as u8, b[1] as u8, b[2] as u8, b[3] as u8])
}

fn set_lapic_reg(l: &mut kvm_lapic_state, off: usize, v: u32) {
    for (i, byte) in v.to_le_bytes().iter().enumerate() {
        l.regs[off + i] = *byte as _;
    }
}

/// LINT0 delivers ExtINT (the PIC), LINT1 delivers NMI, as on a PC.
fn set_lint_modes(l: &mut kvm_lapic_state) {
    let set_mode = |v: u32, mode: u32| (v & !0x700) | (mode << 8);
    let lint0 = lapic_reg(l, APIC_LVT_LINT0);
    set_lapic_reg(l, APIC_LVT_LINT0, set_mode(lint0, APIC_MODE_EXTINT));
    let lint1 = lapic_reg(l, APIC_LVT_LINT1);
    set_lapic_reg(l, APIC_LVT_LINT1, set_mode(lint1, APIC_MODE_NMI));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lint_delivery_modes() {
        let mut l = kvm_lapic_state::default();
        set_lapic_reg(&mut l, APIC_LVT_LINT0, 0x0001_0000);
        set_lint_modes(&mut l);
        assert_eq!(lapic_reg(&l, APIC_LVT_LINT0), 0x0001_0700);
        assert_eq!(lapic_reg(&l, APIC_LVT_LINT1), 0x0000_0400);
    }
}
