//! Bytes a hostile agent sends to the host's client (hello reply, replies, events):
//! `cargo +nightly fuzz run client_side`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    agent_protocol::fuzz::client_side(data);
});
