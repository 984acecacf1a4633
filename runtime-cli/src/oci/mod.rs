//! The OCI side: bundles, the spec → VM translation, and where the guest artifacts are.

pub mod bundle;
pub mod translate;

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

/// The agent initramfs: `$SANDBOX_VM_INITRD`, else `images/out/agent-initramfs.cpio` in the
/// source tree the binary was built in, else the system install location.
pub fn default_initrd() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("SANDBOX_VM_INITRD") {
        return Some(PathBuf::from(p));
    }
    const REL: &str = "images/out/agent-initramfs.cpio";
    let exe = std::env::current_exe().ok();
    let from_exe = exe
        .iter()
        .flat_map(|e| e.ancestors().skip(1).map(|a| a.join(REL)))
        .collect::<Vec<_>>();
    let built_in = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(REL);
    first_file(from_exe.into_iter().chain([
        built_in,
        PathBuf::from("/usr/share/sandbox-vm/agent-initramfs.cpio"),
    ]))
}

/// The host defaults for [`translate::translate`].
pub fn host_defaults() -> translate::Defaults {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    translate::Defaults {
        kernel: default_kernel(),
        initrd: default_initrd(),
        agent_disk: std::env::var_os("SANDBOX_VM_AGENT_DISK").map(PathBuf::from),
        max_vcpus: cpus.min(255) as u8,
    }
}
