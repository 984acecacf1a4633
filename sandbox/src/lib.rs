//! One sandbox: a live microVM that containers are added to while it runs.
//!
//! Front ends (the OCI CLI in `runtime-cli`, later the containerd shim) drive this crate;
//! only it talks to the VMM process and the guest agent. Of the VMM it knows only what
//! `vmm-api` says (config, control API, snapshot files, the jail's shared facts).
//!
//! * [`oci`]: bundles and the two pure translations, pod → VM config and container →
//!   agent request;
//! * [`Sandbox`]: the owner of one VM: [`Sandbox::create`] prepares the virtio-fs share,
//!   starts virtiofsd and the VMM process (`sandbox-vm-vmm`) and waits for the agent;
//!   [`Sandbox::add_container`] binds a container's rootfs and mounts into the share and
//!   creates it in the guest; [`Sandbox::stop`] ends it all;
//! * [`SandboxHandle`]: the addresses of a live sandbox, for any process: start, exec,
//!   signal, wait, processes, stats, pause, resume;
//! * [`stdio`]: host ends of a process's streams;
//! * [`image`]: the ext4 rootfs copy (the `block` rootfs mode).

pub mod handle;
pub mod image;
pub mod jail;
pub mod network;
pub mod oci;
pub mod paths;
pub mod process;
pub mod sandbox;
pub mod share;
pub mod stdio;
pub mod template;
pub mod virtiofsd;
pub mod vmm_process;

pub use handle::{HandleError, SandboxHandle};
pub use paths::SandboxPaths;
pub use sandbox::{Sandbox, SandboxConfig, SandboxError};
