//! Arbitrary config.json through validation and the OCI translation (`vm_config`,
//! `container_request`): `cargo +nightly fuzz run oci_translate`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    sandbox::oci::fuzz::oci_translate(data);
});
