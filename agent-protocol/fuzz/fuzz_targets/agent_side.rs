//! Bytes a hostile host sends to the agent (hello, then request frames), read the way the
//! agent's server reads them: `cargo +nightly fuzz run agent_side`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    agent_protocol::fuzz::agent_side(data);
});
