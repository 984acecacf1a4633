//! OCI spec → microVM: one pure function, [`translate`], from a bundle's spec (plus the
//! host defaults and the container's state paths) to the `VmConfig` the VMM builds and the
//! `CreateContainer` the guest agent runs. No files are touched here; the caller makes the
//! rootfs image and copies the files this plan lists.

use std::path::{Path, PathBuf};

use agent_protocol::{CreateContainer, Rootfs, StdioConfig};
use oci_spec::runtime::{Mount, MountBuilder, Spec};
use serde::{Deserialize, Serialize};
use vmm::config::{CompatSetting, DiskConfig, SerialOutput, VmConfig, VsockConfig};

/// Annotation: guest kernel path.
pub const ANN_KERNEL: &str = "io.sandbox-vm.kernel";
/// Annotation: agent initramfs path.
pub const ANN_INITRD: &str = "io.sandbox-vm.initrd";
/// Annotation: number of vCPUs (overrides the CPU limit).
pub const ANN_VCPUS: &str = "io.sandbox-vm.vcpus";
/// Annotation: guest RAM in MiB (overrides the memory limit).
pub const ANN_MEM_MIB: &str = "io.sandbox-vm.mem-mib";
/// Annotation: boot the agent from this read-only ext4 image (`/init` = the agent) instead
/// of the initramfs; see `images/build-agent-disk.sh`.
pub const ANN_AGENT_DISK: &str = "io.sandbox-vm.agent-disk";
/// Kernel parameters that boot the agent from its disk (`/dev/vda`).
pub const AGENT_DISK_CMDLINE: &str = "root=/dev/vda ro rootfstype=ext4 init=/init";
/// Annotation: extra guest kernel parameters (appended to the default command line), e.g.
/// `loglevel=7` to see the guest's messages in `console.log`.
pub const ANN_KERNEL_PARAMS: &str = "io.sandbox-vm.kernel-params";
/// Annotation: host-compatibility profile `auto|on|off`.
pub const ANN_COMPAT: &str = "io.sandbox-vm.compat";

/// Guest RAM on top of the container's memory limit: kernel, agent, page cache.
pub const GUEST_OVERHEAD_MIB: u64 = 96;
/// Guest RAM when the spec sets no memory limit.
pub const DEFAULT_MEM_MIB: u64 = 128;
/// Smallest memory limit we accept: below this the container cannot even start a shell.
pub const MIN_LIMIT_MIB: u64 = 16;
/// A file bind mount is copied into the rootfs image; larger files are refused.
pub const MAX_COPIED_FILE: u64 = 1 << 20;

/// What cannot be honoured; one line each.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum TranslateError {
    #[error("no guest kernel: set SANDBOX_VM_KERNEL or the {ANN_KERNEL} annotation, or build one with guest-kernel-config/build.sh")]
    NoKernel,
    #[error("no agent initramfs: set SANDBOX_VM_INITRD or the {ANN_INITRD} annotation, or build one with images/build-agent-initramfs.sh")]
    NoInitrd,
    #[error("annotation {key}={value:?} is not {want}")]
    BadAnnotation {
        key: &'static str,
        value: String,
        want: &'static str,
    },
    #[error(
        "memory limit {0} bytes is too small: a VM container needs at least {MIN_LIMIT_MIB} MiB"
    )]
    MemoryTooSmall(i64),
    #[error("invalid CPU limit: quota {quota} with period {period}")]
    BadCpu { quota: i64, period: u64 },
    #[error("bind mount of host directory {src} on {dest} is not supported yet (a VM cannot see host directories until virtio-fs is added); file bind mounts are copied into the rootfs")]
    DirBind { src: PathBuf, dest: PathBuf },
    #[error("bind mount of {src} on {dest}: only regular files up to {MAX_COPIED_FILE} bytes are copied into the VM")]
    BadBindSource { src: PathBuf, dest: PathBuf },
    #[error("OCI hooks are not supported yet (config.json sets {0})")]
    Hooks(String),
    #[error("{0} namespaces are not supported yet")]
    Namespace(String),
}

/// Host-side defaults the translation may fall back on.
#[derive(Clone, Debug, Default)]
pub struct Defaults {
    pub kernel: Option<PathBuf>,
    pub initrd: Option<PathBuf>,
    /// Opt-in: the agent as a root disk image instead of the initramfs.
    pub agent_disk: Option<PathBuf>,
    /// vCPUs the host can give one VM (`KVM_CAP_NR_VCPUS`, host CPUs).
    pub max_vcpus: u8,
}

/// Where this container's files go (inside its state directory).
#[derive(Clone, Debug)]
pub struct StatePaths {
    pub disk: PathBuf,
    pub vsock: PathBuf,
    pub console_log: PathBuf,
}

impl StatePaths {
    /// The standard layout of `<root>/<id>/`.
    pub fn in_dir(dir: &Path) -> Self {
        StatePaths {
            disk: dir.join("rootfs.img"),
            vsock: dir.join("vsock.sock"),
            console_log: dir.join("console.log"),
        }
    }
}

/// A host file a bind mount wants at `dest` in the container, copied into the image.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileCopy {
    pub src: PathBuf,
    pub dest: PathBuf,
}

/// Everything needed to make the container real.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    pub vm: VmConfig,
    pub container: CreateContainer,
    pub copies: Vec<FileCopy>,
}

/// What a host path is (for bind-mount sources).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostPath {
    /// A regular file of this many bytes.
    File(u64),
    Dir,
    /// Missing or something else.
    Other,
}

/// What the translation may ask about the host (a closure, so the function stays pure and
/// testable).
pub type FileProbe<'a> = &'a dyn Fn(&Path) -> HostPath;

/// The real probe.
pub fn probe_host(path: &Path) -> HostPath {
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() => HostPath::File(m.len()),
        Ok(m) if m.is_dir() => HostPath::Dir,
        _ => HostPath::Other,
    }
}

fn annotation<T: std::str::FromStr>(
    spec: &Spec,
    key: &'static str,
    want: &'static str,
) -> Result<Option<T>, TranslateError> {
    let Some(value) = spec.annotations().as_ref().and_then(|a| a.get(key)) else {
        return Ok(None);
    };
    value
        .parse()
        .map(Some)
        .map_err(|_| TranslateError::BadAnnotation {
            key,
            value: value.clone(),
            want,
        })
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

fn vcpus(spec: &Spec, max: u8) -> Result<u8, TranslateError> {
    let max = max.max(1);
    if let Some(n) = annotation::<u8>(spec, ANN_VCPUS, "a vCPU count from 1 to 255")? {
        return Ok(n.clamp(1, max));
    }
    let cpu = spec
        .linux()
        .as_ref()
        .and_then(|l| l.resources().as_ref())
        .and_then(|r| r.cpu().as_ref());
    let Some(cpu) = cpu else { return Ok(1) };
    let wanted = match (cpu.quota(), cpu.period()) {
        (Some(q), Some(p)) if q > 0 => {
            if p == 0 {
                return Err(TranslateError::BadCpu {
                    quota: q,
                    period: p,
                });
            }
            (q as u64).div_ceil(p)
        }
        _ => cpu.cpus().as_deref().and_then(cpuset_count).unwrap_or(1),
    };
    Ok(wanted.clamp(1, u64::from(max)) as u8)
}

fn mem_mib(spec: &Spec) -> Result<u64, TranslateError> {
    if let Some(m) = annotation::<u64>(spec, ANN_MEM_MIB, "a size in MiB")? {
        return Ok(m);
    }
    let limit = spec
        .linux()
        .as_ref()
        .and_then(|l| l.resources().as_ref())
        .and_then(|r| r.memory().as_ref())
        .and_then(|m| m.limit());
    match limit {
        // -1 (and 0) mean unlimited.
        None | Some(..=0) => Ok(DEFAULT_MEM_MIB),
        Some(l) if (l as u64) < MIN_LIMIT_MIB << 20 => Err(TranslateError::MemoryTooSmall(l)),
        Some(l) => Ok((l as u64).div_ceil(1 << 20) + GUEST_OVERHEAD_MIB),
    }
}

fn is_bind(m: &Mount) -> bool {
    m.typ().as_deref() == Some("bind")
        || m.options()
            .as_ref()
            .is_some_and(|o| o.iter().any(|o| o == "bind" || o == "rbind"))
}

/// Mounts for the guest: host file binds become copies, a host directory on `/dev/shm`
/// becomes a private tmpfs (the same thing inside one VM), other directory binds fail.
fn guest_mounts(
    mounts: &[Mount],
    probe: FileProbe<'_>,
) -> Result<(Vec<Mount>, Vec<FileCopy>), TranslateError> {
    let mut out = Vec::new();
    let mut copies = Vec::new();
    for m in mounts {
        if !is_bind(m) {
            out.push(m.clone());
            continue;
        }
        let dest = m.destination().clone();
        let src = m.source().clone().unwrap_or_default();
        if dest == Path::new("/dev/shm") {
            out.push(
                MountBuilder::default()
                    .destination(dest)
                    .typ("tmpfs")
                    .source("shm")
                    .options(vec![
                        "nosuid".to_string(),
                        "noexec".into(),
                        "nodev".into(),
                        "mode=1777".into(),
                        "size=65536k".into(),
                    ])
                    .build()
                    .expect("all mount fields are set"),
            );
            continue;
        }
        match probe(&src) {
            HostPath::File(size) if size <= MAX_COPIED_FILE => copies.push(FileCopy { src, dest }),
            HostPath::Dir => return Err(TranslateError::DirBind { src, dest }),
            _ => return Err(TranslateError::BadBindSource { src, dest }),
        }
    }
    Ok((out, copies))
}

/// The spec as the guest agent should see it: mounts rewritten, namespace paths (host
/// paths, meaningless in the guest) dropped in favour of new namespaces, the cgroup path
/// left to the agent's default.
fn guest_spec(spec: &Spec, mounts: Vec<Mount>) -> Result<Spec, TranslateError> {
    let mut g = spec.clone();
    if let Some(hooks) = g.hooks() {
        let v = serde_json::to_value(hooks).unwrap_or_default();
        let set: Vec<String> = v
            .as_object()
            .map(|o| {
                o.iter()
                    .filter(|(_, h)| h.as_array().is_some_and(|a| !a.is_empty()))
                    .map(|(k, _)| k.clone())
                    .collect()
            })
            .unwrap_or_default();
        if !set.is_empty() {
            return Err(TranslateError::Hooks(set.join(", ")));
        }
        g.set_hooks(None);
    }
    g.set_mounts(Some(mounts));
    if let Some(linux) = g.linux_mut() {
        if let Some(nss) = linux.namespaces_mut() {
            for ns in nss.iter_mut() {
                use oci_spec::runtime::LinuxNamespaceType as T;
                if matches!(ns.typ(), T::User | T::Time) {
                    return Err(TranslateError::Namespace(
                        format!("{:?}", ns.typ()).to_lowercase(),
                    ));
                }
                ns.set_path(None);
            }
        }
        linux.set_cgroups_path(None);
        linux.set_uid_mappings(None);
        linux.set_gid_mappings(None);
    }
    Ok(g)
}

/// Translates one container. `probe` answers "is this host path a regular file, and how
/// big" for bind-mount sources.
pub fn translate(
    id: &str,
    spec: &Spec,
    defaults: &Defaults,
    paths: &StatePaths,
    probe: FileProbe<'_>,
) -> Result<Plan, TranslateError> {
    // The spec's own problems first, then the host's.
    let vcpus = vcpus(spec, defaults.max_vcpus)?;
    let mem_mib = mem_mib(spec)?;
    let kernel = annotation::<PathBuf>(spec, ANN_KERNEL, "a path")?
        .or_else(|| defaults.kernel.clone())
        .ok_or(TranslateError::NoKernel)?;
    let agent_disk = annotation::<PathBuf>(spec, ANN_AGENT_DISK, "a path")?
        .or_else(|| defaults.agent_disk.clone());
    let initrd = match agent_disk {
        Some(_) => None,
        None => Some(
            annotation::<PathBuf>(spec, ANN_INITRD, "a path")?
                .or_else(|| defaults.initrd.clone())
                .ok_or(TranslateError::NoInitrd)?,
        ),
    };
    let compat = match annotation::<String>(spec, ANN_COMPAT, "auto, on or off")?.as_deref() {
        None | Some("auto") => CompatSetting::Auto,
        Some("on") => CompatSetting::On,
        Some("off") => CompatSetting::Off,
        Some(other) => {
            return Err(TranslateError::BadAnnotation {
                key: ANN_COMPAT,
                value: other.into(),
                want: "auto, on or off",
            })
        }
    };

    let mut vm = VmConfig::new(kernel);
    vm.initrd = initrd;
    let params = annotation::<String>(spec, ANN_KERNEL_PARAMS, "text")?;
    let boot_params = agent_disk.as_ref().map(|_| AGENT_DISK_CMDLINE);
    let extra: Vec<&str> = boot_params.into_iter().chain(params.as_deref()).collect();
    if !extra.is_empty() {
        vm.cmdline = Some(format!(
            "{} {}",
            vmm::builder::DEFAULT_CMDLINE,
            extra.join(" ")
        ));
    }
    // The guest names disks in order: the agent's root (if any) first.
    if let Some(d) = &agent_disk {
        vm.disks.push(DiskConfig {
            path: d.clone(),
            read_only: true,
            id: Some("agent".into()),
        });
    }
    vm.vcpus = vcpus;
    vm.mem_mib = mem_mib;
    vm.serial = SerialOutput::File(paths.console_log.clone());
    vm.compat_profile = compat;
    // The image is this container's own copy, attached read-write even for a read-only
    // root: the agent creates the spec's mount points in it, then makes the container's
    // view of `/` read-only (spec.root.readonly travels in the spec), as runc does.
    vm.disks.push(DiskConfig {
        path: paths.disk.clone(),
        read_only: false,
        id: Some("rootfs".into()),
    });
    vm.vsock = Some(VsockConfig {
        guest_cid: 3,
        uds_path: paths.vsock.clone(),
    });

    let (mounts, copies) = guest_mounts(spec.mounts().as_deref().unwrap_or_default(), probe)?;
    let container = CreateContainer {
        container_id: id.into(),
        spec: Box::new(guest_spec(spec, mounts)?),
        // The agent finds the disk by this serial (the DiskConfig id above).
        rootfs: Rootfs::BlockDevice {
            serial: "rootfs".into(),
            fstype: "ext4".into(),
            options: Vec::new(),
        },
        stdio: StdioConfig::ALL,
    };
    Ok(Plan {
        vm,
        container,
        copies,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: serde_json::Value) -> Spec {
        let mut base = serde_json::json!({
            "ociVersion": "1.0.2",
            "process": {"args": ["sh"], "cwd": "/", "user": {"uid": 0, "gid": 0}},
            "root": {"path": "rootfs"},
        });
        for (k, v) in json.as_object().unwrap() {
            base[k] = v.clone();
        }
        serde_json::from_value(base).unwrap()
    }

    fn defaults() -> Defaults {
        Defaults {
            kernel: Some("/k/vmlinux".into()),
            initrd: Some("/k/agent.cpio".into()),
            agent_disk: None,
            max_vcpus: 2,
        }
    }

    fn paths() -> StatePaths {
        StatePaths::in_dir(Path::new("/run/sandbox-vm/c1"))
    }

    fn no_files(_: &Path) -> HostPath {
        HostPath::Other
    }

    fn tr(s: &Spec) -> Result<Plan, TranslateError> {
        translate("c1", s, &defaults(), &paths(), &no_files)
    }

    #[test]
    fn minimal_spec_gets_defaults() {
        let p = tr(&spec(serde_json::json!({}))).unwrap();
        assert_eq!(p.vm.vcpus, 1);
        assert_eq!(p.vm.mem_mib, DEFAULT_MEM_MIB);
        assert_eq!(p.vm.kernel, PathBuf::from("/k/vmlinux"));
        assert_eq!(p.vm.initrd, Some(PathBuf::from("/k/agent.cpio")));
        assert_eq!(
            p.vm.disks[0].path,
            PathBuf::from("/run/sandbox-vm/c1/rootfs.img")
        );
        assert!(!p.vm.disks[0].read_only);
        assert_eq!(
            p.vm.vsock.as_ref().unwrap().uds_path,
            PathBuf::from("/run/sandbox-vm/c1/vsock.sock")
        );
        assert_eq!(p.container.container_id, "c1");
        assert!(
            matches!(p.container.rootfs, Rootfs::BlockDevice { ref serial, .. } if serial == "rootfs")
        );
        assert!(p.copies.is_empty());
        p.vm.validate().unwrap();
    }

    #[test]
    fn cpu_limits_become_vcpus() {
        let cpu =
            |c: serde_json::Value| spec(serde_json::json!({"linux": {"resources": {"cpu": c}}}));
        let q =
            |quota: i64, period: u64| cpu(serde_json::json!({"quota": quota, "period": period}));
        assert_eq!(tr(&q(150_000, 100_000)).unwrap().vm.vcpus, 2);
        assert_eq!(tr(&q(50_000, 100_000)).unwrap().vm.vcpus, 1);
        assert_eq!(tr(&q(100_000, 100_000)).unwrap().vm.vcpus, 1);
        // Clamped to what the host allows.
        assert_eq!(tr(&q(800_000, 100_000)).unwrap().vm.vcpus, 2);
        assert_eq!(tr(&q(-1, 100_000)).unwrap().vm.vcpus, 1);
        assert_eq!(
            tr(&cpu(serde_json::json!({"cpus": "0-1"})))
                .unwrap()
                .vm
                .vcpus,
            2
        );
        assert_eq!(
            tr(&cpu(serde_json::json!({"cpus": "3"}))).unwrap().vm.vcpus,
            1
        );
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
        assert_eq!(
            tr(&mem(64 << 20)).unwrap().vm.mem_mib,
            64 + GUEST_OVERHEAD_MIB
        );
        assert_eq!(
            tr(&mem((64 << 20) + 1)).unwrap().vm.mem_mib,
            65 + GUEST_OVERHEAD_MIB
        );
        assert_eq!(tr(&mem(-1)).unwrap().vm.mem_mib, DEFAULT_MEM_MIB);
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
        let p = translate("c1", &s, &Defaults::default(), &paths(), &no_files).unwrap();
        assert_eq!(p.vm.kernel, PathBuf::from("/a/k"));
        assert_eq!(p.vm.initrd, Some(PathBuf::from("/a/i")));
        assert_eq!(
            (p.vm.vcpus, p.vm.mem_mib),
            (1, 300),
            "vcpus clamped to max 1"
        );
        assert_eq!(p.vm.compat_profile, CompatSetting::Off);
        assert!(p.vm.cmdline.as_deref().unwrap().ends_with(" loglevel=7"));
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
        let e = translate("c1", &s, &d, &paths(), &no_files).unwrap_err();
        assert!(e.to_string().contains("guest-kernel-config/build.sh"));
        let mut d = defaults();
        d.initrd = None;
        let e = translate("c1", &s, &d, &paths(), &no_files).unwrap_err();
        assert!(e.to_string().contains("images/build-agent-initramfs.sh"));
    }

    #[test]
    fn binds_copied_or_rejected() {
        let s = spec(serde_json::json!({"mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/etc/hosts", "type": "bind", "source": "/host/hosts", "options": ["rbind", "ro"]},
            {"destination": "/dev/shm", "type": "bind", "source": "/host/shm", "options": ["bind"]},
        ]}));
        let files = |p: &Path| match p.to_str() {
            Some("/host/hosts") => HostPath::File(100),
            Some("/") => HostPath::Dir,
            _ => HostPath::Other,
        };
        let p = translate("c1", &s, &defaults(), &paths(), &files).unwrap();
        assert_eq!(
            p.copies,
            vec![FileCopy {
                src: "/host/hosts".into(),
                dest: "/etc/hosts".into()
            }]
        );
        let mounts = p.container.spec.mounts().clone().unwrap();
        assert_eq!(mounts.len(), 2);
        assert_eq!(mounts[1].typ().as_deref(), Some("tmpfs"));

        let dir = spec(serde_json::json!({"mounts": [
            {"destination": "/data", "type": "none", "source": "/", "options": ["rbind"]},
        ]}));
        let e = translate("c1", &dir, &defaults(), &paths(), &files).unwrap_err();
        assert!(matches!(e, TranslateError::DirBind { .. }));
        assert!(e.to_string().contains("not supported yet"), "{e}");
        let big = |_: &Path| HostPath::File(MAX_COPIED_FILE + 1);
        let f = spec(serde_json::json!({"mounts": [
            {"destination": "/x", "type": "bind", "source": "/big"},
        ]}));
        assert!(matches!(
            translate("c1", &f, &defaults(), &paths(), &big),
            Err(TranslateError::BadBindSource { .. })
        ));
    }

    #[test]
    fn host_namespace_paths_and_cgroup_path_are_dropped() {
        let s = spec(serde_json::json!({"linux": {
            "namespaces": [{"type": "pid"}, {"type": "network", "path": "/run/netns/x"}],
            "cgroupsPath": "machine.slice:libpod:abc",
        }, "root": {"path": "rootfs", "readonly": true}}));
        let p = tr(&s).unwrap();
        let linux = p.container.spec.linux().clone().unwrap();
        assert!(linux
            .namespaces()
            .as_ref()
            .unwrap()
            .iter()
            .all(|n| n.path().is_none()));
        assert!(linux.cgroups_path().is_none());
        // A read-only root is enforced by the agent inside the guest, on a writable copy.
        assert!(!p.vm.disks[0].read_only);
        assert_eq!(
            p.container.spec.root().as_ref().and_then(|r| r.readonly()),
            Some(true)
        );
        let u = spec(serde_json::json!({"linux": {"namespaces": [{"type": "user"}]}}));
        assert_eq!(
            tr(&u).unwrap_err(),
            TranslateError::Namespace("user".into())
        );
    }

    #[test]
    fn agent_disk_boots_from_vda_and_rootfs_moves_to_vdb() {
        let s = spec(serde_json::json!({"annotations": {ANN_AGENT_DISK: "/k/agent.img"}}));
        let mut d = defaults();
        d.initrd = None;
        let p = translate("c1", &s, &d, &paths(), &no_files).unwrap();
        assert_eq!(p.vm.initrd, None);
        assert_eq!(p.vm.disks[0].path, PathBuf::from("/k/agent.img"));
        assert!(p.vm.disks[0].read_only);
        assert_eq!(
            p.vm.disks[1].path,
            PathBuf::from("/run/sandbox-vm/c1/rootfs.img")
        );
        assert!(p
            .vm
            .cmdline
            .as_deref()
            .unwrap()
            .contains(AGENT_DISK_CMDLINE));
        assert!(
            matches!(p.container.rootfs, Rootfs::BlockDevice { ref serial, .. } if serial == "rootfs")
        );
    }

    #[test]
    fn hooks_are_rejected() {
        let s = spec(serde_json::json!({"hooks": {"prestart": [{"path": "/bin/true"}]}}));
        assert!(matches!(tr(&s), Err(TranslateError::Hooks(h)) if h == "prestart"));
        let empty = spec(serde_json::json!({"hooks": {"prestart": []}}));
        tr(&empty).unwrap();
    }
}
