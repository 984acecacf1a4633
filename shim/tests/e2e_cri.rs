//! Kubernetes' view: a real CRI client (`cri_e2e.py`, on PyPI's
//! container-runtime-interface-api in a venv under the target directory) drives the CRI
//! plugin of a containerd 1.6 started by the test, with runtime handler `sandbox-vm`:
//! two pods (two VM boots), containers joining a running pod's VM, ExecSync, exit codes,
//! CRI log files, StopContainer, StopPodSandbox + RemovePodSandbox leaving nothing; the
//! second pod is requested as kubelet does (a cgroup parent): its host processes run in
//! its cgroup, PodSandboxStats and ContainerStats report them, and its cgroup goes with it.

mod common;

use std::time::Duration;

use common::Containerd;

#[test]
fn cri_pods_get_one_vm_each_and_leave_nothing_behind() {
    common::require_host();
    let python = common::venv_python();
    let c = Containerd::start("cri");
    c.import_images("k8s.io");
    let stdout = c.run_cri_script(&python, "cri_e2e.py", &[], "the CRI e2e script");
    assert!(
        stdout.contains("MEASUREMENTS {"),
        "no measurements: {stdout}"
    );
    let left = c.wait_clean(Duration::from_secs(30));
    assert!(
        left.is_empty(),
        "left behind after RemovePodSandbox: {left:#?}"
    );
}

/// Host memory and CPU of idle kubelet-style pods (`cri_pod_overhead.py`), for the
/// README's RuntimeClass `overhead.podFixed`. A measurement, run by hand with release
/// binaries: `SANDBOX_VM_VMM=target/release/sandbox-vm-vmm cargo test --release -p shim
/// --test e2e_cri -- --ignored idle_pod_overhead --nocapture` (`SANDBOX_VM_OVERHEAD_PODS`,
/// default 3).
#[test]
#[ignore = "a measurement for the README (release binaries, several boots), run by hand"]
fn idle_pod_overhead() {
    common::require_host();
    let python = common::venv_python();
    let c = Containerd::start("overhead");
    c.import_images("k8s.io");
    let n = std::env::var("SANDBOX_VM_OVERHEAD_PODS").unwrap_or_else(|_| "3".into());
    let stdout = c.run_cri_script(
        &python,
        "cri_pod_overhead.py",
        &[std::ffi::OsStr::new(&n)],
        "the pod overhead script",
    );
    assert!(stdout.contains("OVERHEAD {"), "no measurements: {stdout}");
    let left = c.wait_clean(Duration::from_secs(30));
    assert!(left.is_empty(), "left behind: {left:#?}");
}
