//! Container cgroups: cgroup v2 when its hierarchy has controllers, else the
//! v1 controller hierarchies (memory, cpu, cpuacct, pids).
//!
//! Paths: an absolute `cgroupsPath` is taken from the hierarchy root; a
//! relative one, or the default `sandbox-vm/<id>`, is placed under the
//! agent's own cgroup (the root in the guest; the test's cgroup on a host).

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use agent_protocol::oci_spec::runtime::LinuxResources;
use agent_protocol::ContainerStats;

mod limits;

/// Cgroup failures.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// mkdir failed.
    #[error("cannot create cgroup {path}: {cause}")]
    Create {
        /// Directory.
        path: PathBuf,
        /// Cause.
        cause: io::Error,
    },
    /// Writing a control file failed.
    #[error("cannot write {value:?} to {path}: {cause}")]
    Write {
        /// File.
        path: PathBuf,
        /// Value.
        value: String,
        /// Cause.
        cause: io::Error,
    },
    /// A limit needs a controller this kernel does not offer.
    #[error("the spec sets a {0} limit but the guest has no {0} cgroup controller; drop the limit or enable the controller")]
    Missing(&'static str),
    /// Reading a control file failed (before anything was written).
    #[error("cannot read {path}: {cause}")]
    Read {
        /// File.
        path: PathBuf,
        /// Cause.
        cause: io::Error,
    },
    /// A write failed and an earlier one of the same update could not be undone.
    #[error("{failed}; {left} keeps the new value: its old one could not be written back")]
    Undo {
        /// The write that failed.
        failed: Box<CgroupError>,
        /// A file left with the new value.
        left: PathBuf,
    },
    /// An invalid cgroupsPath.
    #[error("invalid cgroupsPath {0:?}: it must not contain '..'")]
    BadPath(String),
}

/// A controller (v1) or the unified hierarchy (v2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ctrl {
    Memory,
    Cpu,
    Cpuacct,
    Pids,
    Unified,
}

impl Ctrl {
    const V1: [Ctrl; 4] = [Ctrl::Memory, Ctrl::Cpu, Ctrl::Cpuacct, Ctrl::Pids];
    fn name(self) -> &'static str {
        match self {
            Ctrl::Memory => "memory",
            Ctrl::Cpu => "cpu",
            Ctrl::Cpuacct => "cpuacct",
            Ctrl::Pids => "pids",
            Ctrl::Unified => "",
        }
    }
}

/// One hierarchy: where it is mounted and the agent's own cgroup in it.
#[derive(Clone, Debug)]
struct Hier {
    ctrl: Ctrl,
    mount: PathBuf,
    own: String,
}

/// The cgroup hierarchies available to the agent.
#[derive(Debug, Default)]
pub struct CgroupManager {
    hiers: Vec<Hier>,
    /// v2 ancestors whose children already have the controllers enabled (by this agent):
    /// each check and write is several emulated system calls, and a template's agent
    /// prepares the default parent before its snapshot ([`CgroupManager::prepare`]).
    prepared: Mutex<HashSet<PathBuf>>,
}

/// Parses /proc/self/mountinfo into (mount point, fstype, super options).
fn cgroup_mounts(mountinfo: &str) -> Vec<(PathBuf, String, String)> {
    mountinfo
        .lines()
        .filter_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            let mnt = pre.split(' ').nth(4)?;
            let mut post = post.split(' ');
            let fstype = post.next()?;
            let opts = post.nth(1).unwrap_or("");
            fstype
                .starts_with("cgroup")
                .then(|| (PathBuf::from(mnt), fstype.to_string(), opts.to_string()))
        })
        .collect()
}

/// The agent's cgroup path for a v1 controller or ("" =) v2.
fn own_path(self_cgroup: &str, ctrl: &str) -> String {
    for l in self_cgroup.lines() {
        let mut f = l.splitn(3, ':');
        let (Some(_), Some(ctrls), Some(path)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        if (ctrl.is_empty() && ctrls.is_empty()) || ctrls.split(',').any(|c| c == ctrl) {
            return path.to_string();
        }
    }
    "/".to_string()
}

impl CgroupManager {
    /// Finds the hierarchies from /proc/self/mountinfo.
    pub fn detect() -> Self {
        let mi = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let sc = fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
        Self::from_tables(&mi, &sc, |p| {
            fs::read_to_string(p.join("cgroup.controllers")).unwrap_or_default()
        })
    }

    fn from_tables(mi: &str, sc: &str, controllers: impl Fn(&Path) -> String) -> Self {
        let mounts = cgroup_mounts(mi);
        // Later mounts hide earlier ones at the same place: search from the end.
        let v2 = mounts.iter().rev().find(|(m, t, _)| {
            t == "cgroup2" && controllers(m).split_whitespace().any(|c| c == "memory")
        });
        if let Some((m, _, _)) = v2 {
            return CgroupManager {
                hiers: vec![Hier {
                    ctrl: Ctrl::Unified,
                    mount: m.clone(),
                    own: own_path(sc, ""),
                }],
                prepared: Mutex::default(),
            };
        }
        let hiers = Ctrl::V1
            .iter()
            .filter_map(|&ctrl| {
                let (m, _, _) = mounts
                    .iter()
                    .rev()
                    .find(|(_, t, o)| t == "cgroup" && o.split(',').any(|x| x == ctrl.name()))?;
                Some(Hier {
                    ctrl,
                    mount: m.clone(),
                    own: own_path(sc, ctrl.name()),
                })
            })
            .collect();
        CgroupManager {
            hiers,
            prepared: Mutex::default(),
        }
    }

    /// True for cgroup v2.
    pub fn is_v2(&self) -> bool {
        self.hiers.iter().any(|h| h.ctrl == Ctrl::Unified)
    }

    fn has(&self, ctrl: Ctrl) -> bool {
        self.hiers
            .iter()
            .any(|h| h.ctrl == ctrl || h.ctrl == Ctrl::Unified)
    }

    /// Prepares the parent of containers' default cgroups (`sandbox-vm/` under the
    /// agent's own): it exists and hands its children the controllers, so creating a
    /// container's cgroup is one `mkdir`. A template's agent does this before its
    /// snapshot.
    pub fn prepare(&self) {
        let mut prepared = self.prepared.lock().unwrap_or_else(|e| e.into_inner());
        for h in self.hiers.iter().filter(|h| h.ctrl == Ctrl::Unified) {
            let leaf = format!("{}/sandbox-vm/x", h.own.trim_end_matches('/'));
            let dir = h.mount.join(leaf.trim_start_matches('/'));
            enable_v2_controllers(&h.mount, &dir, &mut prepared);
        }
    }

    /// Creates the container's cgroup and applies the spec's limits.
    pub fn create(
        &self,
        id: &str,
        cgroups_path: Option<&Path>,
        res: Option<&LinuxResources>,
    ) -> Result<Cgroup, CgroupError> {
        let rel = cgroups_path
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_else(|| format!("sandbox-vm/{id}"));
        if rel.split('/').any(|c| c == "..") {
            return Err(CgroupError::BadPath(rel));
        }
        let mut dirs: Vec<(Ctrl, PathBuf)> = Vec::new();
        for h in &self.hiers {
            let full = if rel.starts_with('/') {
                rel.clone()
            } else {
                format!("{}/{}", h.own.trim_end_matches('/'), rel)
            };
            let dir = h.mount.join(full.trim_start_matches('/'));
            if h.ctrl == Ctrl::Unified {
                let mut prepared = self.prepared.lock().unwrap_or_else(|e| e.into_inner());
                enable_v2_controllers(&h.mount, &dir, &mut prepared);
            }
            fs::create_dir_all(&dir).map_err(|cause| CgroupError::Create {
                path: dir.clone(),
                cause,
            })?;
            dirs.push((h.ctrl, dir));
        }
        let cg = Cgroup { dirs };
        if let Some(res) = res {
            if let Err(e) = self.apply(&cg, res) {
                cg.remove();
                return Err(e);
            }
        }
        Ok(cg)
    }

    /// Sets `res` on the container's cgroup (see [`limits`]), all or nothing: on an error
    /// the old limits stay.
    pub fn apply(&self, cg: &Cgroup, res: &LinuxResources) -> Result<(), CgroupError> {
        let current = |ctrl: Ctrl, file: &str| limits::read(cg.dir(ctrl), file);
        let writes = limits::plan(self.is_v2(), |c| self.has(c), res, &current)?;
        limits::apply(|ctrl| cg.dir(ctrl).map(Path::to_path_buf), writes)
    }
}

/// Enables memory/cpu/pids for the children of every ancestor of `dir` and creates the
/// ancestors (best effort: a controller missing here shows up when a limit is written).
/// Ancestors in `prepared` were done before and are skipped; done ones are added.
fn enable_v2_controllers(mount: &Path, dir: &Path, prepared: &mut HashSet<PathBuf>) {
    let Ok(rel) = dir.strip_prefix(mount) else {
        return;
    };
    let mut cur = mount.to_path_buf();
    let mut comps = rel.components().peekable();
    while let Some(comp) = comps.next() {
        if !prepared.contains(&cur) {
            let avail = fs::read_to_string(cur.join("cgroup.controllers")).unwrap_or_default();
            let want: Vec<String> = ["memory", "cpu", "pids"]
                .iter()
                .filter(|c| avail.split_whitespace().any(|a| a == **c))
                .map(|c| format!("+{c}"))
                .collect();
            if want.is_empty()
                || fs::write(cur.join("cgroup.subtree_control"), want.join(" ")).is_ok()
            {
                prepared.insert(cur.clone());
            }
        }
        cur.push(comp);
        // The leaf is the caller's to create (and its error to report).
        if comps.peek().is_some() && !prepared.contains(&cur) {
            let _ = fs::create_dir(&cur);
        }
    }
}

/// One container's cgroup (a directory per hierarchy).
#[derive(Debug)]
pub struct Cgroup {
    dirs: Vec<(Ctrl, PathBuf)>,
}

fn read_u64(p: &Path) -> Option<u64> {
    fs::read_to_string(p).ok()?.trim().parse().ok()
}

fn keyed(p: &Path, key: &str) -> Option<u64> {
    let s = fs::read_to_string(p).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(' ')?.trim().parse().ok())
}

impl Cgroup {
    fn dir(&self, ctrl: Ctrl) -> Option<&Path> {
        self.dirs
            .iter()
            .find(|(c, _)| *c == ctrl || *c == Ctrl::Unified)
            .map(|(_, d)| d.as_path())
    }

    /// `cgroup.procs` of every directory, opened for writing; a child joins
    /// the cgroup by writing "0" to each.
    pub fn procs_files(&self) -> Result<Vec<File>, CgroupError> {
        let mut seen: Vec<&Path> = vec![];
        let mut files = vec![];
        for (_, d) in &self.dirs {
            if seen.contains(&d.as_path()) {
                continue;
            }
            seen.push(d);
            let path = d.join("cgroup.procs");
            let f = OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(|cause| CgroupError::Write {
                    path,
                    value: "0".into(),
                    cause,
                })?;
            files.push(f);
        }
        Ok(files)
    }

    /// Pids in the cgroup, if it has any hierarchy.
    pub fn pids(&self) -> Option<Vec<i32>> {
        let (_, d) = self.dirs.first()?;
        let s = fs::read_to_string(d.join("cgroup.procs")).ok()?;
        Some(s.lines().filter_map(|l| l.trim().parse().ok()).collect())
    }

    /// OOM kills recorded for this cgroup.
    pub fn oom_kills(&self) -> u64 {
        match self
            .dirs
            .iter()
            .find(|(c, _)| matches!(c, Ctrl::Memory | Ctrl::Unified))
        {
            Some((Ctrl::Unified, d)) => keyed(&d.join("memory.events"), "oom_kill"),
            Some((_, d)) => keyed(&d.join("memory.oom_control"), "oom_kill"),
            None => None,
        }
        .unwrap_or(0)
    }

    /// Usage and limits.
    pub fn stats(&self) -> ContainerStats {
        let limit = |v: Option<u64>| v.filter(|&l| l < (1 << 62));
        let mut s = ContainerStats::default();
        for (c, d) in &self.dirs {
            match c {
                Ctrl::Unified => {
                    s.memory_usage = read_u64(&d.join("memory.current"));
                    s.memory_limit = read_u64(&d.join("memory.max"));
                    s.cpu_usage_ns = keyed(&d.join("cpu.stat"), "usage_usec").map(|u| u * 1000);
                    s.pids_current = read_u64(&d.join("pids.current"));
                    s.pids_limit = read_u64(&d.join("pids.max"));
                }
                Ctrl::Memory => {
                    s.memory_usage = read_u64(&d.join("memory.usage_in_bytes"));
                    s.memory_limit = limit(read_u64(&d.join("memory.limit_in_bytes")));
                }
                Ctrl::Cpuacct => s.cpu_usage_ns = read_u64(&d.join("cpuacct.usage")),
                Ctrl::Pids => {
                    s.pids_current = read_u64(&d.join("pids.current"));
                    s.pids_limit = read_u64(&d.join("pids.max"));
                }
                Ctrl::Cpu => {}
            }
        }
        s.oom_kills = self
            .dirs
            .iter()
            .any(|(c, _)| matches!(c, Ctrl::Memory | Ctrl::Unified))
            .then(|| self.oom_kills());
        s
    }

    /// Removes the directories (retrying briefly while exiting tasks leave).
    pub fn remove(&self) {
        for (_, d) in &self.dirs {
            for _ in 0..50 {
                match fs::remove_dir(d) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => {
                        std::thread::sleep(Duration::from_millis(20))
                    }
                    _ => break,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MI: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
    const SC: &str = "8:pids:/\n4:memory:/process_api/abc\n2:cpuacct:/\n1:cpu:/\n0::/\n";

    #[test]
    fn hybrid_host_uses_v1_and_own_cgroup() {
        let m = CgroupManager::from_tables(MI, SC, |_| String::new());
        assert!(!m.is_v2());
        assert_eq!(m.hiers.len(), 4);
        let mem = m.hiers.iter().find(|h| h.ctrl == Ctrl::Memory).unwrap();
        assert_eq!(mem.mount, Path::new("/sys/fs/cgroup/memory"));
        assert_eq!(mem.own, "/process_api/abc");
    }

    #[test]
    fn v2_with_controllers_wins() {
        let m = CgroupManager::from_tables(MI, SC, |p| {
            if p.ends_with("unified") {
                "cpu memory pids".into()
            } else {
                String::new()
            }
        });
        assert!(m.is_v2());
        assert_eq!(m.hiers[0].own, "/");
    }

    #[test]
    fn keyed_files() {
        let d = std::env::temp_dir().join(format!("cg-keyed-{}", std::process::id()));
        fs::write(&d, "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n").unwrap();
        assert_eq!(keyed(&d, "oom_kill"), Some(3));
        fs::remove_file(d).unwrap();
    }

    #[test]
    fn v2_ancestors_are_prepared_once() {
        let mount = std::env::temp_dir().join(format!("svm-cg-{}", std::process::id()));
        let _ = fs::remove_dir_all(&mount);
        fs::create_dir_all(&mount).unwrap();
        fs::write(mount.join("cgroup.controllers"), "cpuset cpu memory pids\n").unwrap();
        let mut prepared = HashSet::new();
        let leaf = mount.join("sandbox-vm/c1");
        enable_v2_controllers(&mount, &leaf, &mut prepared);
        assert_eq!(
            fs::read_to_string(mount.join("cgroup.subtree_control")).unwrap(),
            "+memory +cpu +pids"
        );
        assert!(mount.join("sandbox-vm").is_dir());
        assert!(!leaf.exists(), "the leaf is the caller's");
        assert!(prepared.contains(&mount));
        // (A real cgroup dir would list its controllers; this one lists none, so
        // there is nothing to enable below it, and it counts as prepared too.)
        assert!(prepared.contains(&mount.join("sandbox-vm")));
        // Prepared ancestors are not touched again.
        fs::remove_file(mount.join("cgroup.subtree_control")).unwrap();
        enable_v2_controllers(&mount, &mount.join("sandbox-vm/c2"), &mut prepared);
        assert!(!mount.join("cgroup.subtree_control").exists());
        fs::remove_dir_all(&mount).unwrap();
    }
}
