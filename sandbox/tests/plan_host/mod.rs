//! The host settings for a sandbox an e2e test makes through the `sandbox` library: the
//! built guest kernel and image, virtiofsd and the VMM of this build.

use test_support::artifacts::{built_binary, image, kernel};

pub fn host() -> sandbox::HostConfig {
    let mut host = sandbox::HostConfig::resolve(|k| std::env::var_os(k), None);
    host.kernel = Some(kernel());
    host.agent_disk = Some(image("SANDBOX_VM_AGENT_DISK", "agent.ext4"));
    host.initrd = None;
    host.max_vcpus = 1;
    host.vmm_exe = Some(built_binary("sandbox-vm-vmm"));
    assert!(
        host.virtiofsd.is_some(),
        "virtiofsd not found: run scripts/setup.sh (it installs it)"
    );
    host
}
