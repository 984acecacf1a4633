//! The report: the isolation matrix, the policy table and the cost table, as terminal text,
//! JSON and CSV.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use sandbox_vm_probe::Report;

use super::bundle;
use super::cost::{self, fmt_num, Metric, MetricRow, Stats};
use super::probes::{self, HostContext, Observation, Verdict};
use super::runner::{Runtime, Sample};

/// The runtime every cost ratio is relative to.
pub const REFERENCE: &str = "runc";
/// TCP over a pod network needs network namespaces for every runtime: its own benchmark.
pub const TCP_NOTE: &str = "not measured here: tests/bench-net.py (iperf3, ping; beside runc)";

/// Everything measured, before any summary.
pub struct Results {
    pub env: serde_json::Value,
    pub runs: usize,
    pub runtimes: Vec<Runtime>,
    pub host: Report,
    pub ctx: HostContext,
    pub samples: BTreeMap<String, Vec<Sample>>,
    pub failures: BTreeMap<String, Vec<String>>,
}

/// One isolation-matrix cell: the first run's observation, and in how many runs it leaked.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Cell {
    pub observed: String,
    pub verdict: Verdict,
    pub leaked_runs: usize,
    pub runs: usize,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct MatrixRow {
    pub probe: &'static str,
    pub host: String,
    pub cells: BTreeMap<String, Cell>,
}

/// A runtime is LEAK on a probe when any of its runs leaked.
pub fn matrix(r: &Results) -> Vec<MatrixRow> {
    let mut rows: Vec<MatrixRow> = probes::BOUNDARY_PROBES
        .iter()
        .map(|p| MatrixRow {
            probe: p,
            host: String::new(),
            cells: BTreeMap::new(),
        })
        .collect();
    for (rt, samples) in &r.samples {
        let per_run: Vec<Vec<Observation>> = samples
            .iter()
            .map(|s| probes::boundary(&r.host, &s.report, &r.ctx, s.uptime))
            .collect();
        let Some(first) = per_run.first() else {
            continue;
        };
        for (i, o) in first.iter().enumerate() {
            let leaked_runs = per_run
                .iter()
                .filter(|run| run.get(i).is_some_and(|x| x.verdict == Verdict::Leak))
                .count();
            rows[i].host = o.host.clone();
            rows[i].cells.insert(
                rt.clone(),
                Cell {
                    observed: o.observed.clone(),
                    verdict: if leaked_runs > 0 {
                        Verdict::Leak
                    } else {
                        Verdict::Isolated
                    },
                    leaked_runs,
                    runs: per_run.len(),
                },
            );
        }
    }
    rows
}

/// Host system calls each runtime's filter lets through, with what that number is.
pub fn syscall_surface(rt: &Runtime) -> (usize, &'static str) {
    if is_sandbox_vm(rt) {
        (
            vmm::seccomp::allowed_by_any_thread(),
            "the VMM's per-thread seccomp filters, any thread",
        )
    } else {
        (bundle::profile_allows(), "the bundle's seccomp profile")
    }
}

pub fn is_sandbox_vm(rt: &Runtime) -> bool {
    rt.name == "sandbox-vm"
}

fn names(r: &Results) -> Vec<String> {
    r.runtimes.iter().map(|rt| rt.name.clone()).collect()
}

fn table(out: &mut String, header: &[String], rows: &[Vec<String>]) {
    let cols = header.len();
    let mut w = vec![0usize; cols];
    for row in std::iter::once(header).chain(rows.iter().map(Vec::as_slice)) {
        for (i, c) in row.iter().enumerate().take(cols) {
            w[i] = w[i].max(c.chars().count());
        }
    }
    for row in std::iter::once(header).chain(rows.iter().map(Vec::as_slice)) {
        let line: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<width$}", width = w[i]))
            .collect();
        let _ = writeln!(out, "{}", line.join("  ").trim_end());
    }
}

fn cost_cell(st: Option<&Stats>, ratio: Option<f64>) -> String {
    match st {
        None => "-".into(),
        Some(s) => {
            let r = ratio
                .map(|x| format!(" {}x", fmt_num(x)))
                .unwrap_or_default();
            format!(
                "{} (p95 {}, n={}){r}",
                fmt_num(s.median),
                fmt_num(s.p95),
                s.n
            )
        }
    }
}

fn cost_table(r: &Results, rows: &[MetricRow], out: &mut String) {
    let rts = names(r);
    let mut header = vec![
        "metric: median (p95, n) ratio to runc".to_string(),
        "host".into(),
    ];
    header.extend(rts.iter().cloned());
    let mut body = Vec::new();
    for row in rows {
        let host = row
            .metric
            .of_report(&r.host)
            .map(fmt_num)
            .unwrap_or_else(|| "-".into());
        let mut line = vec![row.metric.label().to_string(), host];
        for rt in &rts {
            line.push(cost_cell(
                row.stats.get(rt),
                row.ratio_to_runc.get(rt).copied(),
            ));
        }
        body.push(line);
    }
    let mut surface = vec!["host syscalls the filter allows".to_string(), "-".into()];
    for rt in &r.runtimes {
        let (n, why) = syscall_surface(rt);
        surface.push(format!("{n} ({why})"));
    }
    body.push(surface);
    let mut tcp = vec!["TCP round trip / throughput".to_string(), "-".into()];
    tcp.extend(rts.iter().map(|_| TCP_NOTE.to_string()));
    body.push(tcp);
    table(out, &header, &body);
}

/// The terminal report.
pub fn text(r: &Results) -> String {
    let mut out = String::new();
    let env = &r.env;
    let _ = writeln!(
        out,
        "sandbox-vm bench isolation: {} run(s) per runtime; host kernel {}, {} x{}, KVM guest kernel mode: {}\n",
        r.runs, env["host_kernel"].as_str().unwrap_or("?"), env["cpu"].as_str().unwrap_or("?"),
        env["cpus"], env["kvm_guest_kernel_mode"].as_str().unwrap_or("?")
    );
    let _ = writeln!(
        out,
        "load average at start / end: {} / {} (other work on the host skews the timings)\n",
        env["loadavg_at_start"].as_str().unwrap_or("?"),
        env["loadavg_at_end"].as_str().unwrap_or("?")
    );
    let rts = names(r);
    let _ = writeln!(
        out,
        "ISOLATION: LEAK = the sandbox sees the host's value, ISOLATED = its own"
    );
    let mut header = vec!["probe".to_string(), "host".into()];
    header.extend(rts.iter().cloned());
    let rows: Vec<Vec<String>> = matrix(r)
        .iter()
        .map(|m| {
            let mut line = vec![m.probe.to_string(), m.host.clone()];
            for rt in &rts {
                line.push(match m.cells.get(rt) {
                    Some(c) => format!("{:<8} {}", c.verdict.to_string(), c.observed),
                    None => "-".into(),
                });
            }
            line
        })
        .collect();
    table(&mut out, &header, &rows);
    let _ = writeln!(out, "\nPOLICY (inside the sandbox)");
    let mut header = vec!["probe".to_string()];
    header.extend(rts.iter().cloned());
    let pol: BTreeMap<&String, Vec<(&str, String)>> = r
        .samples
        .iter()
        .filter_map(|(rt, s)| s.first().map(|s| (rt, probes::policy(&s.report))))
        .collect();
    let rows: Vec<Vec<String>> = probes::policy(&r.host)
        .iter()
        .enumerate()
        .map(|(i, (name, _))| {
            let mut line = vec![name.to_string()];
            for rt in &rts {
                line.push(
                    pol.get(rt)
                        .and_then(|v| v.get(i))
                        .map_or("-".into(), |(_, v)| v.clone()),
                );
            }
            line
        })
        .collect();
    table(&mut out, &header, &rows);
    let _ = writeln!(out, "\nCOST");
    cost_table(r, &cost::summarize(&r.samples, REFERENCE), &mut out);
    for (rt, f) in &r.failures {
        let _ = writeln!(out, "\n{rt}: {} failed run(s); first: {}", f.len(), f[0]);
    }
    out
}

/// The JSON report.
pub fn json(r: &Results) -> serde_json::Value {
    let versions: Vec<serde_json::Value> = r
        .runtimes
        .iter()
        .map(|rt| {
            let (n, why) = syscall_surface(rt);
            serde_json::json!({"name": rt.name, "path": rt.path, "host_syscalls_allowed": n, "host_syscalls_note": why})
        })
        .collect();
    let samples: BTreeMap<&String, Vec<serde_json::Value>> = r
        .samples
        .iter()
        .map(|(rt, ss)| {
            (
                rt,
                ss.iter()
                    .map(|s| {
                        serde_json::json!({
                                    "first_output_ms": s.first_output_ms,
                                    "idle_pss_kib": s.idle_pss_kib,
                                    "idle_processes": s.idle_processes,
                        "guest_ram_pss_kib": s.guest_ram_pss_kib,
                                    "host_uptime": s.uptime,
                                    "report": s.report,
                                })
                    })
                    .collect(),
            )
        })
        .collect();
    let policy: BTreeMap<&String, BTreeMap<&str, String>> = r
        .samples
        .iter()
        .filter_map(|(rt, s)| {
            s.first()
                .map(|s| (rt, probes::policy(&s.report).into_iter().collect()))
        })
        .collect();
    serde_json::json!({
        "env": r.env,
        "runs": r.runs,
        "runtimes": versions,
        "bundle_seccomp_denies": bundle::DENIED.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
        "isolation": matrix(r),
        "policy": policy,
        "cost": cost::summarize(&r.samples, REFERENCE),
        "tcp": TCP_NOTE,
        "failures": r.failures,
        "host": r.host,
        "samples": samples,
    })
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// The CSV report: `runtime,metric,value`, one row per run and metric, plus the isolation
/// verdicts, policy values and syscall surface.
pub fn csv(r: &Results) -> String {
    let mut out = String::from("runtime,metric,value\n");
    let mut row = |rt: &str, m: &str, v: &str| {
        let _ = writeln!(out, "{},{},{}", csv_field(rt), csv_field(m), csv_field(v));
    };
    for m in Metric::ALL {
        if let Some(v) = m.of_report(&r.host) {
            row("host", m.key(), &v.to_string());
        }
    }
    for (rt, ss) in &r.samples {
        for s in ss {
            for m in Metric::ALL {
                if let Some(v) = m.of_sample(s) {
                    row(rt, m.key(), &v.to_string());
                }
            }
        }
    }
    for m in matrix(r) {
        for (rt, c) in &m.cells {
            row(
                rt,
                &format!("isolation:{}", m.probe),
                &c.verdict.to_string(),
            );
        }
    }
    for (rt, ss) in &r.samples {
        if let Some(s) = ss.first() {
            for (k, v) in probes::policy(&s.report) {
                row(rt, &format!("policy:{k}"), &v);
            }
        }
    }
    for rt in &r.runtimes {
        row(
            &rt.name,
            "host_syscalls_allowed",
            &syscall_surface(rt).0.to_string(),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::probes::{parse_output, UptimeWindow};
    use super::*;

    fn sample(report: &str, first_output_ms: f64, pss: u64, ram: Option<u64>, up: f64) -> Sample {
        Sample {
            report: parse_output(report).unwrap(),
            first_output_ms,
            idle_pss_kib: Some(pss),
            idle_processes: 1,
            guest_ram_pss_kib: ram,
            uptime: UptimeWindow {
                before: up,
                after: up + 2.0,
            },
        }
    }

    /// The recorded host, runc and sandbox-vm reports (see probes_tests.rs), two runs each.
    fn results() -> Results {
        let host = parse_output(include_str!("testdata/host.json")).unwrap();
        let runc = include_str!("testdata/runc.json");
        let svm = include_str!("testdata/sandbox-vm.json");
        let rt = |name: &str| Runtime {
            name: name.into(),
            path: format!("/usr/bin/{name}").into(),
            hide_unified_cgroup: false,
        };
        Results {
            env: super::super::host::env(&BTreeMap::new(), "1.00 1.00 1.00 1/100 1"),
            runs: 2,
            runtimes: vec![rt("runc"), rt("sandbox-vm")],
            ctx: HostContext {
                log_lines: Default::default(),
                bundle_rootfs: "/tmp/sandbox-vm-bench-12451/bundle/rootfs".into(),
            },
            samples: BTreeMap::from([
                (
                    "runc".to_string(),
                    vec![
                        sample(runc, 100.0, 1024, None, 1025.0),
                        sample(runc, 300.0, 1024, None, 1025.0),
                    ],
                ),
                (
                    "sandbox-vm".to_string(),
                    vec![
                        sample(svm, 40000.0, 20480, Some(16384), 9.0),
                        sample(svm, 60000.0, 30720, Some(24576), 9.0),
                    ],
                ),
            ]),
            failures: BTreeMap::new(),
            host,
        }
    }

    #[test]
    fn matrix_has_every_probe_for_every_runtime() {
        let m = matrix(&results());
        assert_eq!(m.len(), probes::BOUNDARY_PROBES.len());
        let release = &m[0];
        assert_eq!(release.cells["runc"].verdict, Verdict::Leak);
        assert_eq!(release.cells["runc"].leaked_runs, 2);
        assert_eq!(release.cells["sandbox-vm"].verdict, Verdict::Isolated);
        assert_eq!(release.cells["sandbox-vm"].observed, "6.12.117-sandbox-vm");
    }

    #[test]
    fn text_json_and_csv() {
        let r = results();
        let t = text(&r);
        assert!(t.contains("LEAK     6.18.44"), "{t}");
        assert!(t.contains("ISOLATED 6.12.117-sandbox-vm"), "{t}");
        // start -> first output: medians 200 ms and 50000 ms, ratio 250x.
        assert!(t.contains("200 (p95 300, n=2) 1.00x"), "{t}");
        assert!(t.contains("50000 (p95 60000, n=2) 250x"), "{t}");
        let vmm = vmm::seccomp::allowed_by_any_thread();
        assert!(vmm > 0 && vmm < bundle::SYSCALL_TABLE_SIZE, "{vmm}");
        assert!(
            t.contains(&format!("{vmm} (the VMM's per-thread seccomp filters")),
            "{t}"
        );
        let j = json(&r);
        assert_eq!(j["runs"], 2);
        assert_eq!(j["isolation"][0]["cells"]["runc"]["verdict"], "LEAK");
        let cost = j["cost"].as_array().unwrap();
        let outside = cost
            .iter()
            .find(|c| c["metric"] == "idle_memory_outside_guest_ram")
            .unwrap();
        // (20480 - 16384) and (30720 - 24576) KiB: 4 and 6 MiB, median 5.
        assert_eq!(outside["stats"]["sandbox-vm"]["median"], 5.0);
        assert!(outside["stats"].get("runc").is_none());
        let c = csv(&r);
        assert!(c.contains("runc,start_to_first_output_ms,100\n"), "{c}");
        assert!(c.contains("sandbox-vm,isolation:kernel release,ISOLATED\n"));
        assert!(c.contains("runc,host_syscalls_allowed,319\n"));
        assert!(
            c.contains("\"policy:read-only paths\"") || c.contains("policy:read-only paths,\"")
        );
    }

    #[test]
    fn csv_quotes_commas() {
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"x\""), "\"say \"\"x\"\"\"");
        assert_eq!(csv_field("plain"), "plain");
        assert_eq!(csv_field("q\",x"), "\"q\"\",x\"");
    }
}
