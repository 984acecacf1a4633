//! `sandbox-vm-probe`: runs the isolation benchmark's probes and cost loops in whatever
//! sandbox it was started in and prints one JSON object (a `sandbox_vm_probe::Report`).
//!
//! usage: sandbox-vm-probe [--host] [--budget-ms N] [--tmp DIR] [--idle]
//!   --host       the host's own values: namespaces of /proc/1/ns (else the probe's own),
//!                no syscall scan
//!   --budget-ms  time budget of each cost loop (default 300)
//!   --tmp        directory of the 4 KiB file loop (default /tmp)
//!   --idle       after printing, sleep until killed (the bench measures idle memory then)

mod cost;
mod kernel;
mod scan;

use std::collections::BTreeMap;
use std::io::Write as _;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use sandbox_vm_probe::{Cost, Report, FORMAT_VERSION, STARTED_LINE};

struct Args {
    host: bool,
    budget: Duration,
    tmp: String,
    idle: bool,
}

fn parse_args(mut it: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut a = Args {
        host: false,
        budget: Duration::from_millis(300),
        tmp: "/tmp".into(),
        idle: false,
    };
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--host" => a.host = true,
            "--idle" => a.idle = true,
            "--budget-ms" => {
                let v = it.next().and_then(|v| v.parse().ok());
                a.budget = Duration::from_millis(v.ok_or("--budget-ms takes milliseconds")?);
            }
            "--tmp" => a.tmp = it.next().ok_or("--tmp takes a directory")?,
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(a)
}

/// Runs `f` and records its wall time under `name`.
fn section<T>(times: &mut BTreeMap<String, u64>, name: &str, f: impl FnOnce() -> T) -> T {
    let t = Instant::now();
    let v = f();
    times.insert(name.into(), t.elapsed().as_millis() as u64);
    v
}

fn run(a: &Args) -> Report {
    let mut t = BTreeMap::new();
    let identity = section(&mut t, "identity", kernel::identity);
    let introspection = section(&mut t, "introspection", kernel::introspection);
    let ns_dirs: &[&str] = if a.host {
        &["/proc/1/ns", "/proc/self/ns"]
    } else {
        &["/proc/self/ns"]
    };
    let resources = section(&mut t, "resources", || kernel::resources(ns_dirs));
    let devices = section(&mut t, "devices", kernel::devices);
    let mut policy = section(&mut t, "policy", kernel::policy);
    if !a.host {
        policy.syscalls = Some(section(&mut t, "syscall_scan", scan::scan));
    }
    let cost = Cost {
        getppid: section(&mut t, "getppid", || cost::getppid(a.budget)),
        file_4k: section(&mut t, "file_4k", || cost::file_4k(&a.tmp, a.budget)),
        anon_page: section(&mut t, "anon_page", || cost::anon_page(a.budget)),
    };
    Report {
        version: FORMAT_VERSION,
        identity,
        introspection,
        resources,
        devices,
        policy,
        cost,
        section_ms: t,
    }
}

fn main() -> ExitCode {
    eprintln!("{STARTED_LINE}");
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("sandbox-vm-probe: {e}");
            return ExitCode::from(2);
        }
    };
    let report = run(&args);
    let json = serde_json::to_string(&report).expect("a Report always serialises");
    let mut out = std::io::stdout().lock();
    if writeln!(out, "{json}").and_then(|_| out.flush()).is_err() {
        return ExitCode::from(1);
    }
    drop(out);
    if args.idle {
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn args() {
        let a = parse_args(
            ["--host", "--budget-ms", "5", "--tmp", "/x", "--idle"]
                .map(String::from)
                .into_iter(),
        )
        .unwrap();
        assert!(a.host && a.idle);
        assert_eq!(a.budget, Duration::from_millis(5));
        assert_eq!(a.tmp, "/x");
        assert!(parse_args(["--budget-ms".to_string()].into_iter()).is_err());
        assert!(parse_args(["--what".to_string()].into_iter()).is_err());
    }
}
