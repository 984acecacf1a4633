//! The isolation decisions on recorded probe outputs (testdata/): the host, runc, and
//! sandbox-vm on the development host (host kernel 6.18, guest kernel 6.12). The host's
//! /proc/cmdline was shortened in the recordings.

use super::*;

const HOST: &str = include_str!("testdata/host.json");
const RUNC: &str = include_str!("testdata/runc.json");
const SANDBOX_VM: &str = include_str!("testdata/sandbox-vm.json");
/// Where the recorded runs' bundle was.
const BUNDLE_ROOTFS: &str = "/tmp/sandbox-vm-bench-12451/bundle/rootfs";

fn ctx(host: &Report) -> HostContext {
    HostContext {
        log_lines: host
            .introspection
            .kernel_log
            .ok()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .collect(),
        bundle_rootfs: BUNDLE_ROOTFS.into(),
    }
}

fn verdicts(sandbox: &str, win: UptimeWindow) -> Vec<(&'static str, Verdict)> {
    let host = parse_output(HOST).unwrap();
    let s = parse_output(sandbox).unwrap();
    boundary(&host, &s, &ctx(&host), win)
        .into_iter()
        .map(|o| (o.probe, o.verdict))
        .collect()
}

fn get(v: &[(&'static str, Verdict)], probe: &str) -> Verdict {
    v.iter().find(|(p, _)| *p == probe).unwrap().1
}

/// The recorded runc run: host uptime was 1025.28 s before and 1026.69 s after.
const RUNC_WINDOW: UptimeWindow = UptimeWindow {
    before: 1025.28,
    after: 1026.69,
};

#[test]
fn runc_sees_the_host_kernel() {
    let v = verdicts(RUNC, RUNC_WINDOW);
    assert_eq!(v.len(), BOUNDARY_PROBES.len());
    for (got, want) in v.iter().zip(BOUNDARY_PROBES) {
        assert_eq!(got.0, *want);
    }
    use Verdict::*;
    for (probe, want) in [
        ("kernel release", Leak),
        ("/proc/version", Leak),
        ("boot_id", Leak),
        ("uptime", Leak),
        ("btime", Leak),
        // dmesg_restrict=1 and no CAP_SYSLOG: denied.
        ("kernel log (syslog)", Isolated),
        ("module list (/proc/modules, /sys/module)", Leak),
        ("/proc/kallsyms names", Leak),
        ("/proc/cmdline", Leak),
        ("MemTotal", Leak),
        ("CPU count", Leak),
        // No user or time namespace in the default spec.
        ("namespaces shared with host", Leak),
        ("host paths in mountinfo", Leak),
        ("/sys/class/block", Leak),
        ("host devices in /dev", Isolated),
        (
            "block devices openable (guest image: CVE-2020-2023)",
            Isolated,
        ),
    ] {
        assert_eq!(get(&v, probe), want, "{probe}");
    }
}

#[test]
fn sandbox_vm_sees_its_own_kernel() {
    // Any window: the guest's uptime is its own whatever the host's is.
    let v = verdicts(SANDBOX_VM, RUNC_WINDOW);
    for probe in [
        "kernel release",
        "/proc/version",
        "boot_id",
        "uptime",
        "btime",
        "module list (/proc/modules, /sys/module)",
        "/proc/kallsyms names",
        "/proc/cmdline",
        "MemTotal",
        "namespaces shared with host",
        "host paths in mountinfo",
        "/sys/class/block",
        "host devices in /dev",
    ] {
        assert_eq!(get(&v, probe), Verdict::Isolated, "{probe}");
    }
}

#[test]
fn same_inodes_in_another_kernel_are_not_shared_namespaces() {
    // The guest's initial namespaces carry the same fixed inode numbers as the host's.
    let host = parse_output(HOST).unwrap();
    let mut s = parse_output(SANDBOX_VM).unwrap();
    s.resources.namespaces = host.resources.namespaces.clone();
    let o = boundary(&host, &s, &ctx(&host), RUNC_WINDOW);
    let ns = o
        .iter()
        .find(|o| o.probe == "namespaces shared with host")
        .unwrap();
    assert_eq!(ns.verdict, Verdict::Isolated);
    assert_eq!(ns.observed, "none (own kernel)");
    // The same inodes in the same kernel are shared.
    s.identity.boot_id = host.identity.boot_id.clone();
    let o = boundary(&host, &s, &ctx(&host), RUNC_WINDOW);
    let ns = o
        .iter()
        .find(|o| o.probe == "namespaces shared with host")
        .unwrap();
    assert_eq!(ns.verdict, Verdict::Leak);
}

#[test]
fn uptime_outside_the_window_is_another_kernel() {
    let v = verdicts(
        RUNC,
        UptimeWindow {
            before: 5000.0,
            after: 5001.0,
        },
    );
    assert_eq!(get(&v, "uptime"), Verdict::Isolated);
}

#[test]
fn a_readable_log_leaks_only_with_host_lines() {
    let host = parse_output(HOST).unwrap();
    let mut s = parse_output(RUNC).unwrap();
    s.introspection.kernel_log = Read::Ok(vec!["0123456789abcdef".into()]);
    let log = |s: &Report| {
        boundary(&host, s, &ctx(&host), RUNC_WINDOW)
            .into_iter()
            .find(|o| o.probe == "kernel log (syslog)")
            .unwrap()
            .verdict
    };
    assert_eq!(log(&s), Verdict::Isolated);
    s.introspection.kernel_log = host.introspection.kernel_log.clone();
    assert_eq!(log(&s), Verdict::Leak);
}

#[test]
fn mountinfo_roots() {
    assert!(reveals_host_path(
        "/tmp/x/bundle/rootfs",
        "/tmp/x/bundle/rootfs"
    ));
    // The bundle on a tmpfs: the root is relative to that filesystem.
    assert!(reveals_host_path(
        "/x/bundle/rootfs",
        "/tmp/x/bundle/rootfs"
    ));
    // Masked paths bind /dev/null; sysfs/procfs sub-mounts: no host path.
    assert!(!reveals_host_path("/null", "/tmp/x/bundle/rootfs"));
    assert!(!reveals_host_path("/rootfs", "/tmp/x/bundle/rootfs"));
}

#[test]
fn parses_the_last_json_line_and_checks_the_version() {
    let noisy = format!("some log line\n{RUNC}\n");
    assert!(parse_output(&noisy).is_ok());
    assert!(matches!(
        parse_output("no json"),
        Err(ProbeError::NoJson(_))
    ));
    assert!(matches!(
        parse_output("{\"version\":1}"),
        Err(ProbeError::Json(_))
    ));
    let mut v: serde_json::Value = serde_json::from_str(RUNC).unwrap();
    v["version"] = 99.into();
    assert!(matches!(
        parse_output(&v.to_string()),
        Err(ProbeError::Version(99))
    ));
}

#[test]
fn policy_rows() {
    let runc = parse_output(RUNC).unwrap();
    let p = policy(&runc);
    let get = |k: &str| p.iter().find(|(n, _)| *n == k).unwrap().1.clone();
    assert_eq!(get("seccomp mode"), "2");
    assert_eq!(get("NoNewPrivs"), "true");
    assert!(get("syscalls denied (EPERM/EACCES)").ends_with("of 330 denied"));
    let host = parse_output(HOST).unwrap();
    assert_eq!(policy(&host)[5].1, "-");
}
