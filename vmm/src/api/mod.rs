//! The VMM's side of its control API. The wire types and the client live in the
//! `vmm-api` crate (front ends use them without linking the VMM); this module adds the
//! server, [`server::ApiServer`], which answers on its own thread and reaches the VM only
//! through a [`crate::control::VmControl`].

pub mod server;
#[cfg(test)]
mod server_tests;

pub use server::{ApiServer, ServerError};
pub use vmm_api::api::*;
pub use vmm_api::client::{ApiClient, ClientError};
