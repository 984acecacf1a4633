//! The host side of the VMM's jail. The jail itself is set up by the VMM process
//! (`sandbox-vm-vmm --jail DIR`, the `vmm` crate's `jail` module); before starting it, the
//! sandbox prepares the vsock directory and the guest-port listeners, and after a crash it
//! removes the jail's cgroup. What both sides agree on is in `vmm_api::jail`, re-exported
//! here.

pub use vmm_api::jail::{
    cgroup_name, create_vsock_dir, listen_guest_port, remove_cgroup, JailError, DIR_NAME, GID, UID,
    VMM_OVERHEAD_MIB, VSOCK_DIR,
};
