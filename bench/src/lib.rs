//! The isolation benchmark, run as `sandbox-vm bench isolation` (runtime-cli delegates to
//! [`isolation`]): what VM isolation buys and what it costs, beside the
//! shared-kernel runtimes. Every runtime runs the same bundle (busybox and the static
//! `sandbox-vm-probe`); the probe reports what the sandbox sees of the kernel and times a
//! few loops; the host's own values come from running the probe on the host. One container
//! per runtime and repetition gives every number, interleaved across runtimes.
//!
//! Output (in `--out`): `report.txt` (also printed), `report.json`, `report.csv`,
//! `cost.svg`.
//!
//! The library reads no environment variables: the binary that runs it resolves
//! `$SANDBOX_VM_PROBE`, `$PATH`, its own executable and the temporary directory into
//! [`IsolationArgs::env`].

mod bundle;
mod cost;
mod host;
mod probes;
mod report;
mod runner;
mod svg;

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use runner::{RunOpts, Runtime};

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("--runtime {0:?}: use NAME=PATH")]
    RuntimeArg(String),
    #[error("runtime {name}: {path} is not an executable file")]
    RuntimeMissing { name: String, path: PathBuf },
    #[error("cannot tell which sandbox-vm binary to compare: pass --runtime sandbox-vm=PATH")]
    NoSandboxVm,
    #[error("{0}")]
    Bundle(bundle::BundleError),
    #[error("busybox {0} not found: install busybox-static or pass --busybox PATH")]
    NoBusybox(PathBuf),
    #[error("{what} {path}: {err}")]
    Io {
        what: &'static str,
        path: PathBuf,
        err: std::io::Error,
    },
    #[error("the probe on the host: {0}")]
    HostProbe(String),
    #[error("{0}")]
    Svg(svg::SvgError),
    #[error("some runs failed (see the report): {0}")]
    RunsFailed(String),
}

#[derive(clap::Subcommand, Debug)]
pub enum BenchCmd {
    /// Compare isolation and cost of OCI runtimes (default: runc, crun and sandbox-vm) with
    /// the same probe bundle; writes report.{txt,json,csv} and cost.svg to --out
    Isolation(IsolationArgs),
}

#[derive(clap::Args, Debug)]
pub struct IsolationArgs {
    /// A runtime to compare, NAME=PATH (repeatable; replaces the defaults: runc and crun
    /// from PATH, sandbox-vm = this binary)
    #[arg(long = "runtime", value_name = "NAME=PATH")]
    runtimes: Vec<String>,
    /// Repetitions per runtime (each one container run)
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Directory for the reports
    #[arg(long, default_value = "bench-isolation")]
    out: PathBuf,
    /// The static probe [default: $SANDBOX_VM_PROBE, beside this binary, or where
    /// tests/probe/build-static.sh puts it]
    #[arg(long)]
    probe: Option<PathBuf>,
    /// A static busybox for the bundle
    #[arg(long, default_value = "/bin/busybox")]
    busybox: PathBuf,
    /// Time budget of each in-sandbox cost loop, milliseconds
    #[arg(long, default_value_t = 300)]
    budget_ms: u64,
    /// Do not measure the host memory of the idle sandbox
    #[arg(long)]
    no_idle_memory: bool,
    /// Not an option: filled in by the caller after parsing.
    #[arg(skip)]
    pub env: Environment,
}

/// What the bench would otherwise read from its process, resolved by the binary that runs
/// it (e.g. `SANDBOX_VM_PROBE` from `std::env::var_os`).
#[derive(Debug, Clone, Default)]
pub struct Environment {
    /// `$SANDBOX_VM_PROBE`: the static probe when `--probe` is not given.
    pub probe: Option<PathBuf>,
    /// `$PATH`: where runc and crun are looked for when no `--runtime` is given.
    pub path: Option<OsString>,
    /// The sandbox-vm binary (the caller's own executable): the default `sandbox-vm`
    /// runtime, and where the probe is looked for beside.
    pub sandbox_vm: Option<PathBuf>,
    /// Where the scratch directory goes (`std::env::temp_dir()`).
    pub temp_dir: PathBuf,
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> BenchError {
    let path = path.to_path_buf();
    move |err| BenchError::Io { what, path, err }
}

fn in_path(path: Option<&OsString>, name: &str) -> Option<PathBuf> {
    path?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

fn runtime(name: &str, path: PathBuf) -> Result<Runtime, BenchError> {
    if !path.is_file() {
        return Err(BenchError::RuntimeMissing {
            name: name.into(),
            path,
        });
    }
    let is_crun = path.file_name().is_some_and(|f| f == "crun");
    Ok(Runtime {
        name: name.into(),
        hide_unified_cgroup: is_crun && host::hybrid_cgroups(),
        path,
    })
}

/// `--runtime NAME=PATH`s, else runc and crun from PATH (those present) and the sandbox-vm
/// binary.
fn runtimes(args: &[String], env: &Environment) -> Result<(Vec<Runtime>, Vec<String>), BenchError> {
    let mut notes = Vec::new();
    if !args.is_empty() {
        let v = args
            .iter()
            .map(|a| match a.split_once('=') {
                Some((n, p)) if !n.is_empty() && !p.is_empty() => runtime(n, PathBuf::from(p)),
                _ => Err(BenchError::RuntimeArg(a.clone())),
            })
            .collect::<Result<_, _>>()?;
        return Ok((v, notes));
    }
    let mut v = Vec::new();
    for name in ["runc", "crun"] {
        match in_path(env.path.as_ref(), name) {
            Some(p) => v.push(runtime(name, p)?),
            None => notes.push(format!("{name} is not installed: left out")),
        }
    }
    let me = env.sandbox_vm.clone().ok_or(BenchError::NoSandboxVm)?;
    v.push(runtime("sandbox-vm", me)?);
    Ok((v, notes))
}

fn host_report(
    probe: &Path,
    budget_ms: u64,
    tmp: &Path,
) -> Result<sandbox_vm_probe::Report, BenchError> {
    let out = Command::new(probe)
        .args(["--host", "--budget-ms", &budget_ms.to_string(), "--tmp"])
        .arg(tmp)
        .output()
        .map_err(io("run", probe))?;
    if !out.status.success() {
        return Err(BenchError::HostProbe(format!("exit {}", out.status)));
    }
    probes::parse_output(&String::from_utf8_lossy(&out.stdout))
        .map_err(|e| BenchError::HostProbe(e.to_string()))
}

/// The scratch directory (bundle, runtime roots); removed when the bench ends.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

type Samples = BTreeMap<String, Vec<runner::Sample>>;
type Failures = BTreeMap<String, Vec<String>>;

/// `a.runs` repetitions, each one container per runtime, runtimes interleaved.
fn run_all(
    rts: &[Runtime],
    a: &IsolationArgs,
    bundle_dir: &Path,
    scratch: &Path,
) -> Result<(Samples, Failures), BenchError> {
    let (mut samples, mut failures) = (Samples::new(), Failures::new());
    for rt in rts {
        let root = scratch.join(format!("root-{}", rt.name));
        std::fs::create_dir_all(&root).map_err(io("create", &root))?;
    }
    for i in 0..a.runs {
        for rt in rts {
            let root = scratch.join(format!("root-{}", rt.name));
            let opts = RunOpts {
                bundle: bundle_dir,
                root: &root,
                id: format!("bench-{}-{}-{i}", std::process::id(), rt.name),
                measure_idle: !a.no_idle_memory,
                guest_ram_split: report::is_sandbox_vm(rt),
                timeout: Duration::from_secs(900),
            };
            eprint!("bench: run {}/{} {} ... ", i + 1, a.runs, rt.name);
            match rt.run_once(&opts) {
                Ok(s) => {
                    eprintln!("{:.0} ms to first output", s.first_output_ms);
                    samples.entry(rt.name.clone()).or_default().push(s);
                }
                Err(e) => {
                    eprintln!("failed: {e}");
                    failures
                        .entry(rt.name.clone())
                        .or_default()
                        .push(e.to_string());
                }
            }
        }
    }
    Ok((samples, failures))
}

/// `bench isolation`: runs the bench as `a` says and writes the reports; fails when a run
/// failed (after writing them).
pub fn isolation(a: IsolationArgs) -> Result<(), BenchError> {
    let (rts, notes) = runtimes(&a.runtimes, &a.env)?;
    let probe = bundle::find_probe(
        a.probe.as_deref(),
        a.env.probe.as_deref(),
        a.env.sandbox_vm.as_deref(),
    )
    .map_err(BenchError::Bundle)?;
    if !a.busybox.is_file() {
        return Err(BenchError::NoBusybox(a.busybox.clone()));
    }
    for n in &notes {
        eprintln!("bench: {n}");
    }
    let scratch = Scratch(
        a.env
            .temp_dir
            .join(format!("sandbox-vm-bench-{}", std::process::id())),
    );
    let bundle_dir = scratch.0.join("bundle");
    let args: Vec<String> = ["/bin/sandbox-vm-probe", "--idle", "--budget-ms"]
        .iter()
        .map(|s| s.to_string())
        .chain([a.budget_ms.to_string()])
        .collect();
    let rootfs =
        bundle::make(&bundle_dir, &a.busybox, &probe, &args).map_err(BenchError::Bundle)?;
    eprintln!("bench: probe {} ; host values", probe.display());
    let load_at_start = host::loadavg();
    let host = host_report(&probe, a.budget_ms, &scratch.0)?;
    let (samples, failures) = run_all(&rts, &a, &bundle_dir, &scratch.0)?;
    let versions = rts
        .iter()
        .map(|rt| (rt.name.clone(), rt.version()))
        .collect();
    let results = report::Results {
        env: host::env(&versions, &load_at_start),
        runs: a.runs,
        ctx: probes::HostContext {
            log_lines: host::kernel_log_lines(),
            bundle_rootfs: std::fs::canonicalize(&rootfs)
                .unwrap_or(rootfs)
                .display()
                .to_string(),
        },
        runtimes: rts,
        host,
        samples,
        failures,
    };
    write_reports(&a.out, &results)?;
    match results.failures.iter().next() {
        Some((rt, f)) => Err(BenchError::RunsFailed(format!("{rt}: {}", f[0]))),
        None => Ok(()),
    }
}

fn write_reports(out: &Path, r: &report::Results) -> Result<(), BenchError> {
    std::fs::create_dir_all(out).map_err(io("create", out))?;
    let text = report::text(r);
    print!("{text}");
    let put = |name: &str, body: String| {
        let p = out.join(name);
        std::fs::write(&p, body).map_err(io("write", &p))
    };
    put("report.txt", text)?;
    put(
        "report.json",
        serde_json::to_string_pretty(&report::json(r)).expect("json serialises"),
    )?;
    put("report.csv", report::csv(r))?;
    let names: Vec<String> = r.runtimes.iter().map(|rt| rt.name.clone()).collect();
    let title = format!(
        "sandbox-vm bench isolation: cost, median of {} run(s), log scale (KVM guest kernel mode: {})",
        r.runs,
        r.env["kvm_guest_kernel_mode"].as_str().unwrap_or("?").split(' ').next().unwrap_or("?")
    );
    svg::write(
        &out.join("cost.svg"),
        &cost::summarize(&r.samples, report::REFERENCE),
        &names,
        &title,
    )
    .map_err(BenchError::Svg)?;
    eprintln!("bench: reports in {}", out.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_runtimes_come_from_the_callers_path_and_executable() {
        let dir = std::env::temp_dir().join(format!("svm-bench-rts-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for f in ["runc", "sandbox-vm"] {
            std::fs::write(dir.join(f), "").unwrap();
        }
        let mut env = Environment {
            path: Some(format!("/nonexistent:{}", dir.display()).into()),
            sandbox_vm: Some(dir.join("sandbox-vm")),
            ..Environment::default()
        };
        let (rts, notes) = runtimes(&[], &env).unwrap();
        let names: Vec<&str> = rts.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["runc", "sandbox-vm"]);
        assert_eq!(rts[0].path, dir.join("runc"));
        assert_eq!(notes, ["crun is not installed: left out"]);
        env.sandbox_vm = None;
        assert!(matches!(runtimes(&[], &env), Err(BenchError::NoSandboxVm)));
        // Given runtimes need neither.
        let given = [format!("x={}", dir.join("runc").display())];
        let (rts, _) = runtimes(&given, &Environment::default()).unwrap();
        assert_eq!(rts[0].name, "x");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
