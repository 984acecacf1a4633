//! The OCI side: bundles, the spec → VM translation, and where the guest artifacts are.

pub mod bundle;
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzz;
pub mod translate;
pub mod validate;

use std::path::{Path, PathBuf};

/// Newest runtime-spec version this runtime speaks (reported by `state` and `features`).
pub const OCI_VERSION: &str = "1.2.0";

/// First existing file among `candidates`.
fn first_file(candidates: impl IntoIterator<Item = PathBuf>) -> Option<PathBuf> {
    candidates.into_iter().find(|p| p.is_file())
}

/// The guest kernel: `$SANDBOX_VM_KERNEL`, else the kernel build cache, else the system
/// install location.
pub fn default_kernel() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("SANDBOX_VM_KERNEL") {
        return Some(PathBuf::from(p));
    }
    let home = std::env::var_os("HOME").map(PathBuf::from);
    first_file(
        home.map(|h| h.join(".cache/sandbox-vm/kernel/current/vmlinux"))
            .into_iter()
            .chain([PathBuf::from("/usr/share/sandbox-vm/vmlinux")]),
    )
}

/// A guest artifact: `$env` if set, else `rel` in the source tree the binary was built in
/// (found from the executable's path or the build's manifest directory), else `system`.
fn find_artifact(env: &str, rel: &str, system: &str) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(env) {
        return Some(PathBuf::from(p));
    }
    let exe = std::env::current_exe().ok();
    let from_exe = exe
        .iter()
        .flat_map(|e| e.ancestors().skip(1).map(|a| a.join(rel)))
        .collect::<Vec<_>>();
    let built_in = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel);
    first_file(
        from_exe
            .into_iter()
            .chain([built_in, PathBuf::from(system)]),
    )
}

/// The agent initramfs (`images/build-agent-initramfs.sh`), used when there is no agent disk.
pub fn default_initrd() -> Option<PathBuf> {
    find_artifact(
        "SANDBOX_VM_INITRD",
        "images/out/agent-initramfs.cpio",
        "/usr/share/sandbox-vm/agent-initramfs.cpio",
    )
}

/// The guest image with the agent as `/init` (`images/build-agent-disk.sh`), preferred over
/// the initramfs: its blocks reach the guest by DMA instead of emulated copies.
pub fn default_agent_disk() -> Option<PathBuf> {
    find_artifact(
        "SANDBOX_VM_AGENT_DISK",
        "images/out/agent.ext4",
        "/usr/share/sandbox-vm/agent.ext4",
    )
}

/// The host defaults for [`translate::translate`].
pub fn host_defaults() -> translate::Defaults {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    translate::Defaults {
        kernel: default_kernel(),
        initrd: default_initrd(),
        agent_disk: default_agent_disk(),
        max_vcpus: cpus.min(255) as u8,
    }
}
