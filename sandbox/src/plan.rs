//! [`PodPlan`]: everything needed to start a sandbox, from one function of the spec of the
//! container that boots it, its rootfs, its [`Role`] and the [`HostConfig`]; and
//! [`PodPlan::member`] for the pod's later containers. Every problem with the spec or the
//! host (artifacts, virtiofsd, the pod's netns) is found here, before anything exists. Both
//! front ends and `sandbox-vm template` plan through it; the OCI CLI saves the plan as
//! `plan.json` for its monitor.

use std::path::{Path, PathBuf};
use std::time::Duration;

use oci_spec::runtime::{LinuxNamespaceType, Spec};
use serde::{Deserialize, Serialize};
use vmm_api::config::VmConfig;

use crate::cgroup::{CgroupError, CgroupsPath};
use crate::host::HostConfig;
use crate::network::NetnsError;
use crate::nsfile::NsFileError;
use crate::oci::annotations::Annotations;
use crate::oci::hooks::{self, HookError};
use crate::oci::translate::{self, ContainerPlan, HostPath, RootfsMode, TranslateError};
use crate::paths::SandboxPaths;
use crate::template::TemplateUse;
use crate::vmm_process::{VmmRun, VMM_BIN};

/// What the container that boots a sandbox is to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    /// The OCI CLI's container, alone in its VM: without a pod network it stays in the
    /// guest's root network namespace ([`translate::alone_in_vm_without_nic`]).
    Alone,
    /// The container that boots a pod's VM in the shim: CRI's sandbox container, or a
    /// container with no pod (`ctr run`). A hostname without a UTS namespace is the
    /// VM's, not the container's.
    Pod,
}

/// Why a sandbox cannot be planned; one line each.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error(transparent)]
    Translate(#[from] TranslateError),
    #[error("{what} {path} not found: {how}")]
    Artifact {
        what: &'static str,
        path: PathBuf,
        how: &'static str,
    },
    #[error(
        "virtiofsd not found: run scripts/setup.sh (it installs it) or set SANDBOX_VM_VIRTIOFSD"
    )]
    NoVirtiofsd,
    #[error("the VMM binary ({VMM_BIN}) is neither beside this program nor on PATH: install it there, or set SANDBOX_VM_VMM")]
    NoVmmExe,
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    #[error(transparent)]
    NsFile(#[from] NsFileError),
    #[error(
        "linux.namespaces: the {want} namespace's path {path} names a namespace of type {found}"
    )]
    NsWrongType {
        want: LinuxNamespaceType,
        found: LinuxNamespaceType,
        path: PathBuf,
    },
    #[error("linux.namespaces: cannot join the host's {typ} namespace {path}: a container in a VM runs on its own kernel (leave the path out for a new {typ} namespace)")]
    HostNamespace {
        typ: LinuxNamespaceType,
        path: PathBuf,
    },
    #[error(transparent)]
    Hooks(#[from] HookError),
}

/// What planning asks of the host; [`RealHost`] asks the real one, tests a fake.
pub trait HostProbe {
    /// What `path` is (bind sources, guest artifacts).
    fn path(&self, path: &Path) -> HostPath;
    /// Whether `path` is a network namespace the VM may take over.
    fn netns(&self, path: &Path) -> Result<(), NetnsError>;
    /// The type of the namespace at `path` (a `linux.namespaces[].path`).
    fn ns_type(&self, path: &Path) -> Result<LinuxNamespaceType, NsFileError>;
}

/// The host itself.
pub struct RealHost;

impl HostProbe for RealHost {
    fn path(&self, path: &Path) -> HostPath {
        translate::probe_host(path)
    }

    fn netns(&self, path: &Path) -> Result<(), NetnsError> {
        crate::network::Netns::open(path).map(drop)
    }

    fn ns_type(&self, path: &Path) -> Result<LinuxNamespaceType, NsFileError> {
        crate::nsfile::type_at(path)
    }
}

/// The namespace paths of the container that boots a sandbox: each must name a namespace
/// of its entry's type, and only the network one can be used (it is the pod's, whose
/// interfaces the VM takes over: see [`crate::network`]). Any other names a namespace of
/// the host's kernel, which no process in the guest can join: refused, rather than
/// silently replaced by a new namespace.
fn check_namespace_paths(spec: &Spec, probe: &dyn HostProbe) -> Result<(), PlanError> {
    let nss = spec.linux().as_ref().and_then(|l| l.namespaces().as_ref());
    let with_paths = nss
        .into_iter()
        .flatten()
        .filter_map(|n| Some((n.typ(), n.path().as_ref()?)));
    // The network namespace's path is checked by `probe.netns` (its type too).
    let mut with_paths = with_paths.filter(|(t, _)| *t != LinuxNamespaceType::Network);
    let Some((want, path)) = with_paths.next() else {
        return Ok(());
    };
    let found = probe.ns_type(path)?;
    Err(if found != want {
        PlanError::NsWrongType {
            want,
            found,
            path: path.clone(),
        }
    } else {
        PlanError::HostNamespace {
            typ: want,
            path: path.clone(),
        }
    })
}

/// Everything needed to start one sandbox (see the module docs).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PodPlan {
    /// The sandbox's id (logs, the guest's hostname default).
    pub id: String,
    /// Its state directory ([`SandboxPaths`]).
    pub dir: PathBuf,
    pub role: Role,
    /// The VM, sized for the pod.
    pub vm: VmConfig,
    pub mode: RootfsMode,
    /// A rootfs to copy into the VM's block image before it boots ([`RootfsMode::Block`]).
    pub block_rootfs: Option<PathBuf>,
    /// The guest's hostname.
    pub hostname: Option<String>,
    /// The pod's network namespace: the VM gets a NIC for each of its interfaces.
    pub netns: Option<PathBuf>,
    /// The pod's cgroup on the host ([`crate::cgroup`]), for [`Role::Pod`]: the sandbox
    /// container's `linux.cgroupsPath`. The VMM and virtiofsd run in it, and the sandbox's
    /// owner (the shim, which serves this pod alone) joins it.
    #[serde(default)]
    pub cgroup: Option<CgroupsPath>,
    /// The container that boots the sandbox.
    pub first: ContainerPlan,
    pub template: TemplateUse,
    /// Where templates are kept.
    pub templates: PathBuf,
    pub virtiofsd: PathBuf,
    pub vmm: VmmRun,
    /// How long the guest may take to boot to its agent.
    pub agent_timeout: Duration,
}

/// How to get each guest artifact when it is missing.
const KERNEL_HOW: &str = "build it with guest-kernel-config/build.sh or set SANDBOX_VM_KERNEL";
const IMAGE_HOW: &str = "build it with images/build-agent-disk.sh or set SANDBOX_VM_AGENT_DISK";
const INITRD_HOW: &str = "build it with images/build-agent-initramfs.sh or set SANDBOX_VM_INITRD";

/// The guest kernel, initramfs and read-only disks must exist (the rootfs image is made
/// by the sandbox).
fn check_artifacts(vm: &VmConfig, probe: &dyn HostProbe) -> Result<(), PlanError> {
    let files = std::iter::once(("guest kernel", &vm.kernel, KERNEL_HOW))
        .chain(vm.initrd.iter().map(|i| ("agent initramfs", i, INITRD_HOW)))
        .chain(
            vm.disks
                .iter()
                .filter(|d| d.read_only)
                .map(|d| ("guest image", &d.path, IMAGE_HOW)),
        );
    for (what, path, how) in files {
        if probe.path(path) != HostPath::File {
            return Err(PlanError::Artifact {
                what,
                path: path.clone(),
                how,
            });
        }
    }
    Ok(())
}

impl PodPlan {
    /// Plans the sandbox that container `id` (`spec`, its rootfs at `rootfs`) boots in
    /// state directory `dir`.
    pub fn new(
        id: &str,
        spec: &Spec,
        rootfs: &Path,
        role: Role,
        dir: &Path,
        host: &HostConfig,
        probe: &dyn HostProbe,
    ) -> Result<PodPlan, PlanError> {
        let ann = Annotations::parse(spec)?;
        // The OCI CLI runs hooks on the host; the shim does not.
        match role {
            Role::Alone => hooks::check(spec.hooks().as_ref())?,
            Role::Pod => hooks::refuse(spec.hooks().as_ref())?,
        }
        let mut guest_spec = spec.clone();
        if role == Role::Pod {
            drop_hostname_without_uts(&mut guest_spec);
        }
        let paths = SandboxPaths::in_dir(dir);
        let vm = translate::vm_config(&guest_spec, &ann, &host.defaults(), &paths.vm_paths())?;
        let file_probe = |p: &Path| probe.path(p);
        let mut first =
            translate::container_request(id, &guest_spec, rootfs, ann.rootfs, &file_probe)?;
        check_namespace_paths(spec, probe)?;
        check_artifacts(&vm, probe)?;
        let virtiofsd = host.virtiofsd.clone().ok_or(PlanError::NoVirtiofsd)?;
        let exe = host.vmm_exe.clone().ok_or(PlanError::NoVmmExe)?;
        let netns = translate::pod_netns(spec);
        match &netns {
            // A missing or deleted netns is reported here, before anything exists.
            Some(ns) => probe.netns(ns)?,
            None if role == Role::Alone => translate::alone_in_vm_without_nic(&mut first),
            None => {}
        }
        let cgroup = match (role, cgroups_path(spec)) {
            (Role::Pod, Some(p)) => Some(CgroupsPath::parse(p)?),
            _ => None,
        };
        Ok(PodPlan {
            id: id.into(),
            dir: dir.into(),
            role,
            vm,
            mode: ann.rootfs,
            block_rootfs: (ann.rootfs == RootfsMode::Block).then(|| rootfs.to_path_buf()),
            hostname: spec.hostname().clone(),
            netns,
            cgroup,
            first,
            template: ann.template,
            templates: host.templates.clone(),
            virtiofsd,
            vmm: VmmRun {
                exe,
                jail: host.jail,
                seccomp: host.seccomp.clone(),
            },
            agent_timeout: host.agent_timeout,
        })
    }

    /// Plans a later container of the pod (`spec`, rootfs at `rootfs`): its rootfs through
    /// the share, and the namespaces its spec shares with the pod's sandbox container
    /// joined to those of that container's init (guest pid `sandbox_pid`).
    pub fn member(
        &self,
        id: &str,
        spec: &Spec,
        rootfs: &Path,
        sandbox_pid: u32,
        probe: &dyn HostProbe,
    ) -> Result<ContainerPlan, PlanError> {
        self.plan_member(id, spec, rootfs, Some(sandbox_pid), probe)
    }

    /// Plans a container of a pod that has no sandbox container in the guest
    /// (containerd's Sandbox API: the VM itself is the pod): the namespaces its spec
    /// shares with the pod are the guest's root ones, the VM's own.
    pub fn member_of_vm(
        &self,
        id: &str,
        spec: &Spec,
        rootfs: &Path,
        probe: &dyn HostProbe,
    ) -> Result<ContainerPlan, PlanError> {
        self.plan_member(id, spec, rootfs, None, probe)
    }

    fn plan_member(
        &self,
        id: &str,
        spec: &Spec,
        rootfs: &Path,
        sandbox_pid: Option<u32>,
        probe: &dyn HostProbe,
    ) -> Result<ContainerPlan, PlanError> {
        hooks::refuse(spec.hooks().as_ref())?;
        let mut guest_spec = spec.clone();
        drop_hostname_without_uts(&mut guest_spec);
        let file_probe = |p: &Path| probe.path(p);
        let mut plan =
            translate::container_request(id, &guest_spec, rootfs, RootfsMode::Share, &file_probe)?;
        join_sandbox_namespaces(&mut plan.request.spec, spec, sandbox_pid);
        drop_hostname_without_uts(&mut plan.request.spec);
        Ok(plan)
    }
}

/// The spec's `linux.cgroupsPath`, unless empty. The OCI CLI leaves it alone: its VM's
/// processes stay with its monitor (see the README).
fn cgroups_path(spec: &Spec) -> Option<&str> {
    let path = spec.linux().as_ref()?.cgroups_path().as_ref()?;
    path.to_str().filter(|p| !p.is_empty())
}

/// The name of a namespace type under `/proc/PID/ns/`.
fn ns_file(t: LinuxNamespaceType) -> Option<&'static str> {
    use LinuxNamespaceType as T;
    Some(match t {
        T::Network => "net",
        T::Ipc => "ipc",
        T::Uts => "uts",
        T::Pid => "pid",
        T::Cgroup => "cgroup",
        _ => return None,
    })
}

/// A pod member's namespaces: those the CRI spec shares with the pod's sandbox (they name
/// a host path, meaningless in the guest) join the sandbox container's in the guest, at
/// `/proc/<its guest pid>/ns/…`, so the pod's containers share loopback, IPC and
/// hostname as they would on runc. Without a sandbox container (`None`) they stay in the
/// guest's root namespaces instead. A container joining the sandbox's UTS namespace keeps
/// the pod's hostname and sets none of its own.
fn join_sandbox_namespaces(guest: &mut Spec, host: &Spec, sandbox_pid: Option<u32>) {
    let shared: Vec<LinuxNamespaceType> = host
        .linux()
        .as_ref()
        .and_then(|l| l.namespaces().clone())
        .unwrap_or_default()
        .into_iter()
        .filter(|n| n.path().is_some())
        .map(|n| n.typ())
        .collect();
    let mut joins_uts = false;
    if let Some(nss) = guest
        .linux_mut()
        .as_mut()
        .and_then(|l| l.namespaces_mut().as_mut())
    {
        for ns in nss.iter_mut().filter(|n| shared.contains(&n.typ())) {
            if let (Some(file), Some(pid)) = (ns_file(ns.typ()), sandbox_pid) {
                ns.set_path(Some(format!("/proc/{pid}/ns/{file}").into()));
            }
            joins_uts |= ns.typ() == LinuxNamespaceType::Uts;
        }
        if sandbox_pid.is_none() {
            nss.retain(|n| !shared.contains(&n.typ()));
        }
    }
    if joins_uts {
        guest.set_hostname(None);
    }
}

/// A container in the VM's own UTS namespace (CRI's host-network pods share the node's)
/// gets the VM's hostname, which is the pod's: the guest agent refuses a hostname
/// without a new UTS namespace, so it is dropped from the guest's spec.
fn drop_hostname_without_uts(guest: &mut Spec) {
    let new_uts = guest
        .linux()
        .as_ref()
        .and_then(|l| l.namespaces().as_ref())
        .is_some_and(|n| n.iter().any(|n| n.typ() == LinuxNamespaceType::Uts));
    if !new_uts {
        guest.set_hostname(None);
    }
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
