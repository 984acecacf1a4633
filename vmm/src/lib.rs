//! sandbox-vm's virtual machine monitor: a minimal KVM VMM built on the rust-vmm crates.

pub mod bus;
pub mod devices;
pub mod event_loop;
pub mod layout;
pub mod memory;
