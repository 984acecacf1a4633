//! Where the built guest artifacts are: the guest kernel and the images of
//! `scripts/setup.sh`. A missing one fails the test saying how to build it.

use std::path::{Path, PathBuf};
use std::process::Command;

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

/// An image built by `scripts/setup.sh` into `images/out/` (or the file `var` names).
pub fn image(var: &str, file: &str) -> PathBuf {
    artifact(
        var,
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../images/out")
            .join(file),
        "scripts/setup.sh",
    )
}

/// Points `cmd` (a `sandbox-vm`, or something that runs it) at the guest kernel and the
/// agent disk image.
pub fn with_guest(cmd: &mut Command) -> &mut Command {
    cmd.env("SANDBOX_VM_KERNEL", kernel()).env(
        "SANDBOX_VM_AGENT_DISK",
        image("SANDBOX_VM_AGENT_DISK", "agent.ext4"),
    )
}

/// A binary of this workspace built beside the running test (`cargo test --workspace`
/// builds every package's binaries into the test's target directory), for tests outside
/// the binary's own package.
pub fn built_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test's own path");
    // target/<profile>/deps/<test> → target/<profile>/<name>
    let p = exe
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join(name))
        .expect("the test runs from a target directory");
    assert!(
        p.is_file(),
        "{} not found: build it first (cargo test --workspace builds it)",
        p.display()
    );
    p
}
