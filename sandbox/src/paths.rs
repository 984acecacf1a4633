//! The files of one sandbox, all in its state directory.

use std::path::{Path, PathBuf};

use agent_protocol::{Endpoint, AGENT_VSOCK_PORT};

use crate::oci::translate::VmPaths;

/// Where a sandbox keeps its files: `<dir>/vm.json` (the VM config the VMM process reads),
/// `vmm.sock` (its control API), `vmm.log`, `vsock/vsock.sock` (the hybrid vsock: the agent;
/// in a directory of its own with the `vsock.sock_PORT` listeners of guest → host
/// connections, which a jailed VMM can reach: see [`crate::jail::create_vsock_dir`]),
/// `console.log` (the guest's serial line), `virtiofsd.sock` / `virtiofsd.log`, `share/`
/// (the virtio-fs share), for a block rootfs `rootfs.img`, and with a pod network
/// `network.json` (the taps to remove), and in a pod's cgroup `cgroup.json` (the cgroups
/// to remove).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SandboxPaths {
    pub dir: PathBuf,
    pub vm_config: PathBuf,
    pub api_sock: PathBuf,
    pub vmm_log: PathBuf,
    pub vsock: PathBuf,
    pub console_log: PathBuf,
    pub fs_socket: PathBuf,
    pub fs_log: PathBuf,
    pub share: PathBuf,
    pub rootfs_disk: PathBuf,
    pub network_state: PathBuf,
    pub cgroup_state: PathBuf,
}

impl SandboxPaths {
    /// The layout of `dir`.
    pub fn in_dir(dir: &Path) -> SandboxPaths {
        SandboxPaths {
            dir: dir.to_path_buf(),
            vm_config: dir.join("vm.json"),
            api_sock: dir.join("vmm.sock"),
            vmm_log: dir.join("vmm.log"),
            vsock: dir.join("vsock").join("vsock.sock"),
            console_log: dir.join("console.log"),
            fs_socket: dir.join("virtiofsd.sock"),
            fs_log: dir.join("virtiofsd.log"),
            share: dir.join("share"),
            rootfs_disk: dir.join("rootfs.img"),
            network_state: dir.join(crate::network::STATE_FILE),
            cgroup_state: dir.join("cgroup.json"),
        }
    }

    /// What the pod → VM translation needs.
    pub fn vm_paths(&self) -> VmPaths {
        VmPaths {
            vsock: self.vsock.clone(),
            console_log: self.console_log.clone(),
            fs_socket: self.fs_socket.clone(),
            rootfs_disk: self.rootfs_disk.clone(),
        }
    }

    /// The guest agent's endpoint.
    pub fn agent_endpoint(&self) -> Endpoint {
        Endpoint::HybridVsock {
            path: self.vsock.clone(),
            port: AGENT_VSOCK_PORT,
        }
    }
}
