//! The pod's cgroup on the host: where a pod's VMM, virtiofsd and shim run, so that what
//! the pod costs the host is charged to the pod (kubelet's `PodSandboxStats`, the pod's
//! limits), as runc charges a pod's pause process to the sandbox container's cgroup.
//!
//! The cgroup is the sandbox container's `linux.cgroupsPath` ([`CgroupsPath::parse`]), in
//! either form containerd writes:
//! * cgroupfs: `/kubepods/burstable/pod<UID>/<ID>`, a path below each hierarchy's root;
//! * systemd: `slice:prefix:name` (`kubepods-burstable-pod<UID>.slice:cri-containerd:<ID>`),
//!   which is `kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<UID>.slice/
//!   cri-containerd-<ID>.scope` below the root. The scope is made as a plain directory, not
//!   through systemd's D-Bus API as runc's systemd driver does: systemd does not know it.
//!
//! Inside that cgroup P ([`HostCgroup::create`], in every hierarchy [`Layout::detect`]
//! finds: cgroup v1's memory, cpu, cpuacct, pids and blkio, or the v2 unified tree):
//! * `P/host` holds the sandbox's host processes: virtiofsd, an unjailed VMM, and the
//!   owner of the sandbox when it asks to join (the shim: it serves this pod alone);
//! * `P/sandbox-vm/<hash>` is the jailed VMM's own memory cgroup (`vmm_api::jail`), made by
//!   the VMM below P: the jail's limit holds for the VMM alone, and P counts it too.
//!
//! P itself holds no process: cgroup v2 allows processes only in leaves once P's children
//! have controllers (the jail's memory limit), and the same layout serves both versions.
//! Hierarchical accounting makes P, and the pod's cgroup above it, count all of it.
//!
//! What it created is written to `cgroup.json` in the state directory first, so a cleaner
//! that only has the directory removes it ([`remove_recorded`]); directories that already
//! existed (kubelet's pod cgroup, the QoS classes) are never removed.

use std::fs::File;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Component, Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// The cgroup file system's usual mount point.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// The leaf below the pod's cgroup that holds its host processes.
pub const HOST_LEAF: &str = "host";
/// cgroup v1 hierarchies a pod's processes join: those that account for what it costs.
const V1_CONTROLLERS: [&str; 5] = ["memory", "cpu", "cpuacct", "pids", "blkio"];
/// How long removal waits for processes that are still leaving a cgroup.
const REMOVE_WAIT: Duration = Duration::from_secs(3);

/// Errors with the pod's cgroup; one line each.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("linux.cgroupsPath {path:?}: {why}")]
    BadPath { path: String, why: &'static str },
    #[error("no cgroup hierarchy under {0} (neither cgroup v2 nor a v1 memory controller)")]
    NoHierarchy(PathBuf),
    #[error("cgroup: cannot {what} {path}: {err}")]
    Io {
        what: &'static str,
        path: PathBuf,
        err: std::io::Error,
    },
}

fn io_at<'a>(
    what: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> CgroupError + 'a {
    move |err| CgroupError::Io {
        what,
        path: path.to_path_buf(),
        err,
    }
}

/// A cgroup named by an OCI `linux.cgroupsPath`, as a path below a hierarchy's root.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CgroupsPath(PathBuf);

impl CgroupsPath {
    /// Parses either form (see the module docs). A path with `..`, or an empty one, is
    /// refused; a relative cgroupfs path is taken from the hierarchy's root.
    pub fn parse(s: &str) -> Result<CgroupsPath, CgroupError> {
        let bad = |why| CgroupError::BadPath {
            path: s.to_string(),
            why,
        };
        let rel = match s.split(':').collect::<Vec<_>>()[..] {
            [path] => PathBuf::from(path.trim_start_matches('/')),
            [slice, prefix, name] => systemd_path(slice, prefix, name).map_err(bad)?,
            _ => return Err(bad("neither a path nor slice:prefix:name")),
        };
        if rel.components().any(|c| !matches!(c, Component::Normal(_))) {
            return Err(bad("a cgroup path must not leave its hierarchy (`..`)"));
        }
        if rel.as_os_str().is_empty() {
            return Err(bad("the root cgroup is not a pod's"));
        }
        Ok(CgroupsPath(rel))
    }

    /// The path below a hierarchy's root.
    pub fn rel(&self) -> &Path {
        &self.0
    }
}

/// `slice:prefix:name` as a path: the slice expanded as systemd nests slices (`a-b.slice`
/// is `a.slice/a-b.slice`), then the unit `prefix-name.scope` (a name that is itself a
/// slice is that slice).
fn systemd_path(slice: &str, prefix: &str, name: &str) -> Result<PathBuf, &'static str> {
    let mut path = expand_slice(if slice.is_empty() {
        "system.slice"
    } else {
        slice
    })?;
    if name.is_empty() || name.contains('/') {
        return Err("the systemd unit name is empty or has a /");
    }
    if name.ends_with(".slice") {
        path.push(name);
    } else if prefix.is_empty() {
        path.push(format!("{name}.scope"));
    } else {
        path.push(format!("{prefix}-{name}.scope"));
    }
    Ok(path)
}

fn expand_slice(slice: &str) -> Result<PathBuf, &'static str> {
    let stem = slice
        .strip_suffix(".slice")
        .ok_or("a systemd slice's name ends in .slice")?;
    if slice.contains('/') {
        return Err("a systemd slice's name has no /");
    }
    let mut path = PathBuf::new();
    if stem == "-" {
        return Ok(path);
    }
    let mut prefix = String::new();
    for part in stem.split('-') {
        if part.is_empty() {
            return Err("a systemd slice's name has an empty part (--, or - at an end)");
        }
        prefix.push_str(part);
        path.push(format!("{prefix}.slice"));
        prefix.push('-');
    }
    Ok(path)
}

/// The host's cgroup hierarchies a pod's processes join.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Layout {
    /// cgroup v2 alone (unified): its root.
    V2(PathBuf),
    /// cgroup v1 (also systemd's "hybrid" mode, whose extra cgroup2 mount has no
    /// controllers): the roots of the accounting controllers' hierarchies, one per mount
    /// (`cpu` and `cpuacct` are often one, `cpu,cpuacct`).
    V1(Vec<PathBuf>),
}

impl Layout {
    /// Finds the layout under `root` (normally [`CGROUP_ROOT`]).
    pub fn detect(root: &Path) -> Result<Layout, CgroupError> {
        if root.join("cgroup.controllers").is_file() {
            return Ok(Layout::V2(root.to_path_buf()));
        }
        let mut dirs: Vec<PathBuf> = Vec::new();
        for c in V1_CONTROLLERS {
            let Ok(dir) = root.join(c).canonicalize() else {
                continue;
            };
            if dir.join("cgroup.procs").is_file() && !dirs.contains(&dir) {
                dirs.push(dir);
            }
        }
        if !dirs
            .iter()
            .any(|d| d.join("memory.limit_in_bytes").is_file())
        {
            return Err(CgroupError::NoHierarchy(root.to_path_buf()));
        }
        Ok(Layout::V1(dirs))
    }

    /// The hierarchies' roots.
    pub fn roots(&self) -> Vec<PathBuf> {
        match self {
            Layout::V2(r) => vec![r.clone()],
            Layout::V1(dirs) => dirs.clone(),
        }
    }
}

/// What a sandbox made in one hierarchy, for its removal (`cgroup.json`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placed {
    /// The hierarchy's root.
    pub root: PathBuf,
    /// The pod's cgroup P in it.
    pub pod: PathBuf,
    /// The trees to remove: the topmost directory made for P, or, when P was there
    /// before, the children made in it.
    pub trees: Vec<PathBuf>,
    /// Where the owner was before it joined ([`HostCgroup::join_self`]).
    pub owner_came_from: Option<PathBuf>,
}

/// The pod's cgroup, made for one sandbox (see the module docs). Dropping it (or
/// [`HostCgroup::remove`]) moves its owner back and removes what it created.
#[derive(Debug)]
pub struct HostCgroup {
    path: CgroupsPath,
    record_file: PathBuf,
    placed: Vec<Placed>,
    /// `P/host/cgroup.procs` of each hierarchy, open for the children's pre-exec join.
    procs: Vec<File>,
    removed: bool,
}

/// The trees to remove for the pod cgroup `pod` under `root`: the topmost missing
/// directory on the way to it, or P's own children if P exists.
fn trees_to_make(root: &Path, pod: &Path) -> Vec<PathBuf> {
    if pod.exists() {
        return vec![pod.join(HOST_LEAF), pod.join(JAIL_DIR)];
    }
    let mut top = pod.to_path_buf();
    while top.parent().is_some_and(|p| p != root && !p.exists()) {
        top.pop();
    }
    vec![top]
}

/// The jailed VMM's cgroups' directory below P (`vmm_api::jail::cgroup_name`).
const JAIL_DIR: &str = "sandbox-vm";

impl HostCgroup {
    /// Makes `path`'s `P/host` in every hierarchy of `layout`, recording what it makes in
    /// `record_file` before it makes it.
    pub fn create(
        layout: &Layout,
        path: &CgroupsPath,
        record_file: &Path,
    ) -> Result<HostCgroup, CgroupError> {
        let mut cg = HostCgroup {
            path: path.clone(),
            record_file: record_file.to_path_buf(),
            placed: Vec::new(),
            procs: Vec::new(),
            removed: false,
        };
        for root in layout.roots() {
            let pod = root.join(path.rel());
            cg.placed.push(Placed {
                trees: trees_to_make(&root, &pod),
                root,
                pod: pod.clone(),
                owner_came_from: None,
            });
            cg.save()?;
            let host = pod.join(HOST_LEAF);
            std::fs::create_dir_all(&host).map_err(io_at("create", &host))?;
            let procs = host.join("cgroup.procs");
            let f = File::options()
                .write(true)
                .open(&procs)
                .map_err(io_at("open", &procs))?;
            cg.procs.push(f);
        }
        Ok(cg)
    }

    fn save(&self) -> Result<(), CgroupError> {
        let json = serde_json::to_vec(&self.placed).expect("record serializes");
        std::fs::write(&self.record_file, json).map_err(io_at("write", &self.record_file))
    }

    /// The pod's cgroup as the spec named it.
    pub fn path(&self) -> &CgroupsPath {
        &self.path
    }

    /// The pod's cgroup P in each hierarchy.
    pub fn pod_dirs(&self) -> impl Iterator<Item = &Path> {
        self.placed.iter().map(|p| p.pod.as_path())
    }

    /// Makes `cmd`'s process join `P/host` in every hierarchy before it runs (so anything
    /// it forks is counted too).
    pub fn place(&self, cmd: &mut Command) {
        let fds: Vec<RawFd> = self.procs.iter().map(AsRawFd::as_raw_fd).collect();
        // SAFETY: the closure runs in the forked child before exec and makes only write
        // system calls on fds the parent keeps open while this `HostCgroup` lives (it
        // outlives the spawn); no allocation. "0" names the writing process itself.
        unsafe {
            cmd.pre_exec(move || {
                for fd in &fds {
                    if libc::write(*fd, b"0".as_ptr().cast(), 1) != 1 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
    }

    /// Moves the calling process (all its threads) into `P/host`, remembering where it
    /// was: the shim, which serves this one pod.
    pub fn join_self(&mut self) -> Result<(), CgroupError> {
        let own_file = Path::new("/proc/self/cgroup");
        let own = std::fs::read_to_string(own_file).map_err(io_at("read", own_file))?;
        let me = std::process::id().to_string();
        for i in 0..self.placed.len() {
            let p = &mut self.placed[i];
            p.owner_came_from = Some(own_cgroup(&own, &p.root).unwrap_or_else(|| p.root.clone()));
            let procs = p.pod.join(HOST_LEAF).join("cgroup.procs");
            self.save()?;
            std::fs::write(&procs, &me).map_err(io_at("join", &procs))?;
        }
        Ok(())
    }

    /// Moves the owner back and removes what was created (waiting up to 3 s for processes
    /// still on their way out). Returns the directories it could not remove.
    pub fn remove(mut self) -> Vec<PathBuf> {
        self.removed = true;
        self.procs.clear();
        let left = remove_placed(&self.placed);
        let _ = std::fs::remove_file(&self.record_file);
        left
    }
}

impl Drop for HostCgroup {
    fn drop(&mut self) {
        if !self.removed {
            self.procs.clear();
            for d in remove_placed(&self.placed) {
                log::warn!("cgroup {} is left: it still has processes", d.display());
            }
            let _ = std::fs::remove_file(&self.record_file);
        }
    }
}

/// Where `/proc/self/cgroup` (`own`) says this process is in the hierarchy at `root`: v2's
/// `0::/path`, or the v1 line naming the same controllers as `root`'s directory name.
fn own_cgroup(own: &str, root: &Path) -> Option<PathBuf> {
    let name = root.file_name()?.to_string_lossy().to_string();
    let mut want: Vec<&str> = name.split(',').collect();
    want.sort_unstable();
    let v2 = root.join("cgroup.controllers").is_file();
    own.lines().find_map(|l| {
        let mut f = l.splitn(3, ':');
        let (_, ctrls, path) = (f.next()?, f.next()?, f.next()?);
        let mut have: Vec<&str> = ctrls.split(',').collect();
        have.sort_unstable();
        let hit = if v2 { ctrls.is_empty() } else { have == want };
        hit.then(|| root.join(path.trim_start_matches('/')))
    })
}

/// Moves this process back where it came from (if it joined), then removes the trees.
/// Returns what could not be removed.
fn remove_placed(placed: &[Placed]) -> Vec<PathBuf> {
    let me = std::process::id().to_string();
    for p in placed {
        if let Some(from) = &p.owner_came_from {
            if std::fs::write(from.join("cgroup.procs"), &me).is_err() {
                let _ = std::fs::write(p.root.join("cgroup.procs"), &me);
            }
        }
    }
    let deadline = Instant::now() + REMOVE_WAIT;
    placed
        .iter()
        .flat_map(|p| &p.trees)
        .filter(|t| !remove_tree(t, deadline))
        .cloned()
        .collect()
}

/// Removes a cgroup and every cgroup below it (deepest first), retrying while processes
/// are still leaving until `deadline`. A missing tree is removed already.
pub fn remove_tree(dir: &Path, deadline: Instant) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return !dir.exists();
    };
    for e in entries.flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            remove_tree(&e.path(), deadline);
        }
    }
    loop {
        match std::fs::remove_dir(dir) {
            Ok(()) => return true,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return true,
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(_) => return false,
        }
    }
}

/// For a cleaner after the owner died: removes what the record in `record_file` names
/// (the owner is gone, so nothing is moved back). A missing record is nothing to do.
pub fn remove_recorded(record_file: &Path) -> Vec<PathBuf> {
    let Ok(bytes) = std::fs::read(record_file) else {
        return Vec::new();
    };
    let Ok(mut placed) = serde_json::from_slice::<Vec<Placed>>(&bytes) else {
        return Vec::new();
    };
    for p in &mut placed {
        p.owner_came_from = None;
    }
    let left = remove_placed(&placed);
    let _ = std::fs::remove_file(record_file);
    left
}

#[cfg(test)]
#[path = "cgroup_tests.rs"]
mod tests;
