//! The host settings for a sandbox an e2e test makes through the `sandbox` library: the
//! built guest kernel and image, virtiofsd and the VMM of this build.

use std::io::Read;
use std::os::fd::OwnedFd;

use sandbox::oci::translate::ContainerPlan;
use sandbox::stdio::HostIo;
use sandbox::{Sandbox, SandboxOps};
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

/// Adds container `id` (`plan`) to `sb`, runs it to its end, removes it and returns its
/// output; a non-zero exit fails the test.
#[allow(dead_code)] // not every test that includes this module runs a container
pub fn run_to_end(sb: &Sandbox, id: &str, plan: ContainerPlan) -> String {
    let (r, w): (OwnedFd, OwnedFd) = nix::unistd::pipe().unwrap();
    let io = HostIo {
        stdin: None,
        stdout: Some(w.try_clone().unwrap()),
        stderr: Some(w),
    };
    let (_, pumps) = sb.add_container(plan, io).unwrap();
    sb.start(id).unwrap();
    let exit = sb.wait(id, None).unwrap();
    for p in pumps.outputs {
        p.join().unwrap();
    }
    let mut out = String::new();
    std::fs::File::from(r).read_to_string(&mut out).unwrap();
    assert_eq!(exit.status.as_shell_status(), 0, "{out}");
    sb.remove_container(id, false).unwrap();
    out
}
