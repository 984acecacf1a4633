//! Kubernetes' view: a real CRI client (`cri_e2e.py`, on PyPI's
//! container-runtime-interface-api in a venv under the target directory) drives the CRI
//! plugin of a containerd 1.6 started by the test, with runtime handler `sandbox-vm`:
//! two pods (two VM boots), containers joining a running pod's VM, ExecSync, exit codes,
//! CRI log files, StopContainer, StopPodSandbox + RemovePodSandbox leaving nothing.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{text, Containerd, BUSYBOX};

/// The CRI client's package, pinned.
const CRI_API: &str = "container-runtime-interface-api==2.0.1";

/// A venv with the CRI client, made once per target directory (pip needs the network the
/// first time; without it the test fails saying so).
fn venv_python() -> PathBuf {
    let target = Path::new(common::SHIM)
        .parent()
        .and_then(Path::parent)
        .expect("target dir");
    let venv = target.join("cri-venv");
    let python = venv.join("bin/python");
    let ready = |p: &Path| {
        Command::new(p)
            .args(["-c", "import cri_api.v1.api_pb2_grpc, grpc"])
            .status()
            .is_ok_and(|s| s.success())
    };
    if ready(&python) {
        return python;
    }
    let out = common::run(Command::new("python3").arg("-m").arg("venv").arg(&venv));
    assert!(
        out.status.success(),
        "cannot run this e2e test: python3 -m venv failed (apt-get install python3-venv): {}",
        text(&out.stderr)
    );
    let out = common::run(Command::new(venv.join("bin/pip")).args(["install", "-q", CRI_API]));
    assert!(
        out.status.success(),
        "cannot run this e2e test: pip install {CRI_API} failed: {}",
        text(&out.stderr)
    );
    assert!(
        ready(&python),
        "cannot run this e2e test: the CRI client does not import"
    );
    python
}

#[test]
fn cri_pods_get_one_vm_each_and_leave_nothing_behind() {
    common::require_host();
    let python = venv_python();
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
