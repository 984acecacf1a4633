//! Runs the probe bundle under one OCI runtime: `create` (stdio piped, `--pid-file`),
//! `start`, read the probe's JSON, measure the idle sandbox's host memory while the probe
//! sleeps, `delete --force`. One container per repetition gives every measurement.

use std::io::{BufRead, BufReader, Read as _};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use sandbox_vm_probe::{Report, STARTED_LINE};

use super::host;
use super::probes::{self, UptimeWindow};

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot run {what} ({path}): {err}")]
    Spawn {
        what: String,
        path: String,
        err: std::io::Error,
    },
    #[error("{what} failed ({status}): {stderr}")]
    Failed {
        what: String,
        status: String,
        stderr: String,
    },
    #[error("no probe output within {0} s")]
    Timeout(u64),
    #[error("{0}")]
    Probe(probes::ProbeError),
    #[error("reading the pid file {path}: {err}")]
    PidFile { path: String, err: String },
}

/// An OCI runtime under test.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Runtime {
    pub name: String,
    pub path: PathBuf,
    /// crun 1.8 refuses hybrid cgroup hosts whose cgroup2 mount is empty: each crun
    /// command then runs in a private mount namespace without that mount.
    pub hide_unified_cgroup: bool,
}

/// Everything one repetition measured.
#[derive(Debug, Clone)]
pub struct Sample {
    pub report: Report,
    /// From spawning `create` to the probe's first stderr line.
    pub first_output_ms: f64,
    /// PSS of every host process of the idle sandbox, KiB.
    pub idle_pss_kib: Option<u64>,
    pub idle_processes: usize,
    /// For a VM: PSS of its guest RAM (the largest mapping), KiB.
    pub guest_ram_pss_kib: Option<u64>,
    pub uptime: UptimeWindow,
}

pub struct RunOpts<'a> {
    pub bundle: &'a Path,
    pub root: &'a Path,
    pub id: String,
    pub measure_idle: bool,
    /// Split the idle memory into guest RAM and the rest (VM runtimes).
    pub guest_ram_split: bool,
    /// How long the probe may take to print its report.
    pub timeout: Duration,
}

impl Runtime {
    pub fn command(&self, root: &Path) -> Command {
        let mut c = Command::new(&self.path);
        c.arg("--root").arg(root).stdin(Stdio::null());
        if self.hide_unified_cgroup {
            // SAFETY: the closure runs in the child between fork and exec and only makes
            // system calls (async-signal-safe) on static strings.
            unsafe { c.pre_exec(host::private_mounts_without_unified_cgroup) };
        }
        c
    }

    fn check(&self, root: &Path, args: &[&str]) -> Result<(), RunError> {
        let what = format!("{} {}", self.name, args.first().copied().unwrap_or(""));
        let out = self
            .command(root)
            .args(args)
            .output()
            .map_err(|err| self.spawn_error(&what, err))?;
        if out.status.success() {
            return Ok(());
        }
        Err(RunError::Failed {
            what,
            status: out.status.to_string(),
            stderr: tail(&String::from_utf8_lossy(&out.stderr)),
        })
    }

    fn spawn_error(&self, what: &str, err: std::io::Error) -> RunError {
        RunError::Spawn {
            what: what.into(),
            path: self.path.display().to_string(),
            err,
        }
    }

    /// `NAME --version`, first line.
    pub fn version(&self) -> String {
        Command::new(&self.path)
            .arg("--version")
            .output()
            .ok()
            .and_then(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .next()
                    .map(String::from)
            })
            .unwrap_or_else(|| "unknown".into())
    }

    /// One repetition: create, start, read the report, measure, delete.
    pub fn run_once(&self, o: &RunOpts<'_>) -> Result<Sample, RunError> {
        let pid_file = o.root.join(format!("{}.pid", o.id));
        let before = host::uptime();
        let t0 = Instant::now();
        let mut create = self
            .command(o.root)
            .arg("create")
            .arg("--bundle")
            .arg(o.bundle)
            .arg("--pid-file")
            .arg(&pid_file)
            .arg(&o.id)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|err| self.spawn_error("create", err))?;
        let _cleanup = Delete {
            rt: self,
            root: o.root,
            id: &o.id,
        };
        let (json_rx, started_rx, stderr_rx) = read_streams(&mut create, t0);
        let status = create
            .wait()
            .map_err(|err| self.spawn_error("create", err))?;
        if !status.success() {
            return Err(RunError::Failed {
                what: format!("{} create", self.name),
                status: status.to_string(),
                stderr: stderr_rx
                    .recv_timeout(Duration::from_secs(5))
                    .unwrap_or_default(),
            });
        }
        self.check(o.root, &["start", &o.id])?;
        let stdout = json_rx
            .recv_timeout(o.timeout)
            .map_err(|_| RunError::Timeout(o.timeout.as_secs()))?;
        let report = probes::parse_output(&stdout).map_err(RunError::Probe)?;
        let after = host::uptime();
        let first_output_ms = started_rx
            .recv_timeout(Duration::from_secs(5))
            .map(|d| d.as_secs_f64() * 1e3)
            .map_err(|_| RunError::Failed {
                what: "the probe".into(),
                status: "no start line".into(),
                stderr: format!("expected {STARTED_LINE:?} on stderr"),
            })?;
        let (mut idle_pss_kib, mut idle_processes, mut guest_ram_pss_kib) = (None, 0, None);
        if o.measure_idle {
            std::thread::sleep(Duration::from_secs(2));
            let pid = read_pid(&pid_file)?;
            let (kib, n) = host::tree_pss_kib(pid);
            (idle_pss_kib, idle_processes) = (Some(kib), n);
            if o.guest_ram_split {
                guest_ram_pss_kib = host::tree_largest_mapping_pss_kib(pid);
            }
        }
        Ok(Sample {
            report,
            first_output_ms,
            idle_pss_kib,
            idle_processes,
            guest_ram_pss_kib,
            uptime: UptimeWindow { before, after },
        })
    }
}

fn read_pid(path: &Path) -> Result<i32, RunError> {
    let err = |e: String| RunError::PidFile {
        path: path.display().to_string(),
        err: e,
    };
    std::fs::read_to_string(path)
        .map_err(|e| err(e.to_string()))?
        .trim()
        .parse()
        .map_err(|e: std::num::ParseIntError| err(e.to_string()))
}

/// Readers of the container's stdout (the report line) and stderr (the start line, then
/// everything for error messages). The threads end when the sandbox's pipes close.
fn read_streams(
    child: &mut Child,
    t0: Instant,
) -> (
    mpsc::Receiver<String>,
    mpsc::Receiver<Duration>,
    mpsc::Receiver<String>,
) {
    let (json_tx, json_rx) = mpsc::channel();
    let (started_tx, started_rx) = mpsc::channel();
    let (stderr_tx, stderr_rx) = mpsc::channel();
    if let Some(out) = child.stdout.take() {
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(out).read_line(&mut line);
            let _ = json_tx.send(line);
        });
    }
    if let Some(err) = child.stderr.take() {
        std::thread::spawn(move || {
            let mut r = BufReader::new(err);
            let mut all = String::new();
            let mut line = String::new();
            while matches!(r.read_line(&mut line), Ok(n) if n > 0) {
                if line.contains(STARTED_LINE) {
                    let _ = started_tx.send(t0.elapsed());
                    break;
                }
                all.push_str(&line);
                line.clear();
            }
            let mut rest = String::new();
            let _ = r.read_to_string(&mut rest);
            let _ = stderr_tx.send(tail(&(all + &rest)));
        });
    }
    (json_rx, started_rx, stderr_rx)
}

fn tail(s: &str) -> String {
    let s = s.trim();
    let start = s.len().saturating_sub(400);
    let start = (start..s.len())
        .find(|i| s.is_char_boundary(*i))
        .unwrap_or(0);
    s[start..].to_string()
}

/// Deletes the container however the run ends.
struct Delete<'a> {
    rt: &'a Runtime,
    root: &'a Path,
    id: &'a str,
}

impl Drop for Delete<'_> {
    fn drop(&mut self) {
        let _ = self
            .rt
            .command(self.root)
            .args(["delete", "--force", self.id])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_keeps_the_end() {
        assert_eq!(tail("  short \n"), "short");
        let long = "é".repeat(300);
        let t = tail(&long);
        assert!(t.len() <= 400 && long.ends_with(&t));
    }
}
