//! virtio-vsock (device type 19) backed by host Unix sockets ("hybrid vsock").
//!
//! - [`packet`]: the wire header and moving packets through descriptor chains.
pub mod packet;
