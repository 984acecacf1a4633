//! Kubernetes pod networking: containerd 1.6's CRI plugin sets up each pod's network with
//! CNI (Debian's containernetworking-plugins: bridge + host-local, containerd's own
//! loopback) and the shim joins the VM to the pod's netns. containerd runs inside a network
//! namespace this test makes (`nsenter --net`), so the CNI bridge, the pods' subnet and all
//! their traffic stay there. `cri_net_e2e.py` (the CRI client) runs two pods, two VM boots:
//! each gets the IP CRI reports, the pods reach each other (HTTP, ping both ways) and the
//! node reaches them. Afterwards nothing is left: no shim, VMM or virtiofsd, no mount, no
//! pod netns, no veth or tap in the test's netns, no process in it, no CNI cache entry;
//! then the test's netns is deleted.
//!
//! Each pod has one interface, so it restores the NIC template of its VM shape when
//! `$SANDBOX_VM_TEMPLATE_DIR` has one (`tests/test-template.sh` builds it); with
//! `SANDBOX_VM_E2E_TEMPLATES=1` (set by `tests/run.sh` after building them) both pods must
//! have restored it.

mod common;

use std::path::Path;

use common::Containerd;
use test_support::netns::TestNetns;

/// The CNI network's name, bridge and subnet (inside the test's netns only).
const NETWORK: &str = "svm-cri-e2e";
const BRIDGE: &str = "svmcri0";
const GATEWAY: &str = "10.231.12.1";
const SUBNET: &str = "10.231.12.0/24";

fn conflist(dir: &Path) -> String {
    common::bridge_conflist(dir, NETWORK, BRIDGE, SUBNET, GATEWAY)
}

#[test]
fn cri_pods_on_a_cni_bridge_get_their_ips_and_reach_each_other() {
    common::require_host();
    common::require_cni();
    let python = common::venv_python();
    let ns = TestNetns::new("cri");
    let c = Containerd::start_in_netns("cri-net", &ns.path(), conflist);
    c.import_images("k8s.io");
    let stdout = c.run_cri_script(
        &python,
        "cri_net_e2e.py",
        &[ns.path().as_os_str(), GATEWAY.as_ref()],
        "the CRI network e2e script",
    );
    let result: serde_json::Value = stdout
        .lines()
        .find_map(|l| l.strip_prefix("RESULT "))
        .and_then(|j| serde_json::from_str(j).ok())
        .unwrap_or_else(|| panic!("no result: {stdout}"));
    let log = std::fs::read_to_string(&c.log).unwrap_or_default();
    let restored = log.matches("(restored from a template)").count();
    eprintln!("{restored} of 2 pods restored from a template");
    if std::env::var_os("SANDBOX_VM_E2E_TEMPLATES").is_some() {
        assert_eq!(
            restored,
            2,
            "tests/test-template.sh built a NIC template for these pods; both should restore it: {}",
            c.log_tail()
        );
    }
    let pod_netns = common::json_strs(&result, "pod_netns");
    assert_eq!(pod_netns.len(), 2, "{result}");
    let pod_ids = common::json_strs(&result, "pod_ids");
    assert_eq!(pod_ids.len(), 2, "{result}");
    common::assert_pod_network_clean(c, &ns, BRIDGE, &pod_netns, &pod_ids);
}
