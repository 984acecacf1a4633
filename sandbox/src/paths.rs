//! The files of one sandbox, all in its state directory.

use std::path::{Path, PathBuf};

use agent_protocol::{Endpoint, AGENT_VSOCK_PORT};

use crate::oci::translate::VmPaths;
use crate::share::ShareKind;

/// One share's files (see [`SandboxPaths::share_files`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShareFiles<'a> {
    /// The host directory virtiofsd serves.
    pub dir: &'a Path,
    /// virtiofsd's vhost-user socket.
    pub socket: &'a Path,
    /// virtiofsd's log.
    pub log: &'a Path,
}

/// Where a sandbox keeps its files: `<dir>/vm.json` (the VM config the VMM process reads),
/// `vmm.sock` (its control API), `vmm.log`, `vsock/vsock.sock` (the hybrid vsock: the agent;
/// in a directory of its own with the `vsock.sock_PORT` listeners of guest → host
/// connections, which a jailed VMM can reach: see [`crate::jail::create_vsock_dir`]),
/// `console.log` (the guest's serial line), `virtiofsd.sock` / `virtiofsd.log` and `share/`
/// (the containers' rootfs share), `virtiofsd-volumes.sock` / `virtiofsd-volumes.log` and
/// `volumes/` (the bind-mount share), for a block rootfs `rootfs.img`, with a pod
/// network `network.json` (the taps to remove), and in a pod's cgroup `cgroup.json` (the
/// cgroups to remove).
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
    pub volumes_fs_socket: PathBuf,
    pub volumes_fs_log: PathBuf,
    pub volumes: PathBuf,
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
            volumes_fs_socket: dir.join("virtiofsd-volumes.sock"),
            volumes_fs_log: dir.join("virtiofsd-volumes.log"),
            volumes: dir.join("volumes"),
            rootfs_disk: dir.join("rootfs.img"),
            network_state: dir.join(crate::network::STATE_FILE),
            cgroup_state: dir.join("cgroup.json"),
        }
    }

    /// The host directory, virtiofsd socket and virtiofsd log of a share.
    pub fn share_files(&self, kind: ShareKind) -> ShareFiles<'_> {
        match kind {
            ShareKind::Rootfs => ShareFiles {
                dir: &self.share,
                socket: &self.fs_socket,
                log: &self.fs_log,
            },
            ShareKind::Volumes => ShareFiles {
                dir: &self.volumes,
                socket: &self.volumes_fs_socket,
                log: &self.volumes_fs_log,
            },
        }
    }

    /// What the pod → VM translation needs.
    pub fn vm_paths(&self) -> VmPaths {
        VmPaths {
            vsock: self.vsock.clone(),
            console_log: self.console_log.clone(),
            fs_socket: self.fs_socket.clone(),
            volumes_fs_socket: self.volumes_fs_socket.clone(),
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
