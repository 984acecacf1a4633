//! OCI resources → the control-file writes that set them ([`plan`], pure), and applying
//! a plan all or nothing ([`apply`]).
//!
//! Runc's rules for what a value means: 0 leaves a limit as it is, -1 (any negative)
//! removes it. A field left out keeps its current value (an update names only what
//! changes; CPU quota and period share `cpu.max` in v2, so the one not given is read).
//! `cpu.cpus`/`cpu.mems` name host CPUs and nodes, not the guest's: they are not
//! written (the host sizes the VM from them).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use agent_protocol::oci_spec::runtime::{LinuxCpu, LinuxMemory, LinuxResources};

use super::{CgroupError, Ctrl};

/// One control-file write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Write {
    pub ctrl: Ctrl,
    pub file: &'static str,
    pub value: String,
    /// Skipped when the kernel does not have the file (swap limits without swap).
    pub optional: bool,
}

impl Write {
    fn new(ctrl: Ctrl, file: &'static str, value: impl Into<String>) -> Write {
        Write {
            ctrl,
            file,
            value: value.into(),
            optional: false,
        }
    }
}

/// What a control file holds now (trimmed), if it can be read.
pub(super) type Current<'a> = &'a dyn Fn(Ctrl, &str) -> Option<String>;

/// The writes that set `res`, in the order to make them: CPU and pids first, memory
/// last (lowering a memory limit reclaims or OOM-kills at once, which no undo brings
/// back, so it goes after the writes most likely to be refused). `has` says whether a
/// controller is available; a limit on a missing one is an error.
pub(super) fn plan(
    v2: bool,
    has: impl Fn(Ctrl) -> bool,
    res: &LinuxResources,
    current: Current,
) -> Result<Vec<Write>, CgroupError> {
    let mut w = Vec::new();
    if let Some(cpu) = res.cpu() {
        plan_cpu(&mut w, v2, cpu, current);
    }
    if let Some(p) = res.pids() {
        if p.limit() != 0 {
            w.push(Write::new(
                Ctrl::Pids,
                "pids.max",
                unlimited(p.limit(), "max"),
            ));
        }
    }
    if let Some(mem) = res.memory() {
        plan_memory(&mut w, v2, mem, current);
    }
    if let Some(missing) = w.iter().find(|w| !has(w.ctrl)) {
        return Err(CgroupError::Missing(missing.ctrl.name()));
    }
    Ok(w)
}

/// `v` as a control-file value, `none` for a negative (no limit).
fn unlimited(v: i64, none: &str) -> String {
    if v < 0 {
        none.to_string()
    } else {
        v.to_string()
    }
}

/// Non-zero values only: 0 means "leave it".
fn set(v: Option<i64>) -> Option<i64> {
    v.filter(|&v| v != 0)
}

fn plan_cpu(w: &mut Vec<Write>, v2: bool, cpu: &LinuxCpu, current: Current) {
    if let Some(shares) = cpu.shares().filter(|&s| s != 0) {
        if v2 {
            // The conversion runc and crun use: shares 2..=262144 onto weight 1..=10000.
            let weight = 1 + (shares.clamp(2, 262_144) - 2) * 9999 / 262_142;
            w.push(Write::new(Ctrl::Cpu, "cpu.weight", weight.to_string()));
        } else {
            w.push(Write::new(Ctrl::Cpu, "cpu.shares", shares.to_string()));
        }
    }
    let quota = set(cpu.quota());
    let period = cpu.period().filter(|&p| p != 0);
    if quota.is_none() && period.is_none() {
        return;
    }
    if v2 {
        let now = current(Ctrl::Cpu, "cpu.max").unwrap_or_default();
        let mut now = now.split_whitespace();
        let (now_quota, now_period) = (now.next(), now.next());
        let q = quota.map_or_else(
            || now_quota.unwrap_or("max").into(),
            |q| unlimited(q, "max"),
        );
        let p = period.map_or_else(|| now_period.unwrap_or("100000").into(), |p| p.to_string());
        w.push(Write::new(Ctrl::Cpu, "cpu.max", format!("{q} {p}")));
    } else {
        if let Some(p) = period {
            w.push(Write::new(Ctrl::Cpu, "cpu.cfs_period_us", p.to_string()));
        }
        if let Some(q) = quota {
            w.push(Write::new(
                Ctrl::Cpu,
                "cpu.cfs_quota_us",
                unlimited(q, "-1"),
            ));
        }
    }
}

fn plan_memory(w: &mut Vec<Write>, v2: bool, mem: &LinuxMemory, current: Current) {
    let none = if v2 { "max" } else { "-1" };
    if let Some(r) = set(mem.reservation()) {
        let file = if v2 {
            "memory.low"
        } else {
            "memory.soft_limit_in_bytes"
        };
        w.push(Write::new(Ctrl::Memory, file, unlimited(r, none)));
    }
    let limit = set(mem.limit());
    let limit_file = if v2 {
        "memory.max"
    } else {
        "memory.limit_in_bytes"
    };
    let limit_write = limit.map(|l| Write::new(Ctrl::Memory, limit_file, unlimited(l, none)));
    let Some(swap) = set(mem.swap()) else {
        w.extend(limit_write);
        return;
    };
    if v2 {
        // OCI's swap is memory + swap; v2 limits swap alone.
        let limit = limit.or_else(|| current(Ctrl::Memory, "memory.max")?.parse().ok());
        let value = match limit {
            Some(l) if swap >= 0 && l >= 0 => (swap - l).max(0).to_string(),
            _ => unlimited(swap, none),
        };
        w.extend(limit_write);
        w.push(Write {
            optional: true,
            ..Write::new(Ctrl::Memory, "memory.swap.max", value)
        });
        return;
    }
    // v1 keeps memory <= memory + swap at every step: raise the sum first, lower it last.
    let memsw = Write {
        optional: true,
        ..Write::new(
            Ctrl::Memory,
            "memory.memsw.limit_in_bytes",
            unlimited(swap, none),
        )
    };
    let now: Option<i64> =
        current(Ctrl::Memory, "memory.memsw.limit_in_bytes").and_then(|v| v.parse().ok());
    if swap < 0 || now.is_some_and(|now| swap > now) {
        w.push(memsw);
        w.extend(limit_write);
    } else {
        w.extend(limit_write);
        w.push(memsw);
    }
}

/// Makes `writes` in `dirs` (each write's file in its controller's directory) all or
/// nothing: every file's value is read first (a file that cannot be read fails the whole
/// update before anything is written; an optional one that does not exist is skipped),
/// then they are written in order, and on a failed write those already made get their
/// old values back, last first.
pub(super) fn apply(
    dir: impl Fn(Ctrl) -> Option<PathBuf>,
    writes: Vec<Write>,
) -> Result<(), CgroupError> {
    let mut todo: Vec<(PathBuf, String, String)> = Vec::with_capacity(writes.len());
    for w in writes {
        let path = dir(w.ctrl)
            .ok_or(CgroupError::Missing(w.ctrl.name()))?
            .join(w.file);
        match fs::read_to_string(&path) {
            Ok(old) => todo.push((path, w.value, old.trim().to_string())),
            Err(e) if w.optional && e.kind() == io::ErrorKind::NotFound => {}
            Err(cause) => return Err(CgroupError::Read { path, cause }),
        }
    }
    for (i, (path, value, _)) in todo.iter().enumerate() {
        if let Err(cause) = fs::write(path, value) {
            let failed = CgroupError::Write {
                path: path.clone(),
                value: value.clone(),
                cause,
            };
            return Err(match undo(&todo[..i]) {
                None => failed,
                Some(left) => CgroupError::Undo {
                    failed: Box::new(failed),
                    left,
                },
            });
        }
    }
    Ok(())
}

/// Writes the old values back, last first; the first file that could not be restored.
fn undo(done: &[(PathBuf, String, String)]) -> Option<PathBuf> {
    let mut left = None;
    for (path, _, old) in done.iter().rev() {
        if fs::write(path, old).is_err() && left.is_none() {
            left = Some(path.clone());
        }
    }
    left
}

/// Reads a control file for [`Current`].
pub(super) fn read(dir: Option<&Path>, file: &str) -> Option<String> {
    Some(fs::read_to_string(dir?.join(file)).ok()?.trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn res(v: serde_json::Value) -> LinuxResources {
        serde_json::from_value(v).unwrap()
    }

    fn files(w: &[Write]) -> Vec<(&str, &str)> {
        w.iter().map(|w| (w.file, w.value.as_str())).collect()
    }

    fn v2_now(_: Ctrl, file: &str) -> Option<String> {
        match file {
            "cpu.max" => Some("max 100000".into()),
            "memory.max" => Some("268435456".into()),
            _ => None,
        }
    }

    #[test]
    fn v2_plan_memory_last_and_zero_leaves_a_limit() {
        let r = res(serde_json::json!({
            "memory": {"limit": 33554432, "reservation": 16777216, "swap": 50331648},
            "cpu": {"shares": 1024, "quota": 50000, "period": 200000, "cpus": "5-7", "mems": "1"},
            "pids": {"limit": 64},
        }));
        let w = plan(true, |_| true, &r, &v2_now).unwrap();
        assert_eq!(
            files(&w),
            [
                ("cpu.weight", "39"),
                ("cpu.max", "50000 200000"),
                ("pids.max", "64"),
                ("memory.low", "16777216"),
                ("memory.max", "33554432"),
                ("memory.swap.max", "16777216"),
            ]
        );
        assert!(w
            .iter()
            .all(|w| w.optional == (w.file == "memory.swap.max")));
        // 0 leaves each limit alone; -1 removes it.
        let r = res(serde_json::json!({"memory": {"limit": 0, "swap": 0},
            "cpu": {"shares": 0, "quota": 0, "period": 0}, "pids": {"limit": 0}}));
        assert!(plan(true, |_| true, &r, &v2_now).unwrap().is_empty());
        let r = res(serde_json::json!({"memory": {"limit": -1}, "pids": {"limit": -1}}));
        assert_eq!(
            files(&plan(true, |_| true, &r, &v2_now).unwrap()),
            [("pids.max", "max"), ("memory.max", "max")]
        );
    }

    #[test]
    fn v2_quota_or_period_alone_keeps_the_other() {
        let now = |_: Ctrl, f: &str| (f == "cpu.max").then(|| "150000 300000".to_string());
        let q = res(serde_json::json!({"cpu": {"quota": 20000}}));
        assert_eq!(
            files(&plan(true, |_| true, &q, &now).unwrap()),
            [("cpu.max", "20000 300000")]
        );
        let p = res(serde_json::json!({"cpu": {"period": 50000}}));
        assert_eq!(
            files(&plan(true, |_| true, &p, &now).unwrap()),
            [("cpu.max", "150000 50000")]
        );
        let off = res(serde_json::json!({"cpu": {"quota": -1}}));
        assert_eq!(
            files(&plan(true, |_| true, &off, &now).unwrap()),
            [("cpu.max", "max 300000")]
        );
        // Swap without a new limit is counted from the current one.
        let s = res(serde_json::json!({"memory": {"swap": 300000000}}));
        assert_eq!(
            files(&plan(true, |_| true, &s, &v2_now).unwrap()),
            [("memory.swap.max", "31564544")]
        );
    }

    #[test]
    fn v1_files_and_memsw_order() {
        let now = |_: Ctrl, f: &str| {
            (f == "memory.memsw.limit_in_bytes").then(|| "100000000".to_string())
        };
        let raise = res(
            serde_json::json!({"memory": {"limit": 150000000, "swap": 200000000},
            "cpu": {"shares": 512, "quota": 50000, "period": 100000}}),
        );
        assert_eq!(
            files(&plan(false, |_| true, &raise, &now).unwrap()),
            [
                ("cpu.shares", "512"),
                ("cpu.cfs_period_us", "100000"),
                ("cpu.cfs_quota_us", "50000"),
                ("memory.memsw.limit_in_bytes", "200000000"),
                ("memory.limit_in_bytes", "150000000"),
            ]
        );
        let lower = res(serde_json::json!({"memory": {"limit": 50000000, "swap": 60000000}}));
        assert_eq!(
            files(&plan(false, |_| true, &lower, &now).unwrap()),
            [
                ("memory.limit_in_bytes", "50000000"),
                ("memory.memsw.limit_in_bytes", "60000000"),
            ]
        );
    }

    #[test]
    fn a_limit_on_a_missing_controller_is_refused() {
        let r = res(serde_json::json!({"pids": {"limit": 5}}));
        let e = plan(false, |c| c != Ctrl::Pids, &r, &v2_now).unwrap_err();
        assert!(matches!(e, CgroupError::Missing("pids")), "{e}");
        // cpus/mems alone write nothing, so need nothing.
        let r = res(serde_json::json!({"cpu": {"cpus": "0-3", "mems": "0"}}));
        assert!(plan(true, |_| false, &r, &v2_now).unwrap().is_empty());
    }

    /// A fake v2 cgroup directory with the files a container's cgroup has.
    fn fake_cgroup(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("svm-cg-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        for (f, v) in [
            ("cpu.max", "max 100000\n"),
            ("cpu.weight", "100\n"),
            ("pids.max", "max\n"),
            ("memory.max", "max\n"),
            ("memory.low", "0\n"),
        ] {
            fs::write(d.join(f), v).unwrap();
        }
        d
    }

    fn read_all(d: &Path) -> Vec<String> {
        [
            "cpu.max",
            "cpu.weight",
            "pids.max",
            "memory.max",
            "memory.low",
        ]
        .iter()
        .map(|f| read(Some(d), f).unwrap())
        .collect()
    }

    #[test]
    fn apply_writes_every_file() {
        let d = fake_cgroup("apply");
        let r = res(
            serde_json::json!({"memory": {"limit": 33554432, "swap": 33554432},
            "cpu": {"quota": 50000, "period": 100000}, "pids": {"limit": 32}}),
        );
        let now = |_: Ctrl, f: &str| read(Some(&d), f);
        let w = plan(true, |_| true, &r, &now).unwrap();
        apply(|_| Some(d.clone()), w).unwrap();
        assert_eq!(read_all(&d), ["50000 100000", "100", "32", "33554432", "0"]);
        // No swap file (a guest without swap): the swap limit is skipped, not an error.
        assert!(!d.join("memory.swap.max").exists());
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_failed_write_puts_the_old_limits_back() {
        let d = fake_cgroup("undo");
        // pids.max reads fine but refuses writes (as a kernel refuses a bad value).
        fs::remove_file(d.join("pids.max")).unwrap();
        std::os::unix::fs::symlink("/proc/version", d.join("pids.max")).unwrap();
        let before = fs::read_to_string(d.join("cpu.max")).unwrap();
        let w = vec![
            Write::new(Ctrl::Cpu, "cpu.max", "20000 100000"),
            Write::new(Ctrl::Memory, "memory.low", "4096"),
            Write::new(Ctrl::Pids, "pids.max", "7"),
            Write::new(Ctrl::Memory, "memory.max", "16777216"),
        ];
        let e = apply(|_| Some(d.clone()), w).unwrap_err();
        assert!(
            matches!(&e, CgroupError::Write { path, .. } if path.ends_with("pids.max")),
            "{e}"
        );
        assert_eq!(before.trim(), read(Some(&d), "cpu.max").unwrap());
        assert_eq!(read(Some(&d), "memory.low").unwrap(), "0");
        assert_eq!(
            read(Some(&d), "memory.max").unwrap(),
            "max",
            "never written"
        );
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn an_unreadable_file_fails_before_any_write() {
        let d = fake_cgroup("unread");
        fs::remove_file(d.join("memory.max")).unwrap();
        let w = vec![
            Write::new(Ctrl::Cpu, "cpu.max", "20000 100000"),
            Write::new(Ctrl::Memory, "memory.max", "16777216"),
        ];
        let e = apply(|_| Some(d.clone()), w).unwrap_err();
        assert!(matches!(e, CgroupError::Read { .. }), "{e}");
        assert_eq!(read(Some(&d), "cpu.max").unwrap(), "max 100000");
        fs::remove_dir_all(&d).unwrap();
    }
}
