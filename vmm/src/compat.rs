//! The host-compatibility profile.
//!
//! Some development and CI hosts run KVM without hardware virtualization: guest user mode
//! runs natively, guest kernel mode is run by KVM's instruction emulator, which lacks XSAVE,
//! x87, SMAP's CLAC/STAC, POPCNT and more (see `shared/HOST-KVM.md`). On such hosts the
//! guest must be kept off those instructions. This profile does it in two layers: guest
//! CPUID hides the features, and the kernel command line (`noxsave clearcpuid=...`) keeps
//! the kernel's own feature view in line (CPUID alone did not stop the kernel using XSAVE
//! there). The guest-kernel patches in `guest-kernel-config/patches` cover what neither can.
//!
//! The profile is chosen automatically when the host CPU shows no `vmx`/`svm` flag; on real
//! hardware-virtualization hosts it stays off, so those guests see the full CPU.

use crate::config::CompatSetting;

/// CPUID register a feature bit lives in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reg {
    Ebx,
    Ecx,
    Edx,
}

/// A CPU feature the emulating hosts cannot run in guest kernel mode.
#[derive(Clone, Copy, Debug)]
pub struct HiddenFeature {
    /// The kernel's name for it, as `clearcpuid=` takes it.
    pub name: &'static str,
    /// CPUID leaf, subleaf, register and bit.
    pub leaf: u32,
    pub subleaf: u32,
    pub reg: Reg,
    pub bit: u32,
}

const fn hide(name: &'static str, leaf: u32, subleaf: u32, reg: Reg, bit: u32) -> HiddenFeature {
    HiddenFeature {
        name,
        leaf,
        subleaf,
        reg,
        bit,
    }
}

/// Features hidden by the profile. Each was either seen failing in the emulator or is an
/// instruction-set extension the kernel patches in through alternatives, which the emulator
/// does not decode.
pub const HIDDEN_FEATURES: &[HiddenFeature] = &[
    // XSAVE family: FPU init dies on XSAVE/XRSTOR.
    hide("xsave", 1, 0, Reg::Ecx, 26),
    hide("avx", 1, 0, Reg::Ecx, 28),
    hide("avx2", 7, 0, Reg::Ebx, 5),
    hide("xsaveopt", 0xd, 1, Reg::Ecx, 0),
    // CMPXCHG16B: SLUB's lockless freelist (`lock cmpxchg16b`) when present.
    hide("cx16", 1, 0, Reg::Ecx, 13),
    // POPCNT, patched in by alternatives.
    hide("popcnt", 1, 0, Reg::Ecx, 23),
    // SMAP: CLAC/STAC in the entry code. SMEP/UMIP/PKU toggle CR4 paths the emulator lacks.
    hide("smap", 7, 0, Reg::Ebx, 20),
    hide("smep", 7, 0, Reg::Ebx, 7),
    hide("umip", 7, 0, Reg::Ecx, 2),
    hide("pku", 7, 0, Reg::Ecx, 3),
    // Instructions the kernel uses when present (alternatives, string ops, TLB flushes).
    hide("fsgsbase", 7, 0, Reg::Ebx, 0),
    hide("rdpid", 7, 0, Reg::Ecx, 22),
    hide("bmi1", 7, 0, Reg::Ebx, 3),
    hide("bmi2", 7, 0, Reg::Ebx, 8),
    hide("erms", 7, 0, Reg::Ebx, 9),
    hide("fsrm", 7, 0, Reg::Edx, 4),
    hide("invpcid", 7, 0, Reg::Ebx, 10),
    hide("pcid", 1, 0, Reg::Ecx, 17),
    hide("rdrand", 1, 0, Reg::Ecx, 30),
    hide("rdseed", 7, 0, Reg::Ebx, 18),
    hide("sha_ni", 7, 0, Reg::Ebx, 29),
    hide("aes", 1, 0, Reg::Ecx, 25),
    hide("pclmulqdq", 1, 0, Reg::Ecx, 1),
    hide("movbe", 1, 0, Reg::Ecx, 22),
    hide("abm", 0x8000_0001, 0, Reg::Ecx, 5),
];

/// Features the kernel command line clears too (`clearcpuid=`), beyond hiding them in CPUID:
/// those seen killing a boot in the emulator. The kernel reads at most 127 characters of the
/// list, so it holds only these.
pub const CMDLINE_CLEARED: &[&str] = &["xsave", "cx16", "popcnt", "smap"];

/// Guest user mode runs natively here and sees the host's CPUID and XCR0, so glibc picks
/// AVX/AVX-512 string functions; but the guest kernel can only switch x87/SSE state (XSAVE
/// is not emulated), so upper vector state leaks between guest processes and corrupts them.
/// This environment variable (the kernel hands `NAME=value` words to init, and the agent
/// passes it on to container processes) keeps glibc on SSE code.
pub const GLIBC_TUNABLES: &str = "GLIBC_TUNABLES=glibc.cpu.hwcaps=-AVX,-AVX2,-AVX512F,-AVX512VL,-AVX512BW,-AVX512DQ,-AVX512CD,-AVX_Fast_Unaligned_Load,-EVEX";

/// CPUID 0x8000_0008 EBX bit 2 (XSAVEERPTR / "FXSAVE leak fixed"). Without it, Linux on AMD
/// runs an x87 workaround (FNCLEX; EMMS; FILD) on every FPU restore, which the emulator
/// cannot run. The hosts' CPUs have it; the profile makes sure the guest sees it.
pub const XSAVEERPTR: (u32, Reg, u32) = (0x8000_0008, Reg::Ebx, 2);

/// The resolved profile: what the builder applies to CPUID and the command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostCompatProfile {
    /// Name shown in logs.
    pub name: &'static str,
}

impl HostCompatProfile {
    /// The profile for hosts whose KVM emulates guest kernel mode.
    pub fn emulated_kernel_mode() -> Self {
        Self {
            name: "emulated-kernel-mode",
        }
    }

    /// Command-line switches to append to the guest kernel command line. `tsc_khz` (from
    /// KVM_GET_TSC_KHZ) gives the guest its TSC rate: calibrating it against the PIT fails
    /// under the emulator, which leaves the guest on the 10 ms jiffies clock.
    pub fn cmdline(&self, tsc_khz: Option<u32>) -> String {
        let mut parts = vec![format!("clearcpuid={}", CMDLINE_CLEARED.join(","))];
        if let Some(khz) = tsc_khz.filter(|k| *k > 0) {
            parts.push(format!("tsc_early_khz={khz} tsc=reliable"));
        }
        parts.push(GLIBC_TUNABLES.to_string());
        parts.join(" ")
    }
}

/// True if `/proc/cpuinfo` text lists `vmx` or `svm` among the flags.
pub fn host_has_hw_virt(cpuinfo: &str) -> bool {
    cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .flat_map(|l| {
            l.split_once(':')
                .map(|(_, f)| f)
                .unwrap_or("")
                .split_whitespace()
        })
        .any(|f| f == "vmx" || f == "svm")
}

/// Picks the profile for a setting, given the host's `/proc/cpuinfo`.
pub fn resolve(setting: CompatSetting, cpuinfo: &str) -> Option<HostCompatProfile> {
    let on = match setting {
        CompatSetting::On => true,
        CompatSetting::Off => false,
        CompatSetting::Auto => !host_has_hw_virt(cpuinfo),
    };
    on.then(HostCompatProfile::emulated_kernel_mode)
}

/// Reads `/proc/cpuinfo` and picks the profile.
pub fn resolve_for_host(setting: CompatSetting) -> Option<HostCompatProfile> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    resolve(setting, &cpuinfo)
}

#[cfg(test)]
mod tests {
    use super::*;

    const INTEL: &str = "processor\t: 0\nflags\t\t: fpu vme de pse vmx ept\n";
    const AMD: &str = "processor\t: 0\nflags\t\t: fpu svm npt\n";
    const NO_VIRT: &str = "processor\t: 0\nflags\t\t: fpu sse sse2 xsave\nvmx flags\t: none\n";

    #[test]
    fn auto_follows_hardware_virtualization() {
        assert!(host_has_hw_virt(INTEL));
        assert!(host_has_hw_virt(AMD));
        assert!(!host_has_hw_virt(NO_VIRT));
        assert_eq!(resolve(CompatSetting::Auto, INTEL), None);
        assert_eq!(resolve(CompatSetting::Auto, AMD), None);
        assert!(resolve(CompatSetting::Auto, NO_VIRT).is_some());
    }

    #[test]
    fn forced_settings_win() {
        assert!(resolve(CompatSetting::On, INTEL).is_some());
        assert_eq!(resolve(CompatSetting::Off, NO_VIRT), None);
    }

    #[test]
    fn cmdline_clears_the_fatal_features_within_the_kernel_limit() {
        let c = HostCompatProfile::emulated_kernel_mode().cmdline(Some(2_596_124));
        let list = c
            .split_whitespace()
            .find_map(|w| w.strip_prefix("clearcpuid="))
            .unwrap();
        assert!(
            list.len() <= 127,
            "the kernel ignores clearcpuid= past 127 chars"
        );
        for f in ["xsave", "smap", "popcnt", "cx16"] {
            assert!(list.split(',').any(|n| n == f), "{f} in {list}");
            assert!(
                HIDDEN_FEATURES.iter().any(|h| h.name == f),
                "{f} also hidden in CPUID"
            );
        }
        assert!(c.contains("tsc_early_khz=2596124 tsc=reliable"), "{c}");
        assert!(c.contains("GLIBC_TUNABLES=glibc.cpu.hwcaps=-AVX,"), "{c}");
        let no_tsc = HostCompatProfile::emulated_kernel_mode().cmdline(None);
        assert!(!no_tsc.contains("tsc_early_khz"), "{no_tsc}");
    }
}
