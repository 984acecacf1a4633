//! What the sandbox-vm test suites share: one copy of each helper the integration tests of
//! `runtime-cli`, `shim`, `guest-agent` and `vmm` used to carry each on their own.
//!
//! It depends on none of the project's crates: a helper that needs one of the project's
//! binaries takes its path (a test knows it as `env!("CARGO_BIN_EXE_…")`, which only the
//! binary's own crate can expand).

pub mod artifacts;
pub mod cmd;
pub mod dir;
pub mod guests;
pub mod host;
pub mod netns;
pub mod podman;
pub mod rootfs;
pub mod runtime;

pub use cmd::{ok, run, text, wait_for};
pub use dir::{fresh_dir, unique, TempDir};
