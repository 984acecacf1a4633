//! Resizing in place: what a pod's VM must have for its containers' limits
//! ([`pod_needs`], the VM-sizing rules of `oci::translate::vm` summed over the pod),
//! whether the VM it has is enough ([`fits`]), and how an update's limits combine with
//! those in force ([`merge`]).

use oci_spec::runtime::{LinuxCpu, LinuxMemory, LinuxPids, LinuxResources};

use crate::oci::translate::vm::{cpu_micros, limit_mib};
use crate::oci::translate::{TranslateError, GUEST_OVERHEAD_MIB};

/// A VM's size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VmSize {
    pub vcpus: u32,
    /// 0 in a need: no memory limit asks for any.
    pub mem_mib: u64,
}

impl std::fmt::Display for VmSize {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = if self.vcpus == 1 { "" } else { "s" };
        write!(f, "{} vCPU{s}", self.vcpus)?;
        if self.mem_mib > 0 {
            write!(f, " and {} MiB", self.mem_mib)?;
        }
        Ok(())
    }
}

/// Why an update cannot be made; one line each.
#[derive(Debug, thiserror::Error)]
pub enum ResizeError {
    #[error("the VM has {have}; this update needs {need}, and growing a running VM is not supported yet")]
    TooSmall { have: VmSize, need: VmSize },
    #[error(transparent)]
    Limits(#[from] TranslateError),
}

/// The smallest VM for a pod whose containers have these limits, by the rules that size a
/// VM at create: CPUs from each quota/period (or cpuset size), summed and rounded up,
/// clamped to `max_vcpus` (the host's), at least 1; memory the sum of the memory limits
/// plus the guest's overhead (0 when no container has a limit).
pub fn pod_needs<'a>(
    limits: impl IntoIterator<Item = &'a LinuxResources>,
    max_vcpus: u32,
) -> Result<VmSize, TranslateError> {
    let (mut micros, mut mem_mib) = (0u128, 0u64);
    for r in limits {
        if let Some(cpu) = r.cpu() {
            micros += u128::from(cpu_micros(cpu)?.unwrap_or(0));
        }
        if let Some(l) = r.memory().as_ref().and_then(LinuxMemory::limit) {
            mem_mib = mem_mib.saturating_add(limit_mib(l)?.unwrap_or(0));
        }
    }
    let vcpus = micros
        .div_ceil(1_000_000)
        .clamp(1, u128::from(max_vcpus.max(1))) as u32;
    let mem_mib = match mem_mib {
        0 => 0,
        m => m.saturating_add(GUEST_OVERHEAD_MIB),
    };
    Ok(VmSize { vcpus, mem_mib })
}

/// Whether a VM of size `have` meets `need`.
pub fn fits(have: VmSize, need: VmSize) -> Result<(), ResizeError> {
    if need.vcpus <= have.vcpus && need.mem_mib <= have.mem_mib {
        Ok(())
    } else {
        Err(ResizeError::TooSmall { have, need })
    }
}

/// The limits in force after `update` is applied over `old`: what the update sets (0
/// leaves a limit, as runc reads it), the rest as it was.
pub fn merge(old: &LinuxResources, update: &LinuxResources) -> LinuxResources {
    fn pick<T: PartialEq + Default>(new: Option<T>, old: Option<T>) -> Option<T> {
        new.filter(|v| *v != T::default()).or(old)
    }
    let mut out = old.clone();
    if let Some(m) = update.memory() {
        let o = old.memory().unwrap_or_default();
        let mut n = o;
        n.set_limit(pick(m.limit(), o.limit()));
        n.set_reservation(pick(m.reservation(), o.reservation()));
        n.set_swap(pick(m.swap(), o.swap()));
        out.set_memory(Some(n));
    }
    if let Some(c) = update.cpu() {
        let o = old.cpu().clone().unwrap_or_default();
        let mut n: LinuxCpu = o.clone();
        n.set_shares(pick(c.shares(), o.shares()));
        n.set_quota(pick(c.quota(), o.quota()));
        n.set_period(pick(c.period(), o.period()));
        n.set_cpus(pick(c.cpus().clone(), o.cpus().clone()));
        n.set_mems(pick(c.mems().clone(), o.mems().clone()));
        out.set_cpu(Some(n));
    }
    if let Some(p) = update.pids().as_ref().filter(|p| p.limit() != 0) {
        let mut n = LinuxPids::default();
        n.set_limit(p.limit());
        out.set_pids(Some(n));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn res(v: serde_json::Value) -> LinuxResources {
        serde_json::from_value(v).unwrap()
    }

    fn mem(mib: i64) -> LinuxResources {
        res(serde_json::json!({"memory": {"limit": mib << 20}}))
    }

    fn cpu(quota: i64, period: u64) -> LinuxResources {
        res(serde_json::json!({"cpu": {"quota": quota, "period": period}}))
    }

    #[test]
    fn one_container_needs_what_create_would_give_it() {
        let need = |r: LinuxResources| pod_needs([&r], 8).unwrap();
        assert_eq!(
            need(mem(448)),
            VmSize {
                vcpus: 1,
                mem_mib: 448 + GUEST_OVERHEAD_MIB
            }
        );
        assert_eq!(need(cpu(150_000, 100_000)).vcpus, 2);
        assert_eq!(need(cpu(100_000, 100_000)).vcpus, 1);
        assert_eq!(
            need(cpu(-1, 100_000)),
            VmSize {
                vcpus: 1,
                mem_mib: 0
            }
        );
        assert_eq!(
            need(res(serde_json::json!({"cpu": {"cpus": "4-6"}}))).vcpus,
            3
        );
        assert_eq!(need(mem(-1)).mem_mib, 0);
        // Clamped to the host, as at create.
        assert_eq!(pod_needs([&cpu(800_000, 100_000)], 2).unwrap().vcpus, 2);
        assert!(matches!(
            pod_needs([&mem(4)], 2),
            Err(TranslateError::MemoryTooSmall(_))
        ));
        assert!(matches!(
            pod_needs([&cpu(1000, 0)], 2),
            Err(TranslateError::BadCpu { .. })
        ));
    }

    #[test]
    fn a_pod_needs_the_sum() {
        let (a, b, c) = (cpu(50_000, 100_000), cpu(60_000, 100_000), mem(100));
        let need = pod_needs([&a, &b, &c, &mem(28)], 8).unwrap();
        assert_eq!(
            need,
            VmSize {
                vcpus: 2,
                mem_mib: 128 + GUEST_OVERHEAD_MIB
            }
        );
        let half = pod_needs([&a, &cpu(25_000, 50_000)], 8).unwrap();
        assert_eq!(half.vcpus, 1, "two halves are one CPU");
    }

    #[test]
    fn fits_or_says_what_is_missing() {
        let have = VmSize {
            vcpus: 1,
            mem_mib: 288,
        };
        fits(
            have,
            VmSize {
                vcpus: 1,
                mem_mib: 288,
            },
        )
        .unwrap();
        fits(
            have,
            VmSize {
                vcpus: 1,
                mem_mib: 0,
            },
        )
        .unwrap();
        let e = fits(
            have,
            VmSize {
                vcpus: 2,
                mem_mib: 544,
            },
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "the VM has 1 vCPU and 288 MiB; this update needs 2 vCPUs and 544 MiB, \
             and growing a running VM is not supported yet"
        );
        let e = fits(
            have,
            VmSize {
                vcpus: 2,
                mem_mib: 0,
            },
        )
        .unwrap_err();
        assert!(e.to_string().contains("needs 2 vCPUs, and"), "{e}");
        assert!(fits(
            have,
            VmSize {
                vcpus: 1,
                mem_mib: 289
            }
        )
        .is_err());
    }

    #[test]
    fn merge_keeps_what_an_update_leaves_out() {
        let old = res(serde_json::json!({
            "memory": {"limit": 1i64 << 30, "swap": 1i64 << 30},
            "cpu": {"shares": 1024, "quota": 50_000, "period": 100_000},
            "pids": {"limit": 100},
            "devices": [{"allow": false, "access": "rwm"}],
        }));
        let upd = res(
            serde_json::json!({"memory": {"limit": 64i64 << 20, "swap": 0},
            "cpu": {"quota": 200_000}, "pids": {"limit": 0}}),
        );
        let m = merge(&old, &upd);
        let mm = m.memory().as_ref().unwrap();
        assert_eq!((mm.limit(), mm.swap()), (Some(64 << 20), Some(1 << 30)));
        let c = m.cpu().as_ref().unwrap();
        assert_eq!(
            (c.shares(), c.quota(), c.period()),
            (Some(1024), Some(200_000), Some(100_000))
        );
        assert_eq!(m.pids().as_ref().unwrap().limit(), 100);
        assert_eq!(m.devices(), old.devices());
        // Over nothing, an update is itself.
        let alone = merge(&LinuxResources::default(), &cpu(20_000, 100_000));
        assert_eq!(alone.cpu().as_ref().unwrap().quota(), Some(20_000));
        assert_eq!(pod_needs([&merge(&old, &upd)], 8).unwrap().vcpus, 2);
    }
}
