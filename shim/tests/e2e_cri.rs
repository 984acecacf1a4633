//! Kubernetes' view: a real CRI client (`cri_e2e.py`, on PyPI's
//! container-runtime-interface-api in a venv under the target directory) drives the CRI
//! plugin of a containerd 1.6 started by the test, with runtime handler `sandbox-vm`:
//! two pods (two VM boots), containers joining a running pod's VM, ExecSync, exit codes,
//! CRI log files, StopContainer, StopPodSandbox + RemovePodSandbox leaving nothing.

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
