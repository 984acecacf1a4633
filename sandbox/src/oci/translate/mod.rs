//! OCI spec → sandbox, as two pure functions (no files are touched here):
//!
//! * [`vm::vm_config`]: a pod (the spec of the container that boots the sandbox, plus the
//!   host defaults and the sandbox's state paths) → the `VmConfig` the VMM process builds;
//! * [`container::container_request`]: one container's spec → the `CreateContainer` the
//!   guest agent runs, plus the host binds the sandbox makes into its virtio-fs share.
//!
//! The spec's own problems are reported before the host's, one line each.

pub mod container;
pub mod vm;

use std::path::{Path, PathBuf};

use crate::oci::annotations;

pub use container::{
    alone_in_vm_without_nic, container_request, share_dir, ContainerPlan, HostBind,
};
pub use vm::{pod_netns, vm_config, RootfsMode, VmPaths};

/// Guest RAM on top of the container's memory limit: kernel, agent, page cache.
pub const GUEST_OVERHEAD_MIB: u64 = 96;
/// Guest RAM when the spec sets no memory limit.
pub const DEFAULT_MEM_MIB: u64 = 128;
/// Smallest memory limit we accept: below this the container cannot even start a shell.
pub const MIN_LIMIT_MIB: u64 = 16;

/// What cannot be honoured; one line each.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum TranslateError {
    #[error(transparent)]
    Invalid(#[from] crate::oci::validate::ValidateError),
    #[error("no guest kernel: set SANDBOX_VM_KERNEL or the {key} annotation, or build one with guest-kernel-config/build.sh", key = annotations::KERNEL)]
    NoKernel,
    #[error("no agent initramfs: set SANDBOX_VM_INITRD or the {key} annotation, or build one with images/build-agent-initramfs.sh", key = annotations::INITRD)]
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
    #[error("annotation {key}={0} is too small: the VM needs at least {min} MiB", key = annotations::MEM_MIB, min = vmm_api::config::MIN_MEM_BYTES >> 20)]
    GuestMemoryTooSmall(u64),
    #[error("the spec translates into a VM the VMM refuses: {0}")]
    VmConfig(String),
    #[error("invalid CPU limit: quota {quota} with period {period}")]
    BadCpu { quota: i64, period: u64 },
    #[error("bind mount of {src} on {dest}: the source must be an existing file or directory")]
    BadBindSource { src: PathBuf, dest: PathBuf },
    #[error("{0} namespaces are not supported yet")]
    Namespace(String),
}

/// Host-side defaults the translation may fall back on.
#[derive(Clone, Debug, Default)]
pub struct Defaults {
    pub kernel: Option<PathBuf>,
    pub initrd: Option<PathBuf>,
    /// The guest image: the agent as a read-only root disk (preferred over the initramfs).
    pub agent_disk: Option<PathBuf>,
    /// vCPUs the host can give one VM (`KVM_CAP_NR_VCPUS`, host CPUs).
    pub max_vcpus: u8,
}

/// What a host path is (for bind-mount sources).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostPath {
    File,
    Dir,
    /// Missing or something else (a socket, a device).
    Other,
}

/// What the translation may ask about the host (a closure, so the functions stay pure and
/// testable).
pub type FileProbe<'a> = &'a dyn Fn(&Path) -> HostPath;

/// The real probe (follows symlinks, as a bind mount does).
pub fn probe_host(path: &Path) -> HostPath {
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() => HostPath::File,
        Ok(m) if m.is_dir() => HostPath::Dir,
        _ => HostPath::Other,
    }
}

#[cfg(test)]
pub(crate) mod test_specs {
    use oci_spec::runtime::Spec;

    /// A minimal valid spec with `json`'s top-level keys replaced, and a mount namespace
    /// added to `linux.namespaces` if `json` has none (every valid spec has one).
    pub fn spec(json: serde_json::Value) -> Spec {
        let mut base = serde_json::json!({
            "ociVersion": "1.0.2",
            "process": {"args": ["sh"], "cwd": "/", "user": {"uid": 0, "gid": 0}},
            "root": {"path": "rootfs"},
            "linux": {},
        });
        for (k, v) in json.as_object().unwrap() {
            base[k] = v.clone();
        }
        let linux = base["linux"].as_object_mut().expect("linux is an object");
        let list = linux
            .entry("namespaces")
            .or_insert_with(|| serde_json::json!([]));
        let list = list.as_array_mut().expect("namespaces is a list");
        if !list.iter().any(|ns| ns["type"] == "mount") {
            list.push(serde_json::json!({"type": "mount"}));
        }
        serde_json::from_value(base).unwrap()
    }
}
