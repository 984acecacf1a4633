//! sandbox-vm's virtual machine monitor: a minimal KVM VMM built on the rust-vmm crates.
//!
//! `builder::build` turns a `config::VmConfig` into a `vm::Vm`; `Vm::run` runs it until the
//! guest stops. See `docs/design.md` for the threads and moving parts.

pub mod api;
pub mod boot;
pub mod builder;
pub mod bus;
pub mod compat;
pub mod control;
pub mod cpu;
pub mod devices;
pub mod event_loop;
pub mod exits;
pub mod jail;
pub mod kick;
pub mod kvm;
pub mod layout;
pub mod memory;
pub mod mptable;
pub mod persist;
pub mod seccomp;
pub mod stop;
#[cfg(any(test, feature = "testing"))]
#[doc(hidden)]
pub mod testing;
pub mod vcpu;
pub mod vm;

/// The VM config lives in `vmm-api` (front ends use it without this crate).
pub use vmm_api::config;
