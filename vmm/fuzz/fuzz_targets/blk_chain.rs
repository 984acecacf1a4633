//! virtio-blk descriptor chains from a hostile guest: `cargo +nightly fuzz run blk_chain`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    vmm::devices::virtio::blk::fuzz::blk_chain(data);
});
