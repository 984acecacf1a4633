//! The containerd version matrix: the same checks against Debian 12's containerd 1.6.20,
//! trixie's 1.7.24 and sid's 2.1.x (`scripts/fetch-containerd.sh`; a `version = 2` config
//! for 1.x, `version = 3` for 2.x), one containerd per version, run inside a network
//! namespace of the test's own with a CNI bridge (as in e2e_cri_net):
//! * `ctr run --rm` prints the guest's kernel release, and nothing is left after it;
//! * a CRI pod on the bridge (`cri_versions_e2e.py`) runs two containers in its one VM,
//!   ExecSync works in both, and after StopPodSandbox + RemovePodSandbox nothing is left:
//!   no shim, VMM, virtiofsd, mount, state, veth, tap, CNI cache entry or netns.
//!
//! Both VMs restore the e2e templates (`tests/test-template.sh`) when they exist; with
//! `SANDBOX_VM_E2E_TEMPLATES=1` they must. Every version is tried; the test prints a table
//! (version, check, result, time) and fails if any failed. The rest of what the shim does
//! with containerd (exec/kill through ctr, CRI logs, stats, cgroups, pod-to-pod traffic) is
//! checked against 1.6 by e2e_ctr, e2e_cri and e2e_cri_net.

mod common;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::time::{Duration, Instant};

use common::{Containerd, Setup, Version, BUSYBOX, RUNTIME};
use test_support::host::kernel_release;
use test_support::netns::TestNetns;
use test_support::text;

/// The CNI network's name, bridge and subnet (inside the test's netns only).
const NETWORK: &str = "svm-versions-e2e";
const BRIDGE: &str = "svmver0";
const GATEWAY: &str = "10.231.13.1";
const SUBNET: &str = "10.231.13.0/24";
/// The containerd namespace of the `ctr` check.
const NS: &str = "shim-e2e";

/// `ctr run --rm` of `uname -r`: the guest's kernel, and nothing left after.
fn ctr_run_shows_the_guest_kernel(c: &Containerd) {
    c.import_images(NS);
    let args = [
        "run",
        "--runtime",
        RUNTIME,
        "--rm",
        BUSYBOX,
        "uname1",
        "uname",
        "-r",
    ];
    let out = c.ctr(NS, &args);
    let release = text(&out.stdout).trim().to_string();
    assert!(
        out.status.success(),
        "ctr run failed: {}\ncontainerd log:\n{}",
        text(&out.stderr),
        c.log_tail()
    );
    assert_ne!(
        release,
        kernel_release(),
        "the container saw the host's kernel"
    );
    assert!(
        release.contains("sandbox-vm"),
        "not our guest kernel: {release:?}; stderr: {}",
        text(&out.stderr)
    );
    let left = c.wait_clean(Duration::from_secs(20));
    assert!(left.is_empty(), "left behind after ctr run --rm: {left:#?}");
}

/// The CRI pod of `cri_versions_e2e.py`; returns its RESULT.
fn cri_pod_runs_two_containers_in_one_vm(c: &Containerd, python: &Path) -> serde_json::Value {
    c.import_images("k8s.io");
    let stdout = c.run_cri_script(
        python,
        "cri_versions_e2e.py",
        &[GATEWAY.as_ref()],
        "the CRI version-matrix script",
    );
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("RESULT "))
        .and_then(|j| serde_json::from_str(j).ok())
        .unwrap_or_else(|| panic!("no result: {stdout}"))
}

/// One check of one version: its outcome (the panic's message if it failed) and time.
struct Outcome {
    version: Version,
    check: &'static str,
    result: Result<(), String>,
    time: Duration,
}

fn attempt(version: Version, check: &'static str, f: impl FnOnce()) -> Outcome {
    let t0 = Instant::now();
    let result = catch_unwind(AssertUnwindSafe(f)).map_err(|e| {
        e.downcast_ref::<String>()
            .cloned()
            .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "panicked".into())
    });
    Outcome {
        version,
        check,
        result,
        time: t0.elapsed(),
    }
}

/// Every check against `version`, on one containerd.
fn check_version(version: Version, python: &Path) -> Vec<Outcome> {
    let mut outcomes = Vec::new();
    let ns = TestNetns::new(&format!("v{}", version.name().replace('.', "")));
    let setup = Setup {
        version,
        netns: Some(ns.path()),
        ..Setup::default()
    };
    let mut containerd = None;
    outcomes.push(attempt(version, "containerd starts", || {
        let conflist = |d: &Path| common::bridge_conflist(d, NETWORK, BRIDGE, SUBNET, GATEWAY);
        let tag = format!("ver{}", version.name());
        containerd = Some(Containerd::launch(&tag, setup, conflist));
    }));
    let Some(c) = containerd else {
        return outcomes;
    };
    outcomes.push(attempt(version, "ctr run: guest kernel", || {
        ctr_run_shows_the_guest_kernel(&c)
    }));
    let mut result = None;
    outcomes.push(attempt(
        version,
        "CRI pod: 2 containers, 1 VM, ExecSync",
        || {
            result = Some(cri_pod_runs_two_containers_in_one_vm(&c, python));
        },
    ));
    let log = std::fs::read_to_string(&c.log).unwrap_or_default();
    let restored = log.matches("(restored from a template)").count();
    eprintln!(
        "containerd {}: {restored} of 2 VMs restored from a template",
        version.name()
    );
    outcomes.push(attempt(version, "nothing left", move || {
        if std::env::var_os("SANDBOX_VM_E2E_TEMPLATES").is_some() {
            assert_eq!(restored, 2, "both VMs should restore the e2e templates");
        }
        let result = result.expect("the CRI check failed");
        let pod_netns = common::json_strs(&result, "pod_netns");
        let pod_ids = common::json_strs(&result, "pod_ids");
        common::assert_pod_network_clean(c, &ns, BRIDGE, &pod_netns, &pod_ids);
    }));
    outcomes
}

#[test]
fn ctr_and_cri_pods_work_on_containerd_1_6_1_7_and_2_1() {
    common::require_host();
    common::require_cni();
    let python = common::venv_python();
    let outcomes: Vec<Outcome> = Version::ALL
        .iter()
        .flat_map(|&v| check_version(v, &python))
        .collect();
    eprintln!("\n| containerd | check | result | time |\n|---|---|---|---|");
    for o in &outcomes {
        let r = match &o.result {
            Ok(()) => "pass".to_string(),
            Err(e) => format!("FAIL: {}", e.lines().next().unwrap_or("")),
        };
        eprintln!(
            "| {} | {} | {r} | {:.1?} |",
            o.version.name(),
            o.check,
            o.time
        );
    }
    let failed: Vec<String> = outcomes
        .iter()
        .filter_map(|o| {
            let e = o.result.as_ref().err()?;
            Some(format!(
                "containerd {} / {}: {e}",
                o.version.name(),
                o.check
            ))
        })
        .collect();
    assert!(failed.is_empty(), "failed:\n{}", failed.join("\n\n"));
}
