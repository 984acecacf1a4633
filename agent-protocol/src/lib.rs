//! The protocol between the sandbox-vm host runtime and the guest agent.
//!
//! See `README.md` for the wire format. Modules: [`frame`] (length-prefixed
//! JSON), [`messages`] (handshake, requests, replies, events), [`transport`]
//! (vsock, Unix, hybrid vsock), [`client`] (blocking client) and [`id`] (the container id
//! rule both sides apply).

pub mod client;
pub mod clone;
pub mod frame;
#[cfg(any(test, feature = "fuzz"))]
pub mod fuzz;
pub mod id;
pub mod messages;
pub mod network;
pub mod transport;

pub use client::{attach_stdio, handshake, AgentInfo, Client, ClientError};
pub use frame::{read_frame, write_frame, FrameError, MAX_FRAME_LEN};
pub use id::{validate_container_id, IdError, MAX_ID_LEN};
pub use messages::*;
pub use network::NetworkConfig;
pub use oci_spec;
pub use transport::{Endpoint, Listener, Stream, TransportError};
