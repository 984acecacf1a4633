//! Container state on the host: one directory `<root>/<id>/` per container holding
//! `state.json` (this module), `plan.json` (the translated VM and container config), the
//! rootfs image, the VMM's vsock socket and the logs. Every command is a separate process,
//! so all that survives between them lives here. Read-modify-write goes through
//! [`Store::update`], which holds an `flock` on the directory.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{Hooks, LinuxResources, Process};
use serde::{Deserialize, Serialize};

/// Errors reading or changing container state.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("invalid container id {0:?}: use 1-64 characters from [A-Za-z0-9_.-], not starting with '.'")]
    BadId(String),
    #[error("container {0} already exists")]
    Exists(String),
    #[error("container {0} does not exist")]
    NotFound(String),
    #[error("{what} {path}: {err}")]
    Io {
        what: &'static str,
        path: PathBuf,
        err: std::io::Error,
    },
    #[error("corrupt state file {path}: {err}")]
    Corrupt {
        path: PathBuf,
        err: serde_json::Error,
    },
}

fn io_err(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> StateError {
    let path = path.to_path_buf();
    move |err| StateError::Io { what, path, err }
}

pub use sandbox::oci::Status;

/// What we keep about one container (`state.json`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerState {
    pub id: String,
    pub bundle: PathBuf,
    pub status: Status,
    /// The monitor process (the pid in `--pid-file`).
    pub pid: Option<i32>,
    /// The monitor's start time (`/proc/PID/stat` field 22), so a reused pid is not
    /// mistaken for it.
    pub pid_start: Option<u64>,
    /// Seconds since the epoch.
    pub created: u64,
    pub annotations: BTreeMap<String, String>,
    /// The container's exit status (code, or 128 + signal) once it has exited.
    pub exit_status: Option<i32>,
    /// The container's main process: defaults for `exec`.
    pub process: Option<Process>,
    /// The cgroup limits in force: the spec's, then each `update`'s merged in.
    #[serde(default)]
    pub resources: Option<LinuxResources>,
    /// The spec's hooks, run on the host (`sandbox::oci::hooks`); kept here so that
    /// `delete` runs `poststop` whatever became of the bundle.
    #[serde(default)]
    pub hooks: Option<Hooks>,
}

impl ContainerState {
    /// The status as observed now: a container whose monitor is gone is stopped, whatever
    /// the file says (the VMM crashed or was killed).
    pub fn effective_status(&self) -> Status {
        match (self.status, self.pid) {
            (Status::Stopped, _) => Status::Stopped,
            (_, Some(pid)) if !process_alive(pid, self.pid_start) => Status::Stopped,
            (s, _) => s,
        }
    }

    /// runc's `state` output.
    pub fn oci_json(&self) -> serde_json::Value {
        self.oci_json_as(self.effective_status())
    }

    /// The state JSON with `status` (what a hook gets on its stdin: the status of the
    /// lifecycle step it runs in). Its pid is the monitor's, 0 once stopped.
    pub fn oci_json_as(&self, status: Status) -> serde_json::Value {
        serde_json::json!({
            "ociVersion": sandbox::oci::OCI_VERSION,
            "id": self.id,
            "status": status.to_string(),
            "pid": if status == Status::Stopped { 0 } else { self.pid.unwrap_or(0) },
            "bundle": self.bundle,
            "rootfs": self.bundle.join("rootfs"),
            "created": rfc3339(self.created),
            "annotations": self.annotations,
        })
    }
}

/// Seconds since the epoch as an RFC 3339 UTC time.
pub fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// Now, in seconds since the epoch.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Appends a timestamped line to `<dir>/monitor.log`, the container's log of what its
/// monitor saw (written by the monitor and its watch thread).
pub fn log_line(dir: &Path, msg: &str) {
    if let Ok(mut f) = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("monitor.log"))
    {
        let _ = writeln!(f, "{} {msg}", now_secs());
    }
}

/// What `/proc/PID/stat` says of a process.
struct ProcStat {
    state: char,
    pgrp: i32,
    start: u64,
}

impl ProcStat {
    /// Neither a zombie nor dead.
    fn live(&self) -> bool {
        self.state != 'Z' && self.state != 'X'
    }
}

fn proc_stat(pid: i32) -> Option<ProcStat> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain anything, so split after its closing parenthesis.
    let rest = text.get(text.rfind(')')? + 2..)?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state); pgrp is field 5, start time field 22.
    Some(ProcStat {
        state: fields.first()?.chars().next()?,
        pgrp: fields.get(2)?.parse().ok()?,
        start: fields.get(19)?.parse().ok()?,
    })
}

/// Start time of a live process, to record next to its pid.
pub fn process_start_time(pid: i32) -> Option<u64> {
    proc_stat(pid).map(|p| p.start)
}

/// Whether `pid` is a live (not zombie) process started at `start` (if known).
pub fn process_alive(pid: i32, start: Option<u64>) -> bool {
    proc_stat(pid).is_some_and(|p| p.live() && start.is_none_or(|want| want == p.start))
}

/// Whether any live (not zombie) process is in process group `pgid`: after a SIGKILL of
/// the group, its members (the VMM, virtiofsd) may still be exiting, their files (the
/// API socket, the share's mapping) open.
pub fn group_alive(pgid: i32) -> bool {
    let Ok(dir) = fs::read_dir("/proc") else {
        return false;
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(proc_stat)
        .any(|p| p.pgrp == pgid && p.live())
}

/// Whether a live process of group `pgid` names `dir` on its command line: the VMM and
/// virtiofsd of the container whose state directory is `dir`, left by a monitor that died
/// (a group id is not reused while the group has members, but a dead monitor's pid may
/// lead an unrelated group later: the command line tells them apart).
pub fn group_serves(pgid: i32, dir: &Path) -> bool {
    let Ok(procs) = fs::read_dir("/proc") else {
        return false;
    };
    let needle = dir.as_os_str().as_encoded_bytes();
    procs
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| proc_stat(*pid).is_some_and(|p| p.pgrp == pgid && p.live()))
        .filter_map(|pid| fs::read(format!("/proc/{pid}/cmdline")).ok())
        .any(|cmdline| !needle.is_empty() && cmdline.windows(needle.len()).any(|w| w == needle))
}

/// Whether a Unix socket bound under `dir` is still open somewhere: a killed VMM or
/// virtiofsd may still be exiting (a jailed VMM's inner process dies with its parent,
/// after it), its sockets with it.
pub fn sockets_open_under(dir: &Path) -> bool {
    let prefix = format!("{}/", dir.display());
    fs::read_to_string("/proc/net/unix")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(7))
        .any(|p| p.starts_with(&prefix))
}

/// Checks a container id: it names a directory and travels to the agent.
pub fn validate_id(id: &str) -> Result<(), StateError> {
    sandbox::validate_container_id(id).map_err(|e| StateError::BadId(e.0))
}

/// The state root (`--root`).
#[derive(Clone, Debug)]
pub struct Store {
    root: PathBuf,
}

/// An `flock` held until dropped.
pub struct DirLock(File);

impl Drop for DirLock {
    fn drop(&mut self) {
        // SAFETY: the fd is owned by self.0 and valid; unlocking cannot affect memory.
        unsafe { libc::flock(self.0.as_raw_fd(), libc::LOCK_UN) };
    }
}

impl Store {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Store { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `<root>/<id>`.
    pub fn dir(&self, id: &str) -> PathBuf {
        self.root.join(id)
    }

    fn state_path(&self, id: &str) -> PathBuf {
        self.dir(id).join("state.json")
    }

    /// Makes a new container's directory; fails if the id is taken.
    pub fn create_dir(&self, id: &str) -> Result<PathBuf, StateError> {
        validate_id(id)?;
        // Only the owner may enter: the sockets inside reach the VM and the agent.
        let mut private = fs::DirBuilder::new();
        private.mode(0o700);
        private
            .recursive(true)
            .create(&self.root)
            .map_err(io_err("cannot create state root", &self.root))?;
        let dir = self.dir(id);
        match private.recursive(false).create(&dir) {
            Ok(()) => Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                Err(StateError::Exists(id.into()))
            }
            Err(e) => Err(io_err("cannot create state directory", &dir)(e)),
        }
    }

    /// Whether a container directory exists.
    pub fn exists(&self, id: &str) -> bool {
        validate_id(id).is_ok() && self.dir(id).is_dir()
    }

    /// Takes the container's lock (blocking).
    pub fn lock(&self, id: &str) -> Result<DirLock, StateError> {
        validate_id(id)?;
        let dir = self.dir(id);
        let f = File::open(&dir).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => StateError::NotFound(id.into()),
            _ => io_err("cannot open", &dir)(e),
        })?;
        // SAFETY: flock on an fd we own; no memory is involved.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(io_err("cannot lock", &dir)(std::io::Error::last_os_error()));
        }
        Ok(DirLock(f))
    }

    pub fn load(&self, id: &str) -> Result<ContainerState, StateError> {
        validate_id(id)?;
        let path = self.state_path(id);
        let text = fs::read_to_string(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => StateError::NotFound(id.into()),
            _ => io_err("cannot read", &path)(e),
        })?;
        serde_json::from_str(&text).map_err(|err| StateError::Corrupt { path, err })
    }

    /// Writes the state atomically (temp file + rename). Callers that read first hold the
    /// lock (see [`Store::update`]).
    pub fn save(&self, state: &ContainerState) -> Result<(), StateError> {
        let path = self.state_path(&state.id);
        let tmp = path.with_extension("json.tmp");
        let text = serde_json::to_vec_pretty(state).expect("state serializes");
        let mut f = File::create(&tmp).map_err(io_err("cannot write", &tmp))?;
        f.write_all(&text).map_err(io_err("cannot write", &tmp))?;
        fs::rename(&tmp, &path).map_err(io_err("cannot write", &path))
    }

    /// Locked read-modify-write; returns the new state.
    pub fn update(
        &self,
        id: &str,
        change: impl FnOnce(&mut ContainerState),
    ) -> Result<ContainerState, StateError> {
        let _lock = self.lock(id)?;
        let mut s = self.load(id)?;
        change(&mut s);
        self.save(&s)?;
        Ok(s)
    }

    /// Removes every trace of a container.
    pub fn remove(&self, id: &str) -> Result<(), StateError> {
        validate_id(id)?;
        let dir = self.dir(id);
        match fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err("cannot remove", &dir)(e)),
        }
    }

    /// Every container with a readable state file, sorted by id.
    pub fn list(&self) -> Vec<ContainerState> {
        let Ok(entries) = fs::read_dir(&self.root) else {
            return Vec::new();
        };
        let mut out: Vec<ContainerState> = entries
            .flatten()
            .filter_map(|e| self.load(e.file_name().to_str()?).ok())
            .collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_group_is_alive_and_an_unused_one_is_not() {
        let me = std::process::id() as i32;
        let pgrp = nix::unistd::getpgrp().as_raw();
        assert_eq!(proc_stat(me).unwrap().pgrp, pgrp);
        assert!(process_alive(me, process_start_time(me)));
        assert!(group_alive(pgrp));
        // Pids above the kernel's maximum are never process groups.
        assert!(!group_alive(i32::MAX));
    }

    pub(crate) fn sample(id: &str, pid: Option<i32>) -> ContainerState {
        ContainerState {
            id: id.into(),
            bundle: "/b".into(),
            status: Status::Running,
            pid,
            pid_start: pid.and_then(process_start_time),
            created: 0,
            annotations: BTreeMap::new(),
            exit_status: None,
            process: None,
            resources: None,
            hooks: None,
        }
    }

    fn temp_store(name: &str) -> Store {
        let root = std::env::temp_dir().join(format!("svm-state-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        Store::new(root)
    }

    #[test]
    fn ids_are_checked() {
        for ok in ["a", "abc-1.2_x", &"x".repeat(64)] {
            validate_id(ok).unwrap();
        }
        for bad in ["", ".", "..", ".hidden", "a/b", "a b", &"x".repeat(65)] {
            assert!(validate_id(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn save_load_update_list_remove() {
        let store = temp_store("roundtrip");
        store.create_dir("c1").unwrap();
        assert!(matches!(store.create_dir("c1"), Err(StateError::Exists(_))));
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&store.dir("c1")), 0o700);
        let s = sample("c1", Some(std::process::id() as i32));
        store.save(&s).unwrap();
        assert_eq!(store.load("c1").unwrap(), s);
        assert_eq!(s.effective_status(), Status::Running);
        let s2 = store
            .update("c1", |s| {
                s.status = Status::Stopped;
                s.exit_status = Some(3);
            })
            .unwrap();
        assert_eq!(store.load("c1").unwrap(), s2);
        assert_eq!(store.list().len(), 1);
        store.remove("c1").unwrap();
        assert!(matches!(store.load("c1"), Err(StateError::NotFound(_))));
        assert!(store.list().is_empty());
        let _ = fs::remove_dir_all(store.root());
    }

    #[test]
    fn crashed_monitor_reads_as_stopped_and_delete_cleans_up() {
        let store = temp_store("crashed");
        let dir = store.create_dir("dead").unwrap();
        // A monitor that has gone: a child that exited and was reaped.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id() as i32;
        let start = process_start_time(pid);
        child.wait().unwrap();
        let mut s = sample("dead", Some(pid));
        s.pid_start = start.or(Some(1));
        store.save(&s).unwrap();
        fs::write(dir.join("rootfs.img"), b"x").unwrap();
        let loaded = store.load("dead").unwrap();
        assert_eq!(loaded.effective_status(), Status::Stopped);
        assert_eq!(loaded.oci_json()["status"], "stopped");
        assert_eq!(loaded.oci_json()["pid"], 0);
        crate::lifecycle::delete(&store, "dead", false).unwrap();
        assert!(!dir.exists());
        let _ = fs::remove_dir_all(store.root());
    }

    #[test]
    fn reused_pid_is_not_the_monitor() {
        let mut s = sample("x", Some(std::process::id() as i32));
        s.pid_start = s.pid_start.map(|t| t + 1);
        assert_eq!(s.effective_status(), Status::Stopped);
    }

    #[test]
    fn oci_json_has_runc_fields() {
        let s = sample("c", Some(std::process::id() as i32));
        let j = s.oci_json();
        for k in ["ociVersion", "id", "status", "pid", "bundle", "annotations"] {
            assert!(j.get(k).is_some(), "{k}");
        }
        assert_eq!(j["status"], "running");
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_764_400_000), "2025-11-29T07:06:40Z");
    }
}
