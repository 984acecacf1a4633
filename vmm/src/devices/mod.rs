//! Devices: legacy (serial, i8042) and virtio-mmio.

pub mod interrupt;
pub mod legacy;
pub mod virtio;
