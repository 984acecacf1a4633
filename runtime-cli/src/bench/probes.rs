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

/// The identity and introspection probes.
fn kernel_probes(
    host: &Report,
    s: &Report,
    ctx: &HostContext,
    win: UptimeWindow,
) -> Vec<Observation> {
    let (hi, si) = (&host.identity, &s.identity);
    let uptime = match si.uptime_s.ok() {
        Some(u) if *u >= win.before - 1.0 && *u <= win.after + 1.0 => Verdict::Leak,
        _ => Verdict::Isolated,
    };
    let btime = match (hi.btime.ok(), si.btime.ok()) {
        (Some(h), Some(b)) if h.abs_diff(*b) <= 2 => Verdict::Leak,
        _ => Verdict::Isolated,
    };
    let log = match s.introspection.kernel_log.ok() {
        Some(lines) if lines.iter().any(|l| ctx.log_lines.contains(l)) => Verdict::Leak,
        _ => Verdict::Isolated,
    };
    let log_seen = |r: &Read<Vec<String>>| match r {
        Read::Ok(v) => format!("readable ({} lines sampled)", v.len()),
        other => show(&other_unit(other)),
    };
    let (hn, sn) = (&host.introspection, &s.introspection);
    let modules = match (
        same(&hn.proc_modules, &sn.proc_modules),
        same(&hn.sys_module, &sn.sys_module),
    ) {
        (Verdict::Isolated, Verdict::Isolated) => Verdict::Isolated,
        _ => Verdict::Leak,
    };
    let modules_seen = |r: &Report| {
        let i = &r.introspection;
        format!("{} / {}", hash8(&i.proc_modules), hash8(&i.sys_module))
    };
    vec![
        obs(
            "kernel release",
            show(&hi.kernel_release),
            show(&si.kernel_release),
            same(&hi.kernel_release, &si.kernel_release),
        ),
        obs(
            "/proc/version",
            show(&hi.proc_version),
            show(&si.proc_version),
            same(&hi.proc_version, &si.proc_version),
        ),
        obs(
            "boot_id",
            show(&hi.boot_id),
            show(&si.boot_id),
            same(&hi.boot_id, &si.boot_id),
        ),
        obs(
            "uptime",
            format!("{:.0}-{:.0} s", win.before, win.after),
            show(&si.uptime_s.clone().map_ok(|u| format!("{u:.0} s"))),
            uptime,
        ),
        obs("btime", show(&hi.btime), show(&si.btime), btime),
        obs(
            "kernel log (syslog)",
            log_seen(&hn.kernel_log),
            log_seen(&sn.kernel_log),
            log,
        ),
        obs(
            "module list (/proc/modules, /sys/module)",
            modules_seen(host),
            modules_seen(s),
            modules,
        ),
        obs(
            "/proc/kallsyms names",
            hash8(&hn.kallsyms_names),
            hash8(&sn.kallsyms_names),
            same(&hn.kallsyms_names, &sn.kallsyms_names),
        ),
        obs(
            "/proc/cmdline",
            show(&hn.cmdline),
            show(&sn.cmdline),
            same(&hn.cmdline, &sn.cmdline),
        ),
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

/// Resources, paths and devices. Namespace inodes and device names are only comparable
/// within one kernel: a guest's initial namespaces carry the same fixed inode numbers as
/// the host's, and its first disk is `vda` as the host's may be.
fn resource_probes(host: &Report, s: &Report, ctx: &HostContext) -> Vec<Observation> {
    let same_kernel = same(&host.identity.boot_id, &s.identity.boot_id) == Verdict::Leak;
    let (hr, sr) = (&host.resources, &s.resources);
    let shared: Vec<&str> = sr
        .namespaces
        .iter()
        .filter(|(k, v)| same_kernel && hr.namespaces.get(*k) == Some(v))
        .map(|(k, _)| k.as_str())
        .collect();
    let ns_seen = if shared.is_empty() {
        if same_kernel {
            "none".to_string()
        } else {
            "none (own kernel)".to_string()
        }
    } else {
        shared.join(",")
    };
    let host_ns: Vec<&str> = hr.namespaces.keys().map(String::as_str).collect();
    let leaked_roots: Vec<String> = sr
        .mount_roots
        .ok()
        .map(|v| {
            v.iter()
                .filter(|r| reveals_host_path(r, &ctx.bundle_rootfs))
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    let (hd, sd) = (&host.devices, &s.devices);
    let extra_dev = |r: &Read<Vec<String>>| -> Vec<String> {
        r.ok()
            .map(|v| {
                v.iter()
                    .filter(|n| !STANDARD_DEV.contains(&n.as_str()))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    };
    let host_dev: BTreeSet<String> = extra_dev(&hd.dev).into_iter().collect();
    let sandbox_extra = extra_dev(&sd.dev);
    let host_dev_seen: Vec<String> = sandbox_extra
        .iter()
        .filter(|n| same_kernel && host_dev.contains(*n))
        .cloned()
        .collect();
    let verdict = |leak: bool| {
        if leak {
            Verdict::Leak
        } else {
            Verdict::Isolated
        }
    };
    vec![
        obs(
            "MemTotal",
            show(
                &hr.mem_total_kib
                    .clone()
                    .map_ok(|k| format!("{} MiB", k / 1024)),
            ),
            show(
                &sr.mem_total_kib
                    .clone()
                    .map_ok(|k| format!("{} MiB", k / 1024)),
            ),
            same(&hr.mem_total_kib, &sr.mem_total_kib),
        ),
        obs(
            "CPU count",
            show(&hr.cpus),
            show(&sr.cpus),
            same(&hr.cpus, &sr.cpus),
        ),
        obs(
            "namespaces shared with host",
            format!("{} (init)", host_ns.join(",")),
            ns_seen,
            verdict(!shared.is_empty()),
        ),
        obs(
            "host paths in mountinfo",
            ctx.bundle_rootfs.clone(),
            if leaked_roots.is_empty() {
                "none".into()
            } else {
                leaked_roots.join(",")
            },
            verdict(!leaked_roots.is_empty()),
        ),
        obs(
            "/sys/class/block",
            list(&hd.sys_block),
            list(&sd.sys_block),
            verdict(same_kernel && same(&hd.sys_block, &sd.sys_block) == Verdict::Leak),
        ),
        obs(
            "host devices in /dev",
            format!("{} non-standard", host_dev.len()),
            if sandbox_extra.is_empty() {
                "none".into()
            } else if host_dev_seen.is_empty() {
                format!("own: {}", sandbox_extra.join(","))
            } else {
                host_dev_seen.join(",")
            },
            verdict(!host_dev_seen.is_empty()),
        ),
        obs(
            "block devices openable (guest image: CVE-2020-2023)",
            "-".into(),
            if sd.openable_block_devices.is_empty() {
                "none".into()
            } else {
                sd.openable_block_devices.join(",")
            },
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
    let mut v = kernel_probes(host, sandbox, ctx, win);
    v.extend(resource_probes(host, sandbox, ctx));
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
