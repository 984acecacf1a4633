//! What front ends may know of the sandbox-vm VMM, as plain data: the VM config
//! ([`config::VmConfig`] and its `validate`), the control API's requests and responses
//! ([`api`]) with a blocking client ([`client::ApiClient`]), and a snapshot directory's file
//! names ([`snapshot`]). The VMM (`vmm` crate, `sandbox-vm-vmm` binary) builds on the same
//! types; the sandbox library, the CLI and the shim use this crate instead of linking it.

pub mod api;
pub mod client;
pub mod config;
pub mod jail;
pub mod snapshot;

pub use api::{ApiRequest, ApiResponse, ResponseBody, VmState};
pub use client::{ApiClient, ClientError};
pub use config::VmConfig;
