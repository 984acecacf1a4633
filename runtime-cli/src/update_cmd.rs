//! `sandbox-vm update`: runc's flags (or `-r FILE`, OCI `LinuxResources` JSON) become
//! new cgroup limits for the container in its VM, merged with those in force (recorded
//! in `state.json`). The VM must already be big enough for them: growing a running VM
//! is not supported yet, and such an update changes nothing.

use std::io::Read;
use std::path::PathBuf;

use clap::Args;
use oci_spec::runtime::{LinuxCpu, LinuxMemory, LinuxPids, LinuxResources};
use sandbox::SandboxOps;

use crate::lifecycle::{handle, load_in, sandbox_err, LifecycleError};
use crate::state::{Status, Store};

/// Update a running container's resource limits (runc's flags); its VM must already hold
/// them
#[derive(Args, Debug)]
pub struct UpdateArgs {
    /// Read the new limits from this file (OCI LinuxResources JSON, as `runc update -r`;
    /// `-` reads stdin); the other flags are then ignored
    #[arg(short, long)]
    pub resources: Option<PathBuf>,
    /// Memory limit in bytes (runc's units: 512m, 1g; -1 removes the limit)
    #[arg(long, value_parser = parse_bytes, allow_hyphen_values = true)]
    pub memory: Option<i64>,
    /// Memory + swap limit in bytes (-1: unlimited swap); the guest has no swap, so this only
    /// counts where the guest kernel offers a swap limit
    #[arg(long, value_parser = parse_bytes, allow_hyphen_values = true)]
    pub memory_swap: Option<i64>,
    /// Memory reservation (soft limit) in bytes
    #[arg(long, value_parser = parse_bytes, allow_hyphen_values = true)]
    pub memory_reservation: Option<i64>,
    /// CPU CFS quota in microseconds per period (-1 removes it)
    #[arg(long, allow_hyphen_values = true)]
    pub cpu_quota: Option<i64>,
    /// CPU CFS period in microseconds
    #[arg(long)]
    pub cpu_period: Option<u64>,
    /// CPU shares (relative weight)
    #[arg(long, visible_alias = "cpu-shares")]
    pub cpu_share: Option<u64>,
    /// Host CPUs (0-3,7): their count must fit the VM's vCPUs; not applied in the guest
    #[arg(long)]
    pub cpuset_cpus: Option<String>,
    /// Host memory nodes: accepted, not applied in the guest (it has one node)
    #[arg(long)]
    pub cpuset_mems: Option<String>,
    /// Most processes in the container (-1: no limit)
    #[arg(long, allow_hyphen_values = true)]
    pub pids_limit: Option<i64>,
    /// The container
    pub container_id: String,
}

/// Bad `update` input; one line each.
#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    #[error(transparent)]
    Lifecycle(#[from] LifecycleError),
    #[error(transparent)]
    State(#[from] crate::state::StateError),
    #[error("cannot read the resources {path}: {err}")]
    Read { path: PathBuf, err: String },
    #[error("update needs new limits: a flag such as --memory or --cpu-quota, or -r FILE")]
    Nothing,
}

/// A size in bytes as runc reads it (`units.RAMInBytes`): a number with an optional
/// binary suffix k, m, g, t or p (with or without `b`/`ib`), or -1 for no limit.
pub fn parse_bytes(s: &str) -> Result<i64, String> {
    let t = s.trim().to_ascii_lowercase();
    if t == "-1" {
        return Ok(-1);
    }
    let t = t
        .strip_suffix("ib")
        .or_else(|| t.strip_suffix('b'))
        .unwrap_or(&t);
    let (num, shift) = match t.chars().last() {
        Some(c @ ('k' | 'm' | 'g' | 't' | 'p')) => {
            let shift = 10 * (1 + "kmgtp".find(c).expect("listed"));
            (&t[..t.len() - 1], shift)
        }
        _ => (t, 0),
    };
    let bad = || format!("{s:?} is not a size (bytes, or a number with k, m, g, t or p)");
    let v: f64 = num.trim().parse().map_err(|_| bad())?;
    let bytes = v * (1u64 << shift) as f64;
    if !(0.0..9.2e18).contains(&bytes) {
        return Err(bad());
    }
    Ok(bytes as i64)
}

impl UpdateArgs {
    /// The flags as OCI resources (`None` where no flag of a group was given).
    pub fn to_resources(&self) -> LinuxResources {
        let mut r = LinuxResources::default();
        if self
            .memory
            .or(self.memory_swap)
            .or(self.memory_reservation)
            .is_some()
        {
            let mut m = LinuxMemory::default();
            m.set_limit(self.memory);
            m.set_swap(self.memory_swap);
            m.set_reservation(self.memory_reservation);
            r.set_memory(Some(m));
        }
        let cpu_set = self.cpu_quota.is_some()
            || self.cpu_period.is_some()
            || self.cpu_share.is_some()
            || self.cpuset_cpus.is_some()
            || self.cpuset_mems.is_some();
        if cpu_set {
            let mut c = LinuxCpu::default();
            c.set_quota(self.cpu_quota);
            c.set_period(self.cpu_period);
            c.set_shares(self.cpu_share);
            c.set_cpus(self.cpuset_cpus.clone());
            c.set_mems(self.cpuset_mems.clone());
            r.set_cpu(Some(c));
        }
        if let Some(l) = self.pids_limit {
            let mut p = LinuxPids::default();
            p.set_limit(l);
            r.set_pids(Some(p));
        }
        r
    }
}

fn read_resources(path: &PathBuf) -> Result<LinuxResources, UpdateError> {
    let err = |e: &dyn std::fmt::Display| UpdateError::Read {
        path: path.clone(),
        err: e.to_string(),
    };
    let mut text = String::new();
    if path.as_os_str() == "-" {
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|e| err(&e))?;
    } else {
        text = std::fs::read_to_string(path).map_err(|e| err(&e))?;
    }
    serde_json::from_str(&text).map_err(|e| err(&e))
}

/// `update`: sets the new limits in the guest and records them.
pub fn run(store: &Store, args: &UpdateArgs) -> Result<(), UpdateError> {
    let id = args.container_id.as_str();
    let update = match &args.resources {
        Some(path) => read_resources(path)?,
        None => args.to_resources(),
    };
    if update == LinuxResources::default() {
        return Err(UpdateError::Nothing);
    }
    // The agent answers only while the VM runs: a paused container is resumed first.
    let state = load_in(
        store,
        id,
        &[Status::Created, Status::Running],
        "only a created or running container can be updated",
    )?;
    let limits = sandbox::resize::merge(&state.resources.unwrap_or_default(), &update);
    handle(store, id)
        .update(id, &limits)
        .map_err(sandbox_err(id))?;
    store.update(id, |s| s.resources = Some(limits.clone()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: UpdateArgs,
    }

    fn parse(argv: &[&str]) -> Result<UpdateArgs, clap::Error> {
        Cli::try_parse_from(["update"].iter().chain(argv)).map(|c| c.args)
    }

    #[test]
    fn runc_sizes() {
        assert_eq!(parse_bytes("1048576"), Ok(1 << 20));
        assert_eq!(parse_bytes("512m"), Ok(512 << 20));
        assert_eq!(parse_bytes("1G"), Ok(1 << 30));
        assert_eq!(parse_bytes("1.5GiB"), Ok(3 << 29));
        assert_eq!(parse_bytes("64kb"), Ok(64 << 10));
        assert_eq!(parse_bytes("-1"), Ok(-1));
        for bad in ["", "x", "-2", "12q", "1e30"] {
            assert!(parse_bytes(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn flags_become_linux_resources() {
        let a = parse(&[
            "--memory",
            "32m",
            "--memory-swap",
            "-1",
            "--cpu-quota",
            "50000",
            "--cpu-period",
            "100000",
            "--cpu-shares",
            "512",
            "--cpuset-cpus",
            "0-1",
            "--pids-limit",
            "-1",
            "c1",
        ])
        .unwrap();
        assert_eq!(a.container_id, "c1");
        let r = a.to_resources();
        let want: LinuxResources = serde_json::from_value(serde_json::json!({
            "memory": {"limit": 32 << 20, "swap": -1},
            "cpu": {"quota": 50000, "period": 100000, "shares": 512, "cpus": "0-1"},
            "pids": {"limit": -1},
        }))
        .unwrap();
        assert_eq!(r, want);
        // Only what was given.
        let r = parse(&["--cpu-quota", "20000", "c1"])
            .unwrap()
            .to_resources();
        assert!(r.memory().is_none() && r.pids().is_none());
        assert_eq!(r.cpu().as_ref().unwrap().period(), None);
        assert_eq!(
            parse(&["c1"]).unwrap().to_resources(),
            LinuxResources::default()
        );
        // runc 1.1 has no --kernel-memory; neither do we.
        assert!(parse(&["--kernel-memory", "1m", "c1"]).is_err());
        assert!(parse(&["--memory", "lots", "c1"]).is_err());
    }

    #[test]
    fn resources_file_or_stdin_form() {
        let d = std::env::temp_dir().join(format!("svm-update-{}.json", std::process::id()));
        std::fs::write(
            &d,
            r#"{"memory": {"limit": 33554432}, "cpu": {"quota": 1000}}"#,
        )
        .unwrap();
        let r = read_resources(&d).unwrap();
        assert_eq!(r.memory().as_ref().unwrap().limit(), Some(32 << 20));
        std::fs::write(&d, "{not json").unwrap();
        let e = read_resources(&d).unwrap_err();
        assert!(
            e.to_string().starts_with("cannot read the resources"),
            "{e}"
        );
        let _ = std::fs::remove_file(&d);
    }
}
