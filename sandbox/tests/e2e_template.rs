//! Templates end to end, with the real guest kernel and agent: one cold boot builds the
//! template; two sandboxes are then restored from it at the same time, each runs a
//! container, and they must be distinct machines (different `/dev/urandom` output) with
//! the right wall clock. A snapshot restored with another kernel is
//! refused with one line, and a template that no longer restores costs a cold boot
//! instead of a failed create.
//!
//! Needs root, /dev/kvm, virtiofsd, the guest kernel and the guest image (see
//! `scripts/setup.sh`).

mod plan_host;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sandbox::oci::translate::{self, probe_host};
use sandbox::template::TemplateUse;
use sandbox::{PodPlan, RealHost, Role, Sandbox};
use test_support::artifacts::kernel;
use test_support::fresh_dir;
use test_support::rootfs::busybox_bundle;

/// Also tells whether the container's init was the one the template prepared: its
/// `/proc` was mounted before its root (lower mount id; nothing was unmounted in the
/// clone before, so ids only grow), where one made on the spot mounts `/proc` after.
const SCRIPT: &str = "head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \\n'; echo; \
                      date +%s; hostname; \
                      awk '$5 == \"/\" { r = $1 } $5 == \"/proc\" { p = $1 } \
                      END { print (p + 0 < r + 0) ? \"init prepared\" : \"init made\" }' \
                      /proc/self/mountinfo; echo done";

/// `sandbox-vm` (for `spec`), built beside this test.
fn bin() -> String {
    test_support::artifacts::built_binary("sandbox-vm")
        .display()
        .to_string()
}

/// The plan of sandbox `id` for the bundle at `b`, its templates under `dir/templates`.
fn config(dir: &Path, id: &str, b: &Path, t: TemplateUse) -> PodPlan {
    let mut host = plan_host::host();
    host.templates = dir.join("templates");
    let spec = spec_of(b);
    let rootfs = b.join("rootfs");
    let state = dir.join(id);
    let mut plan = PodPlan::new(id, &spec, &rootfs, Role::Pod, &state, &host, &RealHost).unwrap();
    plan.hostname = Some(format!("{id}-host"));
    plan.template = t;
    plan
}

/// Runs the bundle's container in a sandbox restored from the template; returns its
/// output and how long the sandbox took to be ready.
fn run_clone(cfg: &PodPlan, bundle: &Path) -> (String, Duration) {
    let t = Instant::now();
    let sb = Sandbox::create(cfg).unwrap();
    let ready = t.elapsed();
    let log = std::fs::read_to_string(&sb.paths().vmm_log).unwrap_or_default();
    assert!(
        log.contains("restored"),
        "not restored from the template: {log}"
    );
    let plan = container_plan("c", bundle);
    let out = plan_host::run_to_end(&sb, "c", plan);
    sb.stop().unwrap();
    (out, ready)
}

/// The bundle's container as `create` sends it to the agent.
fn container_plan(id: &str, bundle: &Path) -> translate::ContainerPlan {
    translate::container_request(
        id,
        &spec_of(bundle),
        &bundle.join("rootfs"),
        translate::RootfsMode::Share,
        &probe_host,
    )
    .unwrap()
}

fn spec_of(bundle: &Path) -> oci_spec::runtime::Spec {
    serde_json::from_str(&std::fs::read_to_string(bundle.join("config.json")).unwrap()).unwrap()
}

#[test]
fn clones_of_one_template_are_distinct_machines_with_the_right_clock() {
    let dir = fresh_dir("svm-e2e-template");
    let b = busybox_bundle(&bin(), &dir.join("bundle"), &["sh", "-c", SCRIPT]);
    let spec = spec_of(&b);

    let t = Instant::now();
    let tcfg = config(&dir, "tpl", &b, TemplateUse::Off);
    // The template's agent prepares the init of the container the clones run.
    assert_eq!(
        tcfg.first.request.spec,
        container_plan("tpl", &b).request.spec
    );
    let template = Sandbox::build_template(&tcfg).unwrap();
    eprintln!("template built in {:.1} s", t.elapsed().as_secs_f64());

    let cfgs: Vec<PodPlan> = (0..2)
        .map(|i| config(&dir, &format!("clone{i}"), &b, TemplateUse::Auto))
        .collect();
    let t = Instant::now();
    let outs: Vec<(String, Duration)> = std::thread::scope(|s| {
        let handles: Vec<_> = cfgs.iter().map(|c| s.spawn(|| run_clone(c, &b))).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    eprintln!("two clones ran in {:.1} s", t.elapsed().as_secs_f64());
    let host_now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut randoms = Vec::new();
    for (i, (out, ready)) in outs.iter().enumerate() {
        eprintln!("clone{i}: ready after {:.2} s:\n{out}", ready.as_secs_f64());
        let lines: Vec<&str> = out.lines().collect();
        assert!(lines.len() >= 5 && lines[4] == "done", "{out}");
        // The template prepared the container's init (namespaces, proc, sysfs, /dev,
        // masks); each clone's container took it over, its rootfs reaching it from the
        // share mounted after the restore.
        assert_eq!(lines[3], "init prepared", "{out}");
        assert_eq!(lines[0].len(), 64, "32 random bytes in hex: {out}");
        randoms.push(lines[0].to_string());
        let guest_secs: u64 = lines[1].trim().parse().unwrap();
        assert!(
            guest_secs.abs_diff(host_now) < 120,
            "clone{i} clock {guest_secs} vs host {host_now}"
        );
        // The container has its own UTS namespace: it sees the spec's hostname, as after a
        // cold boot (the clone's VM hostname is the agent's, set by CloneIdentity).
        assert_eq!(Some(lines[2].to_string()), spec.hostname().clone());
    }
    assert_ne!(
        randoms[0], randoms[1],
        "two clones read the same urandom bytes"
    );

    // The template restored with another kernel is refused.
    let other = dir.join("other-vmlinux");
    let mut k = std::fs::read(kernel()).unwrap();
    k.extend_from_slice(b"other");
    std::fs::write(&other, k).unwrap();
    let out = Command::new(test_support::artifacts::built_binary("sandbox-vm-vmm"))
        .arg("--restore")
        .arg(&template)
        .arg("--api-sock")
        .arg(dir.join("refused.sock"))
        .arg("--kernel")
        .arg(&other)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("another kernel"), "{stderr}");

    // A template that no longer restores (its memory file cut short) costs a cold boot,
    // not a failed create.
    let mem = std::fs::OpenOptions::new()
        .write(true)
        .open(template.join(vmm_api::snapshot::MEMORY_FILE))
        .unwrap();
    mem.set_len(4096).unwrap();
    let cfg = config(&dir, "fallback", &b, TemplateUse::Auto);
    let sb = Sandbox::create(&cfg).expect("a broken template falls back to a cold boot");
    let log = std::fs::read_to_string(&sb.paths().vmm_log).unwrap_or_default();
    assert!(!log.contains("restored"), "{log}");
    sb.stop().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
