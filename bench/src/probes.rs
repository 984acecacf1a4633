//! The probe's output, parsed, and the isolation decision: for each boundary probe, does the
//! sandbox see the host's value (LEAK) or its own (ISOLATED)? Pure functions over recorded
//! reports, so the decisions are unit-tested on real outputs.

use std::collections::BTreeSet;

use sandbox_vm_probe::{Read, Report, FORMAT_VERSION};

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("the probe printed no JSON object (stdout: {0:?})")]
    NoJson(String),
    #[error("the probe's JSON does not parse: {0}")]
    Json(serde_json::Error),
    #[error(
        "the probe speaks format {0}, this sandbox-vm format {FORMAT_VERSION}: rebuild the probe"
    )]
    Version(u32),
}

/// The probe's report from its stdout: the last line that is a JSON object.
pub fn parse_output(stdout: &str) -> Result<Report, ProbeError> {
    let line = stdout
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('{'))
        .ok_or_else(|| ProbeError::NoJson(stdout.chars().take(200).collect()))?;
    let r: Report = serde_json::from_str(line).map_err(ProbeError::Json)?;
    if r.version != FORMAT_VERSION {
        return Err(ProbeError::Version(r.version));
    }
    Ok(r)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Verdict {
    Leak,
    Isolated,
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Verdict::Leak => "LEAK",
            Verdict::Isolated => "ISOLATED",
        })
    }
}

/// What the bench knows about the host beyond the host probe's report.
#[derive(Debug, Clone)]
pub struct HostContext {
    /// Hashes of every line of the host's kernel log, read after the runs.
    pub log_lines: BTreeSet<String>,
    /// The host path of the bundle's rootfs.
    pub bundle_rootfs: String,
}

/// The host's uptime just before and just after one sandbox run, seconds.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct UptimeWindow {
    pub before: f64,
    pub after: f64,
}

/// One boundary probe's result in one sandbox.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Observation {
    pub probe: &'static str,
    pub host: String,
    pub observed: String,
    pub verdict: Verdict,
}

/// Names of the boundary probes, in report order.
pub const BOUNDARY_PROBES: &[&str] = &[
    "kernel release",
    "/proc/version",
    "boot_id",
    "uptime",
    "btime",
    "kernel log (syslog)",
    "module list (/proc/modules, /sys/module)",
    "/proc/kallsyms names",
    "/proc/cmdline",
    "MemTotal",
    "CPU count",
    "namespaces shared with host",
    "host paths in mountinfo",
    "/sys/class/block",
    "host devices in /dev",
    "block devices openable (guest image: CVE-2020-2023)",
];

pub fn show<T: std::fmt::Display>(r: &Read<T>) -> String {
    match r {
        Read::Ok(v) => v.to_string(),
        Read::Absent => "absent".into(),
        Read::Denied => "denied".into(),
        Read::Error(e) => format!("error: {e}"),
    }
}

fn short(s: String) -> String {
    const MAX: usize = 40;
    if s.chars().count() <= MAX {
        return s;
    }
    let head: String = s.chars().take(MAX - 1).collect();
    format!("{head}…")
}

/// LEAK when the sandbox read a value and it is the host's.
fn same<T: PartialEq>(host: &Read<T>, sandbox: &Read<T>) -> Verdict {
    match (host.ok(), sandbox.ok()) {
        (Some(h), Some(s)) if h == s => Verdict::Leak,
        _ => Verdict::Isolated,
    }
}

fn obs(probe: &'static str, host: String, observed: String, verdict: Verdict) -> Observation {
    Observation {
        probe,
        host: short(host),
        observed: short(observed),
        verdict,
    }
}

/// The probe whose value the sandbox and host compare as is.
fn equal<T: PartialEq + std::fmt::Display>(
    probe: &'static str,
    host: &Read<T>,
    sandbox: &Read<T>,
) -> Observation {
    obs(probe, show(host), show(sandbox), same(host, sandbox))
}

fn verdict(leak: bool) -> Verdict {
    if leak {
        Verdict::Leak
    } else {
        Verdict::Isolated
    }
}

/// `none`, or the items joined by commas.
fn joined(v: &[String]) -> String {
    if v.is_empty() {
        "none".into()
    } else {
        v.join(",")
    }
}

/// Which kernel: release, version, boot id, uptime (inside the host's window) and btime.
fn identity_probes(host: &Report, s: &Report, win: UptimeWindow) -> Vec<Observation> {
    let (hi, si) = (&host.identity, &s.identity);
    let uptime =
        matches!(si.uptime_s.ok(), Some(u) if *u >= win.before - 1.0 && *u <= win.after + 1.0);
    let btime = matches!((hi.btime.ok(), si.btime.ok()), (Some(h), Some(b)) if h.abs_diff(*b) <= 2);
    vec![
        equal("kernel release", &hi.kernel_release, &si.kernel_release),
        equal("/proc/version", &hi.proc_version, &si.proc_version),
        equal("boot_id", &hi.boot_id, &si.boot_id),
        obs(
            "uptime",
            format!("{:.0}-{:.0} s", win.before, win.after),
            show(&si.uptime_s.clone().map_ok(|u| format!("{u:.0} s"))),
            verdict(uptime),
        ),
        obs("btime", show(&hi.btime), show(&si.btime), verdict(btime)),
    ]
}

/// What the kernel tells about itself: log, modules, symbols, command line.
fn introspection_probes(host: &Report, s: &Report, ctx: &HostContext) -> Vec<Observation> {
    let (hn, sn) = (&host.introspection, &s.introspection);
    let log = matches!(sn.kernel_log.ok(), Some(lines) if lines.iter().any(|l| ctx.log_lines.contains(l)));
    let log_seen = |r: &Read<Vec<String>>| match r {
        Read::Ok(v) => format!("readable ({} lines sampled)", v.len()),
        other => show(&other_unit(other)),
    };
    let modules = same(&hn.proc_modules, &sn.proc_modules) == Verdict::Leak
        || same(&hn.sys_module, &sn.sys_module) == Verdict::Leak;
    let modules_seen = |i: &sandbox_vm_probe::Introspection| {
        format!("{} / {}", hash8(&i.proc_modules), hash8(&i.sys_module))
    };
    vec![
        obs(
            "kernel log (syslog)",
            log_seen(&hn.kernel_log),
            log_seen(&sn.kernel_log),
            verdict(log),
        ),
        obs(
            "module list (/proc/modules, /sys/module)",
            modules_seen(hn),
            modules_seen(sn),
            verdict(modules),
        ),
        obs(
            "/proc/kallsyms names",
            hash8(&hn.kallsyms_names),
            hash8(&sn.kallsyms_names),
            same(&hn.kallsyms_names, &sn.kallsyms_names),
        ),
        equal("/proc/cmdline", &hn.cmdline, &sn.cmdline),
    ]
}

/// `Read<Vec<_>>` without its value, for showing why there is none.
fn other_unit<T>(r: &Read<T>) -> Read<String> {
    match r {
        Read::Ok(_) => Read::Ok("ok".into()),
        Read::Absent => Read::Absent,
        Read::Denied => Read::Denied,
        Read::Error(e) => Read::Error(e.clone()),
    }
}

fn hash8(r: &Read<String>) -> String {
    match r {
        Read::Ok(h) => format!("#{}", &h[..h.len().min(8)]),
        other => show(other),
    }
}

trait MapOk<T> {
    fn map_ok<U>(self, f: impl FnOnce(T) -> U) -> Read<U>;
}

impl<T> MapOk<T> for Read<T> {
    fn map_ok<U>(self, f: impl FnOnce(T) -> U) -> Read<U> {
        match self {
            Read::Ok(v) => Read::Ok(f(v)),
            Read::Absent => Read::Absent,
            Read::Denied => Read::Denied,
            Read::Error(e) => Read::Error(e),
        }
    }
}

/// Device nodes every OCI runtime puts in a container's /dev.
const STANDARD_DEV: &[&str] = &[
    "console", "core", "fd", "full", "mqueue", "null", "ptmx", "pts", "random", "shm", "stderr",
    "stdin", "stdout", "tty", "urandom", "zero",
];

fn list(r: &Read<Vec<String>>) -> String {
    match r {
        Read::Ok(v) if v.is_empty() => "none".into(),
        Read::Ok(v) => v.join(","),
        other => show(&other_unit(other)),
    }
}

/// Resources and paths. Namespace inodes are only comparable within one kernel: a guest's
/// initial namespaces carry the same fixed inode numbers as the host's.
fn resource_probes(
    host: &Report,
    s: &Report,
    ctx: &HostContext,
    same_kernel: bool,
) -> Vec<Observation> {
    let (hr, sr) = (&host.resources, &s.resources);
    let shared: Vec<String> = sr
        .namespaces
        .iter()
        .filter(|(k, v)| same_kernel && hr.namespaces.get(*k) == Some(v))
        .map(|(k, _)| k.clone())
        .collect();
    let ns_seen = match (shared.is_empty(), same_kernel) {
        (true, false) => "none (own kernel)".to_string(),
        _ => joined(&shared),
    };
    let host_ns: Vec<String> = hr.namespaces.keys().cloned().collect();
    let roots: Vec<String> = sr
        .mount_roots
        .ok()
        .into_iter()
        .flatten()
        .filter(|r| reveals_host_path(r, &ctx.bundle_rootfs))
        .cloned()
        .collect();
    let mib = |r: &Read<u64>| show(&r.clone().map_ok(|k| format!("{} MiB", k / 1024)));
    vec![
        obs(
            "MemTotal",
            mib(&hr.mem_total_kib),
            mib(&sr.mem_total_kib),
            same(&hr.mem_total_kib, &sr.mem_total_kib),
        ),
        equal("CPU count", &hr.cpus, &sr.cpus),
        obs(
            "namespaces shared with host",
            format!("{} (init)", host_ns.join(",")),
            ns_seen,
            verdict(!shared.is_empty()),
        ),
        obs(
            "host paths in mountinfo",
            ctx.bundle_rootfs.clone(),
            joined(&roots),
            verdict(!roots.is_empty()),
        ),
    ]
}

/// Names in a `/dev` listing beyond what every OCI runtime puts there.
fn extra_dev(r: &Read<Vec<String>>) -> Vec<String> {
    r.ok()
        .into_iter()
        .flatten()
        .filter(|n| !STANDARD_DEV.contains(&n.as_str()))
        .cloned()
        .collect()
}

/// Devices. Device names are only comparable within one kernel: a guest's first disk is
/// `vda` as the host's may be.
fn device_probes(host: &Report, s: &Report, same_kernel: bool) -> Vec<Observation> {
    let (hd, sd) = (&host.devices, &s.devices);
    let host_dev: BTreeSet<String> = extra_dev(&hd.dev).into_iter().collect();
    let sandbox_extra = extra_dev(&sd.dev);
    let host_dev_seen: Vec<String> = sandbox_extra
        .iter()
        .filter(|n| same_kernel && host_dev.contains(*n))
        .cloned()
        .collect();
    let dev_seen = if host_dev_seen.is_empty() && !sandbox_extra.is_empty() {
        format!("own: {}", sandbox_extra.join(","))
    } else {
        joined(&host_dev_seen)
    };
    let block = same_kernel && same(&hd.sys_block, &sd.sys_block) == Verdict::Leak;
    vec![
        obs(
            "/sys/class/block",
            list(&hd.sys_block),
            list(&sd.sys_block),
            verdict(block),
        ),
        obs(
            "host devices in /dev",
            format!("{} non-standard", host_dev.len()),
            dev_seen,
            verdict(!host_dev_seen.is_empty()),
        ),
        obs(
            "block devices openable (guest image: CVE-2020-2023)",
            "-".into(),
            joined(&sd.openable_block_devices),
            verdict(!sd.openable_block_devices.is_empty()),
        ),
    ]
}

/// A mountinfo root that is a tail of the bundle's host path (two components at least)
/// tells the sandbox where on the host its files live.
fn reveals_host_path(root: &str, bundle_rootfs: &str) -> bool {
    let root = root.trim_end_matches('/');
    root.matches('/').count() >= 2 && bundle_rootfs.trim_end_matches('/').ends_with(root)
}

/// Every boundary probe for one sandbox run, in [`BOUNDARY_PROBES`] order.
pub fn boundary(
    host: &Report,
    sandbox: &Report,
    ctx: &HostContext,
    win: UptimeWindow,
) -> Vec<Observation> {
    let same_kernel = same(&host.identity.boot_id, &sandbox.identity.boot_id) == Verdict::Leak;
    let mut v = identity_probes(host, sandbox, win);
    v.extend(introspection_probes(host, sandbox, ctx));
    v.extend(resource_probes(host, sandbox, ctx, same_kernel));
    v.extend(device_probes(host, sandbox, same_kernel));
    v
}

/// The policy probes: values only, no host comparison.
pub fn policy(r: &Report) -> Vec<(&'static str, String)> {
    let p = &r.policy;
    let scan = match &p.syscalls {
        Some(s) => format!("{} of {} denied", s.denied.len(), s.tried),
        None => "-".into(),
    };
    let ro: Vec<&str> = p
        .read_only
        .iter()
        .filter(|(_, v)| *v == "ro")
        .map(|(k, _)| k.as_str())
        .collect();
    vec![
        ("CapEff", show(&p.cap_eff)),
        ("CapBnd", show(&p.cap_bnd)),
        ("seccomp mode", show(&p.seccomp_mode)),
        ("seccomp filters", show(&p.seccomp_filters)),
        ("NoNewPrivs", show(&p.no_new_privs)),
        ("syscalls denied (EPERM/EACCES)", scan),
        (
            "read-only paths",
            if ro.is_empty() {
                "none".into()
            } else {
                ro.join(",")
            },
        ),
    ]
}

#[cfg(test)]
#[path = "probes_tests.rs"]
mod tests;
