//! Kubernetes' view: a real CRI client (`cri_e2e.py`, on PyPI's
//! container-runtime-interface-api in a venv under the target directory) drives the CRI
//! plugin of a containerd 1.6 started by the test, with runtime handler `sandbox-vm`:
//! two pods (two VM boots), containers joining a running pod's VM, ExecSync, exit codes,
//! CRI log files, StopContainer, StopPodSandbox + RemovePodSandbox leaving nothing.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{text, Containerd, BUSYBOX};

#[test]
fn cri_pods_get_one_vm_each_and_leave_nothing_behind() {
    common::require_host();
    let python = common::venv_python();
    let c = Containerd::start("cri");
    c.import_images("k8s.io");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/cri_e2e.py");
    let out = common::run(
        Command::new(&python)
            .arg(&script)
            .arg(&c.sock)
            .arg(c.dir.join("logs"))
            .arg(&c.vm_root)
            .arg(BUSYBOX),
    );
    eprintln!("{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "the CRI e2e script failed\ncontainerd log:\n{}",
        c.log_tail()
    );
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
