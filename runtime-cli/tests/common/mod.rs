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

/// The host settings for a sandbox the test makes through the library: the built guest
/// kernel and image, virtiofsd and the VMM of this build.
#[allow(dead_code)]
pub fn host() -> sandbox::HostConfig {
    let mut host = sandbox::HostConfig::resolve(|k| std::env::var_os(k), None);
    host.kernel = Some(kernel());
    host.agent_disk = Some(image("SANDBOX_VM_AGENT_DISK", "agent.ext4"));
    host.initrd = None;
    host.max_vcpus = 1;
    host.vmm_exe = Some(env!("CARGO_BIN_EXE_sandbox-vm").into());
    assert!(
        host.virtiofsd.is_some(),
        "virtiofsd not found: run scripts/setup.sh (it installs it)"
    );
    host
}
