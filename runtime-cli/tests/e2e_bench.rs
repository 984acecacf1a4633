//! `sandbox-vm bench isolation` end to end, with runc and sandbox-vm, one run each: one
//! guest boot (about a minute on hosts that emulate guest kernel mode). The run gives the
//! isolation probes, the cost loops and the idle memory together.
//!
//! Asserts: runc LEAKs the host kernel's identity and module list, sandbox-vm is ISOLATED
//! on both; the JSON report parses and has the env block and both runtimes' costs; the
//! CSV has the verdicts; the SVG chart exists and has text.
//!
//! Needs root, runc, /dev/kvm, the guest kernel and agent image (as e2e_oci) and the
//! static probe (`SANDBOX_VM_PROBE` or tests/probe/build-static.sh's output).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use test_support::artifacts::{artifact, image, kernel};

fn probe() -> PathBuf {
    artifact(
        "SANDBOX_VM_PROBE",
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../target/x86_64-unknown-linux-gnu/guest/sandbox-vm-probe"),
        "tests/probe/build-static.sh",
    )
}

fn runc() -> PathBuf {
    ["/usr/sbin/runc", "/usr/bin/runc", "/usr/local/sbin/runc"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .expect("runc not found: install it (scripts/setup.sh does)")
}

fn verdict(report: &serde_json::Value, probe: &str, runtime: &str) -> String {
    let row = report["isolation"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["probe"] == probe)
        .unwrap_or_else(|| panic!("no isolation row {probe:?}"));
    row["cells"][runtime]["verdict"]
        .as_str()
        .unwrap_or_else(|| panic!("no {runtime} cell in {row}"))
        .to_string()
}

#[test]
fn runc_leaks_the_host_kernel_and_sandbox_vm_does_not() {
    let dir = std::env::temp_dir().join(format!("svm-e2e-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let me = env!("CARGO_BIN_EXE_sandbox-vm");
    let t = Instant::now();
    let out = Command::new(me)
        .env("SANDBOX_VM_KERNEL", kernel())
        .env(
            "SANDBOX_VM_INITRD",
            image("SANDBOX_VM_INITRD", "agent-initramfs.cpio"),
        )
        .args(["bench", "isolation", "--runs", "1", "--budget-ms", "100"])
        .arg("--runtime")
        .arg(format!("runc={}", runc().display()))
        .arg("--runtime")
        .arg(format!("sandbox-vm={me}"))
        .arg("--probe")
        .arg(probe())
        .arg("--out")
        .arg(&dir)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!(
        "bench took {:.1} s\n{stdout}\n{}",
        t.elapsed().as_secs_f64(),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "bench failed: {:?}", out.status);

    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("report.json")).unwrap()).unwrap();
    for probe in [
        "kernel release",
        "/proc/version",
        "boot_id",
        "module list (/proc/modules, /sys/module)",
    ] {
        assert_eq!(verdict(&report, probe, "runc"), "LEAK", "runc: {probe}");
        assert_eq!(
            verdict(&report, probe, "sandbox-vm"),
            "ISOLATED",
            "sandbox-vm: {probe}"
        );
    }
    let env = &report["env"];
    assert!(env["host_kernel"].as_str().is_some_and(|k| !k.is_empty()));
    assert!(env["kvm_guest_kernel_mode"].is_string());
    assert!(env["runtime_versions"]["runc"]
        .as_str()
        .is_some_and(|v| v.contains("runc")));
    // Both runtimes have a time to first output and an idle memory; the VM's is larger.
    let cost = report["cost"].as_array().unwrap();
    let median = |metric: &str, rt: &str| {
        cost.iter().find(|r| r["metric"] == metric).unwrap()["stats"][rt]["median"]
            .as_f64()
            .unwrap_or_else(|| panic!("no {metric} for {rt}"))
    };
    assert!(median("start_to_first_output", "sandbox-vm") > 0.0);
    assert!(median("start_to_first_output", "runc") > 0.0);
    assert!(median("idle_memory", "sandbox-vm") > median("idle_memory", "runc"));

    let csv = std::fs::read_to_string(dir.join("report.csv")).unwrap();
    assert!(csv.starts_with("runtime,metric,value\n"));
    assert!(
        csv.contains("runc,isolation:kernel release,LEAK\n"),
        "{csv}"
    );
    assert!(csv.contains("sandbox-vm,isolation:kernel release,ISOLATED\n"));
    let svg = std::fs::read_to_string(dir.join("cost.svg")).unwrap();
    assert!(svg.len() > 1000 && svg.starts_with("<svg"), "{svg}");
    assert!(svg.contains("<text") && svg.contains("sandbox-vm"));
    assert!(stdout.contains("ISOLATION") && stdout.contains("COST"));
    let _ = std::fs::remove_dir_all(&dir);
}
