//! vsock packets from a hostile guest (TX parsing, the muxer, RX writing):
//! `cargo +nightly fuzz run vsock_packet`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    vmm::devices::virtio::vsock::fuzz::vsock_packet(data);
});
