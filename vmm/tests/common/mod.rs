//! What the KVM tests with a tiny guest share: its directory and VM config.

use std::io::Write;

use test_support::TempDir;
use vmm::config::{SerialOutput, VmConfig};
use vmm::testing::tiny_elf;

/// Where the tiny guests' code is loaded (and starts).
pub const LOAD_ADDR: u64 = 0x20_0000;

/// A directory (removed on drop) holding `guest.elf`: `code` at [`LOAD_ADDR`] with 4 KiB
/// of memory.
pub struct GuestDir(pub TempDir);

impl GuestDir {
    /// In `$TMPDIR/vmm-<name>-<pid>`.
    pub fn new(name: &str, code: &[u8]) -> Self {
        let d = TempDir::named(&format!("vmm-{name}"));
        std::fs::File::create(d.join("guest.elf"))
            .unwrap()
            .write_all(&tiny_elf(LOAD_ADDR, code, 0x1000))
            .unwrap();
        Self(d)
    }

    /// The guest with 16 MiB, `vcpus` vCPUs and no serial output.
    pub fn config(&self, vcpus: u8) -> VmConfig {
        let mut c = VmConfig::new(self.0.join("guest.elf"));
        c.mem_mib = 16;
        c.vcpus = vcpus;
        c.serial = SerialOutput::Off;
        c
    }
}
