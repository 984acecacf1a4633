//! virtio-vsock (device type 19) backed by host Unix sockets ("hybrid vsock").
//!
//! - [`packet`]: the wire header and moving packets through descriptor chains.
pub mod backend;
pub mod connection;
pub mod muxer;
#[cfg(test)]
mod muxer_tests;
pub mod packet;
#[cfg(test)]
pub mod test_backend;
pub mod unix;
#[cfg(test)]
mod unix_tests;
