//! Guest CPUID: KVM's supported set, with topology filled in and the compat profile applied.

use kvm_bindings::kvm_cpuid_entry2;

use crate::compat::{HostCompatProfile, Reg, HIDDEN_FEATURES, XSAVEERPTR};

const LEAF_FEATURES: u32 = 1;
const LEAF_EXT_TOPOLOGY: u32 = 0xb;
const LEAF_V2_EXT_TOPOLOGY: u32 = 0x1f;
const LEAF_XSAVE: u32 = 0xd;
/// Leaf 1 ECX: running under a hypervisor.
const ECX_HYPERVISOR_BIT: u32 = 31;
/// Leaf 1 ECX: OS has enabled XSAVE (mirrors CR4.OSXSAVE).
const ECX_OSXSAVE_BIT: u32 = 27;
/// Leaf 1 EDX: more than one logical processor per package.
const EDX_HTT_BIT: u32 = 28;

fn reg_mut(e: &mut kvm_cpuid_entry2, reg: Reg) -> &mut u32 {
    match reg {
        Reg::Ebx => &mut e.ebx,
        Reg::Ecx => &mut e.ecx,
        Reg::Edx => &mut e.edx,
    }
}

/// Adjusts KVM's supported CPUID for vCPU `cpu_id` of `vcpus`.
pub fn configure_cpuid(
    entries: &mut [kvm_cpuid_entry2],
    cpu_id: u8,
    vcpus: u8,
    profile: Option<&HostCompatProfile>,
) {
    for e in entries.iter_mut() {
        match e.function {
            LEAF_FEATURES => {
                // APIC ID in EBX[31:24], logical processor count in EBX[23:16].
                e.ebx =
                    (e.ebx & 0x0000_ffff) | (u32::from(cpu_id) << 24) | (u32::from(vcpus) << 16);
                e.ecx |= 1 << ECX_HYPERVISOR_BIT;
                if vcpus > 1 {
                    e.edx |= 1 << EDX_HTT_BIT;
                } else {
                    e.edx &= !(1 << EDX_HTT_BIT);
                }
            }
            LEAF_EXT_TOPOLOGY | LEAF_V2_EXT_TOPOLOGY => {
                // The x2APIC ID of this CPU, whatever the level.
                e.edx = u32::from(cpu_id);
            }
            _ => {}
        }
    }
    if profile.is_some() {
        apply_compat(entries);
    }
}

fn apply_compat(entries: &mut [kvm_cpuid_entry2]) {
    for f in HIDDEN_FEATURES {
        for e in entries
            .iter_mut()
            .filter(|e| e.function == f.leaf && e.index == f.subleaf)
        {
            *reg_mut(e, f.reg) &= !(1 << f.bit);
        }
    }
    for e in entries.iter_mut() {
        if e.function == LEAF_FEATURES {
            e.ecx &= !(1 << ECX_OSXSAVE_BIT);
        }
        // With XSAVE hidden, its enumeration leaf describes nothing.
        if e.function == LEAF_XSAVE {
            e.eax = 0;
            e.ebx = 0;
            e.ecx = 0;
            e.edx = 0;
        }
        let (leaf, reg, bit) = XSAVEERPTR;
        if e.function == leaf {
            *reg_mut(e, reg) |= 1 << bit;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            eax: u32::MAX,
            ebx: u32::MAX,
            ecx: u32::MAX,
            edx: u32::MAX,
            ..Default::default()
        }
    }

    fn sample() -> Vec<kvm_cpuid_entry2> {
        vec![
            entry(1, 0),
            entry(7, 0),
            entry(0xb, 0),
            entry(0xb, 1),
            entry(0xd, 0),
            entry(0xd, 1),
            entry(0x8000_0001, 0),
            kvm_cpuid_entry2 {
                function: 0x8000_0008,
                ..Default::default()
            },
        ]
    }

    fn find(v: &[kvm_cpuid_entry2], f: u32, i: u32) -> kvm_cpuid_entry2 {
        *v.iter().find(|e| e.function == f && e.index == i).unwrap()
    }

    #[test]
    fn topology_is_per_vcpu() {
        let mut v = sample();
        configure_cpuid(&mut v, 3, 4, None);
        let l1 = find(&v, 1, 0);
        assert_eq!(l1.ebx >> 24, 3);
        assert_eq!((l1.ebx >> 16) & 0xff, 4);
        assert_ne!(l1.ecx & (1 << ECX_HYPERVISOR_BIT), 0);
        assert_ne!(l1.edx & (1 << EDX_HTT_BIT), 0);
        assert_eq!(find(&v, 0xb, 1).edx, 3);
        // Without the profile, features are left alone.
        assert_ne!(l1.ecx & (1 << 26), 0);
        assert_eq!(find(&v, 0xd, 0).eax, u32::MAX);
    }

    #[test]
    fn single_vcpu_has_no_htt() {
        let mut v = sample();
        configure_cpuid(&mut v, 0, 1, None);
        assert_eq!(find(&v, 1, 0).edx & (1 << EDX_HTT_BIT), 0);
    }

    #[test]
    fn compat_profile_hides_features_and_keeps_xsaveerptr() {
        let mut v = sample();
        let p = HostCompatProfile::emulated_kernel_mode();
        configure_cpuid(&mut v, 0, 1, Some(&p));
        let l1 = find(&v, 1, 0);
        for bit in [26, 27, 28, 23, 17, 30, 25, 1, 22, 13] {
            assert_eq!(l1.ecx & (1 << bit), 0, "leaf 1 ecx bit {bit}");
        }
        let l7 = find(&v, 7, 0);
        for bit in [0, 3, 5, 7, 8, 9, 10, 18, 20, 29] {
            assert_eq!(l7.ebx & (1 << bit), 0, "leaf 7 ebx bit {bit}");
        }
        assert_eq!(l7.ecx & (1 << 2 | 1 << 3 | 1 << 22), 0);
        assert_eq!(l7.edx & (1 << 4), 0);
        assert_eq!(find(&v, 0xd, 0).eax, 0);
        assert_eq!(find(&v, 0x8000_0001, 0).ecx & (1 << 5), 0);
        assert_eq!(find(&v, 0x8000_0008, 0).ebx & (1 << 2), 1 << 2);
        // Unrelated bits survive (SSE2 in leaf 1 EDX bit 26).
        assert_ne!(l1.edx & (1 << 26), 0);
    }
}
