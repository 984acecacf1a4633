//! containerd 2.x's Sandbox API: with `sandboxer = "shim"` in the runtime's table, CRI
//! asks the shim itself for the pod (CreateSandbox, StartSandbox, …, ShutdownSandbox) and
//! the VM is the sandbox: no pause container. containerd 2.1 runs inside a network
//! namespace of the test's own with a CNI bridge (2.1.x crashes on host-network pods in
//! this mode); `cri_sandbox_api_e2e.py` runs one pod and one container in it (checks in
//! its docs), then stops and removes the pod. Afterwards nothing is left: no shim, VMM or
//! virtiofsd, no mount or VM state, no veth or tap, no pod netns; and containerd never
//! had a pause container.
//!
//! Needs `$SANDBOX_VM_CONTAINERD_2_1` (a directory with containerd 2.1.x and ctr). The
//! pod's VM restores the NIC template of its shape when `$SANDBOX_VM_TEMPLATE_DIR` has
//! one (`tests/test-template.sh`); with `SANDBOX_VM_E2E_TEMPLATES=1` it must.

mod common;

use std::path::Path;

use common::{Containerd, Setup, Version};
use test_support::netns::TestNetns;

const NETWORK: &str = "svm-sbapi-e2e";
const BRIDGE: &str = "svmsbapi0";
const GATEWAY: &str = "10.231.14.1";
const SUBNET: &str = "10.231.14.0/24";

fn conflist(dir: &Path) -> String {
    common::bridge_conflist(dir, NETWORK, BRIDGE, SUBNET, GATEWAY)
}

#[test]
fn a_cri_pod_through_the_sandbox_api_is_one_vm_without_a_pause_container() {
    common::require_host();
    common::require_cni();
    let python = common::venv_python();
    let ns = TestNetns::new("sbapi");
    let setup = Setup {
        version: Version::V2_1,
        netns: Some(ns.path()),
        runtime_extra: r#"sandboxer = "shim""#.into(),
    };
    let c = Containerd::launch("sbapi", setup, conflist);
    c.import_images("k8s.io");
    let state = c.dir.join("state");
    let stdout = c.run_cri_script(
        &python,
        "cri_sandbox_api_e2e.py",
        &[state.as_os_str(), GATEWAY.as_ref()],
        "the Sandbox API e2e script",
    );
    let result: serde_json::Value = stdout
        .lines()
        .find_map(|l| l.strip_prefix("RESULT "))
        .and_then(|j| serde_json::from_str(j).ok())
        .unwrap_or_else(|| panic!("no result: {stdout}"));
    let log = std::fs::read_to_string(&c.log).unwrap_or_default();
    for call in ["create sandbox", "shutdown sandbox"] {
        assert!(
            log.contains(call),
            "the shim never logged {call:?}: {}",
            c.log_tail()
        );
    }
    let restored = log.matches("(restored from a template)").count();
    eprintln!("{restored} of 1 pod restored from a template");
    if std::env::var_os("SANDBOX_VM_E2E_TEMPLATES").is_some() {
        assert_eq!(
            restored,
            1,
            "the pod should restore the NIC template: {}",
            c.log_tail()
        );
    }
    let pod_id = result["pod_id"].as_str().expect("pod_id");
    // A pause container would be a containerd container named after the pod.
    assert!(
        !log.contains(&format!("create {pod_id}")),
        "the shim created a task for the pod itself"
    );

    let pod_netns = result["pod_netns"].as_str().expect("pod_netns");
    common::assert_pod_network_clean(c, &ns, BRIDGE, &[pod_netns], &[pod_id]);
}
