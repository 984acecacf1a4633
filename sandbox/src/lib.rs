//! One sandbox: a live microVM that containers are added to while it runs.
//!
//! Front ends (the OCI CLI in `runtime-cli`, the containerd shim) drive this crate; only it
//! talks to the VMM process and the guest agent.
//!
//! * [`HostConfig`]: what the host gives every sandbox, resolved once by each binary;
//! * [`oci`]: bundles, the annotation table, and the two pure translations, pod → VM
//!   config and container → agent request;
//! * [`PodPlan`]: everything needed to start a sandbox, planned from a spec, its role and
//!   the host, before anything exists; [`PodPlan::member`] for the pod's later containers;
//! * [`Sandbox`]: the one owner of a VM: [`Sandbox::create`] prepares the virtio-fs share,
//!   starts virtiofsd and the VMM process and waits for the agent;
//!   [`Sandbox::add_container`] binds a container's rootfs and mounts into the share and
//!   creates it in the guest; [`Sandbox::stop`] ends it all;
//! * [`SandboxOps`]: start, exec, signal, wait, processes, stats, pause, resume, for the
//!   owner and for any other process ([`SandboxHandle`], opened from the state directory);
//! * [`stdio`]: host ends of a process's streams;
//! * [`image`]: the ext4 rootfs copy (the `block` rootfs mode);
//! * [`cgroup`]: the pod's cgroup on the host, where its VMM, virtiofsd and shim run.

pub mod cgroup;
pub mod handle;
pub mod host;
pub mod image;
pub mod jail;
pub mod network;
pub mod nsfile;
pub mod oci;
pub mod paths;
pub mod plan;
pub mod process;
pub mod resize;
pub mod sandbox;
pub mod share;
pub mod stdio;
pub mod template;
pub mod virtiofsd;
pub mod vmm_process;

pub use agent_protocol::{validate_container_id, ContainerStats, ExitInfo, ProcessInfo};
pub use handle::{HandleError, SandboxHandle, SandboxOps};
pub use host::HostConfig;
pub use paths::SandboxPaths;
pub use plan::{HostProbe, PlanError, PodPlan, RealHost, Role};
pub use sandbox::{Sandbox, SandboxError};

/// The exit status reported for a process whose VM ended before it reported one (a guest
/// crash, a killed VMM): 255, as a shell reports an unknown failure.
pub const LOST_EXIT_STATUS: i32 = 255;
