//! The host side of the VMM's jail. The jail itself is set up by the VMM process
//! (`sandbox-vm-vmm --jail DIR`, the `vmm` crate's `jail` module); before starting it, the
//! sandbox prepares the vsock directory and the guest-port listeners, and after a crash it
//! removes the jail's cgroup. What both sides agree on is in `vmm_api::jail`, re-exported
//! here.

use std::path::{Path, PathBuf};

pub use vmm_api::jail::{
    cgroup_name, create_vsock_dir, listen_guest_port, remove_cgroup, JailError, DIR_NAME, GID, UID,
    VMM_OVERHEAD_MIB, VSOCK_DIR,
};

/// The jail directory for a VMM whose config is `vm_config` (beside it in the state
/// directory), or None when `$SANDBOX_VM_JAIL` is `off` (a host without a memory cgroup,
/// or debugging the VMM with host tools).
pub fn dir_for(vm_config: &Path) -> Option<PathBuf> {
    if std::env::var_os("SANDBOX_VM_JAIL").is_some_and(|v| v == "off") {
        return None;
    }
    Some(vm_config.parent()?.join(DIR_NAME))
}
