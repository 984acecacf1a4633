//! Pod → VM: the sandbox's `VmConfig` from the spec of the container that boots it.

use std::path::PathBuf;

use oci_spec::runtime::{LinuxCpu, Spec};
use vmm_api::config::{DiskConfig, FsConfig, SerialOutput, VmConfig, VsockConfig};

use crate::share::ShareKind;

use super::{Defaults, TranslateError, DEFAULT_MEM_MIB, GUEST_OVERHEAD_MIB, MIN_LIMIT_MIB};
use crate::oci::annotations::Annotations;

/// Kernel parameters that boot the agent from its disk (`/dev/vda`).
pub const AGENT_DISK_CMDLINE: &str = "root=/dev/vda ro rootfstype=ext4 init=/init";
/// The serial (virtio-blk GET_ID) of the guest image disk.
pub const AGENT_DISK_SERIAL: &str = "agent";
/// The serial of a container's ext4 rootfs copy ([`RootfsMode::Block`]).
pub const ROOTFS_DISK_SERIAL: &str = "rootfs";

/// Where the VM's host-side files go (inside the sandbox's state directory).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmPaths {
    /// The hybrid vsock socket (the agent is reached through it).
    pub vsock: PathBuf,
    /// The guest's serial console.
    pub console_log: PathBuf,
    /// The rootfs share's virtiofsd socket.
    pub fs_socket: PathBuf,
    /// The bind-mount share's virtiofsd socket.
    pub volumes_fs_socket: PathBuf,
    /// The container's ext4 rootfs copy, in [`RootfsMode::Block`].
    pub rootfs_disk: PathBuf,
}

/// How the first container's rootfs reaches the guest.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RootfsMode {
    /// The bundle's rootfs directory through the virtio-fs share (no copy).
    #[default]
    Share,
    /// An ext4 copy of it on virtio-blk (serial [`ROOTFS_DISK_SERIAL`]).
    Block,
}

/// Number of CPUs in a cpuset list such as `0-3,6`.
fn cpuset_count(list: &str) -> Option<u64> {
    let mut n = 0;
    for part in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        n += match part.split_once('-') {
            Some((a, b)) => b.parse::<u64>().ok()?.checked_sub(a.parse().ok()?)? + 1,
            None => part.parse::<u64>().map(|_| 1).ok()?,
        };
    }
    Some(n)
}

/// The VM's vCPUs: the annotation, else the pod's CPU quota/period from CRI, else the
/// spec's CPU limit (quota/period rounded up, or the cpuset's size); clamped to the host.
fn vcpus(spec: &Spec, ann: &Annotations, max: u8) -> Result<u8, TranslateError> {
    let max = max.max(1);
    if let Some(n) = ann.vcpus {
        return Ok(n.clamp(1, max));
    }
    if let (Some(q), Some(p)) = (ann.cri.sandbox_cpu_quota, ann.cri.sandbox_cpu_period) {
        return Ok((q as u64).div_ceil(p as u64).clamp(1, u64::from(max)) as u8);
    }
    let cpu = spec
        .linux()
        .as_ref()
        .and_then(|l| l.resources().as_ref())
        .and_then(|r| r.cpu().as_ref());
    let Some(cpu) = cpu else { return Ok(1) };
    let wanted = cpu_micros(cpu)?.map_or(1, |m| m.div_ceil(1_000_000));
    Ok(wanted.clamp(1, u64::from(max)) as u8)
}

/// The CPUs a CPU limit asks for, in millionths of a CPU: quota/period (rounded up), or
/// the cpuset's size; `None` without either. (Also how an update is sized:
/// [`crate::resize`].)
pub(crate) fn cpu_micros(cpu: &LinuxCpu) -> Result<Option<u64>, TranslateError> {
    match (cpu.quota(), cpu.period()) {
        (Some(q), Some(p)) if q > 0 => {
            if p == 0 {
                return Err(TranslateError::BadCpu {
                    quota: q,
                    period: p,
                });
            }
            let micros = (q as u128 * 1_000_000).div_ceil(u128::from(p));
            Ok(Some(u64::try_from(micros).unwrap_or(u64::MAX)))
        }
        _ => Ok(cpu
            .cpus()
            .as_deref()
            .and_then(cpuset_count)
            .map(|n| n.saturating_mul(1_000_000))),
    }
}

/// A memory limit in MiB (rounded up); `None` for no limit (-1, 0); too small an error.
pub(crate) fn limit_mib(limit: i64) -> Result<Option<u64>, TranslateError> {
    match limit {
        ..=0 => Ok(None),
        l if (l as u64) < MIN_LIMIT_MIB << 20 => Err(TranslateError::MemoryTooSmall(l)),
        l => Ok(Some((l as u64).div_ceil(1 << 20))),
    }
}

/// The VM's RAM: the annotation, else the pod's memory limit from CRI, else the spec's,
/// plus [`GUEST_OVERHEAD_MIB`].
fn mem_mib(spec: &Spec, ann: &Annotations) -> Result<u64, TranslateError> {
    if let Some(m) = ann.mem_mib {
        if m.saturating_mul(1 << 20) < vmm_api::config::MIN_MEM_BYTES {
            return Err(TranslateError::GuestMemoryTooSmall(m));
        }
        return Ok(m);
    }
    let limit = ann.cri.sandbox_memory.or_else(|| {
        spec.linux()
            .as_ref()
            .and_then(|l| l.resources().as_ref())
            .and_then(|r| r.memory().as_ref())
            .and_then(|m| m.limit())
    });
    // -1 (and 0) mean unlimited.
    match limit.map(limit_mib).transpose()?.flatten() {
        None => Ok(DEFAULT_MEM_MIB),
        Some(mib) => Ok(mib + GUEST_OVERHEAD_MIB),
    }
}

/// The pod's network namespace: the path of the spec's `network` namespace entry. `None`
/// when the spec asks for a new, empty netns (`--network none`) or for none at all (host
/// networking): the guest then has loopback only, since a VM cannot share the host's
/// network stack.
pub fn pod_netns(spec: &Spec) -> Option<PathBuf> {
    spec.linux()
        .as_ref()?
        .namespaces()
        .as_ref()?
        .iter()
        .find(|n| n.typ() == oci_spec::runtime::LinuxNamespaceType::Network)?
        .path()
        .clone()
}

/// The sandbox's VM: vCPUs from the CPU quota/period (rounded up) or the cpuset size,
/// clamped to the host; RAM = memory limit + [`GUEST_OVERHEAD_MIB`]; the guest image as
/// the first disk; the rootfs copy as a second in [`RootfsMode::Block`]; the vsock device
/// for the agent and the virtio-fs device for the share.
pub fn vm_config(
    spec: &Spec,
    ann: &Annotations,
    defaults: &Defaults,
    paths: &VmPaths,
) -> Result<VmConfig, TranslateError> {
    // The spec's own problems first, then the host's.
    crate::oci::validate::spec(spec)?;
    let vcpus = vcpus(spec, ann, defaults.max_vcpus)?;
    let mem_mib = mem_mib(spec, ann)?;
    let mode = ann.rootfs;
    let params = ann.kernel_params.as_deref();
    let kernel = ann
        .kernel
        .clone()
        .or_else(|| defaults.kernel.clone())
        .ok_or(TranslateError::NoKernel)?;
    let agent_disk = ann
        .agent_disk
        .clone()
        .or_else(|| defaults.agent_disk.clone());
    let initrd = match agent_disk {
        Some(_) => None,
        None => Some(
            ann.initrd
                .clone()
                .or_else(|| defaults.initrd.clone())
                .ok_or(TranslateError::NoInitrd)?,
        ),
    };

    let mut vm = VmConfig::new(kernel);
    vm.initrd = initrd;
    let boot_params = agent_disk.as_ref().map(|_| AGENT_DISK_CMDLINE);
    let extra: Vec<&str> = boot_params.into_iter().chain(params).collect();
    if !extra.is_empty() {
        vm.cmdline = Some(format!(
            "{} {}",
            vmm_api::config::DEFAULT_CMDLINE,
            extra.join(" ")
        ));
    }
    // The guest image must be /dev/vda (the kernel's root=); other disks are found by serial.
    if let Some(d) = &agent_disk {
        vm.disks.push(DiskConfig {
            path: d.clone(),
            read_only: true,
            id: Some(AGENT_DISK_SERIAL.into()),
        });
    }
    if mode == RootfsMode::Block {
        // The container's own copy, attached read-write even for a read-only root: the
        // agent creates the spec's mount points in it, then makes the container's view of
        // `/` read-only, as runc does.
        vm.disks.push(DiskConfig {
            path: paths.rootfs_disk.clone(),
            read_only: false,
            id: Some(ROOTFS_DISK_SERIAL.into()),
        });
    }
    vm.vcpus = vcpus;
    vm.mem_mib = mem_mib;
    vm.serial = SerialOutput::File(paths.console_log.clone());
    vm.compat_profile = ann.compat;
    vm.vsock = Some(VsockConfig {
        guest_cid: 3,
        uds_path: paths.vsock.clone(),
    });
    for kind in ShareKind::ALL {
        let socket = match kind {
            ShareKind::Rootfs => &paths.fs_socket,
            ShareKind::Volumes => &paths.volumes_fs_socket,
        };
        vm.fs.push(FsConfig::new(socket, kind.tag()));
    }
    // Whatever the VMM would refuse is the spec's error, here, rather than the VMM
    // process's after the sandbox's directories exist.
    vm.validate()
        .map_err(|e| TranslateError::VmConfig(e.to_string()))?;
    Ok(vm)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::oci::annotations::{
        AGENT_DISK as ANN_AGENT_DISK, COMPAT as ANN_COMPAT, INITRD as ANN_INITRD,
        KERNEL as ANN_KERNEL, KERNEL_PARAMS as ANN_KERNEL_PARAMS, MEM_MIB as ANN_MEM_MIB,
        ROOTFS as ANN_ROOTFS, VCPUS as ANN_VCPUS,
    };
    use crate::oci::translate::test_specs::spec;
    use vmm_api::config::CompatSetting;

    /// The VM and rootfs mode of `s` (its annotations parsed first, as planning does).
    fn vm_config(
        s: &Spec,
        d: &Defaults,
        p: &VmPaths,
    ) -> Result<(VmConfig, RootfsMode), TranslateError> {
        let ann = Annotations::parse(s)?;
        super::vm_config(s, &ann, d, p).map(|vm| (vm, ann.rootfs))
    }

    fn defaults() -> Defaults {
        Defaults {
            kernel: Some("/k/vmlinux".into()),
            initrd: Some("/k/agent.cpio".into()),
            agent_disk: None,
            max_vcpus: 2,
        }
    }

    fn paths() -> VmPaths {
        let d = Path::new("/run/sandbox-vm/c1");
        VmPaths {
            vsock: d.join("vsock.sock"),
            console_log: d.join("console.log"),
            fs_socket: d.join("virtiofsd.sock"),
            volumes_fs_socket: d.join("virtiofsd-volumes.sock"),
            rootfs_disk: d.join("rootfs.img"),
        }
    }

    fn tr(s: &Spec) -> Result<VmConfig, TranslateError> {
        vm_config(s, &defaults(), &paths()).map(|(vm, _)| vm)
    }

    #[test]
    fn minimal_spec_gets_defaults_and_shares_the_rootfs() {
        let (vm, mode) = vm_config(&spec(serde_json::json!({})), &defaults(), &paths()).unwrap();
        assert_eq!(mode, RootfsMode::Share);
        assert_eq!(vm.vcpus, 1);
        assert_eq!(vm.mem_mib, DEFAULT_MEM_MIB);
        assert_eq!(vm.kernel, PathBuf::from("/k/vmlinux"));
        assert_eq!(vm.initrd, Some(PathBuf::from("/k/agent.cpio")));
        assert!(vm.disks.is_empty(), "no copy of the rootfs");
        assert_eq!(
            vm.vsock.as_ref().unwrap().uds_path,
            PathBuf::from("/run/sandbox-vm/c1/vsock.sock")
        );
        assert_eq!(
            vm.serial,
            SerialOutput::File("/run/sandbox-vm/c1/console.log".into())
        );
        assert_eq!(
            vm.fs,
            vec![
                FsConfig::new(paths().fs_socket, "sandbox"),
                FsConfig::new(paths().volumes_fs_socket, "sandbox-volumes")
            ],
            "a share for rootfs, one for bind mounts"
        );
        vm.validate().unwrap();
    }

    #[test]
    fn block_rootfs_by_annotation_is_a_writable_disk_with_a_serial() {
        let s = spec(serde_json::json!({"annotations": {ANN_ROOTFS: "block"},
            "root": {"path": "rootfs", "readonly": true}}));
        let (vm, mode) = vm_config(&s, &defaults(), &paths()).unwrap();
        assert_eq!(mode, RootfsMode::Block);
        assert_eq!(vm.disks.len(), 1);
        assert_eq!(vm.disks[0].path, paths().rootfs_disk);
        assert_eq!(vm.disks[0].id.as_deref(), Some(ROOTFS_DISK_SERIAL));
        // A read-only root is enforced by the agent inside the guest, on a writable copy.
        assert!(!vm.disks[0].read_only);
        let bad = spec(serde_json::json!({"annotations": {ANN_ROOTFS: "nfs"}}));
        assert!(matches!(
            tr(&bad),
            Err(TranslateError::BadAnnotation {
                key: ANN_ROOTFS,
                ..
            })
        ));
    }

    #[test]
    fn cpu_limits_become_vcpus() {
        let cpu =
            |c: serde_json::Value| spec(serde_json::json!({"linux": {"resources": {"cpu": c}}}));
        let q =
            |quota: i64, period: u64| cpu(serde_json::json!({"quota": quota, "period": period}));
        assert_eq!(tr(&q(150_000, 100_000)).unwrap().vcpus, 2);
        assert_eq!(tr(&q(50_000, 100_000)).unwrap().vcpus, 1);
        assert_eq!(tr(&q(100_000, 100_000)).unwrap().vcpus, 1);
        // Clamped to what the host allows.
        assert_eq!(tr(&q(800_000, 100_000)).unwrap().vcpus, 2);
        assert_eq!(tr(&q(-1, 100_000)).unwrap().vcpus, 1);
        assert_eq!(
            tr(&cpu(serde_json::json!({"cpus": "0-1"}))).unwrap().vcpus,
            2
        );
        assert_eq!(tr(&cpu(serde_json::json!({"cpus": "3"}))).unwrap().vcpus, 1);
        assert!(matches!(
            tr(&q(1000, 0)),
            Err(TranslateError::BadCpu { .. })
        ));
        assert_eq!(cpuset_count("0-3,6,8-9"), Some(7));
        assert_eq!(cpuset_count("3-1"), None);
    }

    #[test]
    fn memory_limit_plus_overhead_and_minimum() {
        let mem =
            |l: i64| spec(serde_json::json!({"linux": {"resources": {"memory": {"limit": l}}}}));
        assert_eq!(tr(&mem(64 << 20)).unwrap().mem_mib, 64 + GUEST_OVERHEAD_MIB);
        assert_eq!(
            tr(&mem((64 << 20) + 1)).unwrap().mem_mib,
            65 + GUEST_OVERHEAD_MIB
        );
        assert_eq!(tr(&mem(-1)).unwrap().mem_mib, DEFAULT_MEM_MIB);
        let err = tr(&mem(4 << 20)).unwrap_err();
        assert_eq!(err, TranslateError::MemoryTooSmall(4 << 20));
        assert!(err.to_string().contains("at least 16 MiB"));
    }

    #[test]
    fn annotations_override() {
        let s = spec(serde_json::json!({"annotations": {
            ANN_KERNEL: "/a/k", ANN_INITRD: "/a/i", ANN_VCPUS: "2", ANN_MEM_MIB: "300",
            ANN_COMPAT: "off", ANN_KERNEL_PARAMS: "loglevel=7",
        }, "linux": {"resources": {"memory": {"limit": 1}}}}));
        let (vm, _) = vm_config(&s, &Defaults::default(), &paths()).unwrap();
        assert_eq!(vm.kernel, PathBuf::from("/a/k"));
        assert_eq!(vm.initrd, Some(PathBuf::from("/a/i")));
        assert_eq!((vm.vcpus, vm.mem_mib), (1, 300), "vcpus clamped to max 1");
        assert_eq!(vm.compat_profile, CompatSetting::Off);
        assert!(vm.cmdline.as_deref().unwrap().ends_with(" loglevel=7"));
        for small in ["0", "1"] {
            let s = spec(serde_json::json!({"annotations": {ANN_MEM_MIB: small}}));
            let err = tr(&s).unwrap_err();
            assert!(
                matches!(err, TranslateError::GuestMemoryTooSmall(_)),
                "{err}"
            );
            assert!(err.to_string().contains("at least 2 MiB"), "{err}");
        }
        let bad = spec(serde_json::json!({"annotations": {ANN_VCPUS: "many"}}));
        assert!(matches!(
            tr(&bad),
            Err(TranslateError::BadAnnotation { key: ANN_VCPUS, .. })
        ));
    }

    #[test]
    fn missing_kernel_or_initrd_says_how_to_build() {
        let s = spec(serde_json::json!({}));
        let mut d = defaults();
        d.kernel = None;
        let e = vm_config(&s, &d, &paths()).unwrap_err();
        assert!(e.to_string().contains("guest-kernel-config/build.sh"));
        let mut d = defaults();
        d.initrd = None;
        let e = vm_config(&s, &d, &paths()).unwrap_err();
        assert!(e.to_string().contains("images/build-agent-initramfs.sh"));
    }

    #[test]
    fn the_pod_netns_is_the_network_namespace_path() {
        let ns = |v: serde_json::Value| {
            pod_netns(&spec(serde_json::json!({"linux": {"namespaces": v}})))
        };
        assert_eq!(
            ns(
                serde_json::json!([{"type": "pid"}, {"type": "network", "path": "/run/netns/cni-1"}])
            ),
            Some(PathBuf::from("/run/netns/cni-1"))
        );
        assert_eq!(ns(serde_json::json!([{"type": "network"}])), None);
        assert_eq!(ns(serde_json::json!([{"type": "pid"}])), None);
        assert_eq!(pod_netns(&spec(serde_json::json!({}))), None);
        // The VM config itself never names a tap: those come from the netns at create.
        assert!(tr(&spec(serde_json::json!({}))).unwrap().net.is_empty());
    }

    #[test]
    fn agent_disk_boots_from_vda_and_the_rootfs_copy_follows() {
        let s = spec(serde_json::json!({"annotations": {
            ANN_AGENT_DISK: "/k/agent.img", ANN_ROOTFS: "block"}}));
        let mut d = defaults();
        d.initrd = None;
        let (vm, _) = vm_config(&s, &d, &paths()).unwrap();
        assert_eq!(vm.initrd, None);
        assert_eq!(vm.disks[0].path, PathBuf::from("/k/agent.img"));
        assert_eq!(vm.disks[0].id.as_deref(), Some(AGENT_DISK_SERIAL));
        assert!(vm.disks[0].read_only);
        assert_eq!(vm.disks[1].path, paths().rootfs_disk);
        assert!(vm.cmdline.as_deref().unwrap().contains(AGENT_DISK_CMDLINE));
    }
}
