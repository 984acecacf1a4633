//! Shared by the e2e tests: where the built guest artifacts are.

use std::path::PathBuf;

/// `var` if set, else `default`; fails the test with how to build it if the file is absent.
pub fn artifact(var: &str, default: PathBuf, how: &str) -> PathBuf {
    let p = std::env::var_os(var).map(PathBuf::from).unwrap_or(default);
    assert!(
        p.is_file(),
        "{} not found: set {var} or run {how}",
        p.display()
    );
    p
}

/// The VMM binary `sandbox-vm` runs: `sandbox-vm-vmm`, the `vmm` crate's binary, beside
/// it in the target directory (`cargo test --workspace` builds both).
#[allow(dead_code)] // not every test file starts a VMM itself
pub fn vmm_bin() -> PathBuf {
    let p = PathBuf::from(env!("CARGO_BIN_EXE_sandbox-vm")).with_file_name("sandbox-vm-vmm");
    assert!(
        p.is_file(),
        "{} not found: run cargo build -p vmm --bin sandbox-vm-vmm (or cargo test --workspace)",
        p.display()
    );
    p
}

/// The guest kernel from `guest-kernel-config/build.sh` (its cache's `current` link).
pub fn kernel() -> PathBuf {
    let cache = std::env::var_os("SANDBOX_VM_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/sandbox-vm"));
    artifact(
        "SANDBOX_VM_KERNEL",
        cache.join("kernel/current/vmlinux"),
        "guest-kernel-config/build.sh",
    )
}

/// An initramfs built by `scripts/setup.sh` into `images/out/`.
pub fn image(var: &str, file: &str) -> PathBuf {
    artifact(
        var,
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../images/out")
            .join(file),
        "scripts/setup.sh",
    )
}
