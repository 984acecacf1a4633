//! The container lifecycle: `create` (validate, translate, start the monitor), `start`,
//! `kill`, `pause`, `resume`, `delete`. Everything a later command needs is in the state
//! directory; the monitor (see `monitor`) owns the sandbox.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use sandbox::oci::bundle::{self, BundleError};
use sandbox::oci::hooks::{self, HookError, HookKind};
use sandbox::{
    HandleError, HostConfig, PlanError, PodPlan, RealHost, Role, SandboxHandle, SandboxOps,
};

use crate::plan::PlanFileError;
use crate::ready::{ReadyError, ReadyPipe};
use crate::state::{now_secs, ContainerState, StateError, Status, Store};

/// Lifecycle failures; one line each.
#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    #[error(transparent)]
    Bundle(#[from] BundleError),
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Ready(#[from] ReadyError),
    #[error(transparent)]
    PlanFile(#[from] PlanFileError),
    #[error("cannot start the container's monitor: {0}")]
    Spawn(std::io::Error),
    #[error("container {id} failed to start: {msg}")]
    Monitor { id: String, msg: String },
    #[error("cannot write pid file {path}: {err}")]
    PidFile { path: PathBuf, err: std::io::Error },
    #[error("container {id} is {status}: {what}")]
    WrongState {
        id: String,
        status: Status,
        what: &'static str,
    },
    #[error("container {id}: {err}")]
    Sandbox { id: String, err: HandleError },
    #[error("invalid signal {0:?} (use a name like SIGTERM or TERM, or a number)")]
    BadSignal(String),
    #[error("cannot stop the monitor of container {id} (pid {pid})")]
    StuckMonitor { id: String, pid: i32 },
    #[error("cannot clean up container {id}: {err}")]
    Cleanup {
        id: String,
        err: sandbox::SandboxError,
    },
    #[error("container {id}: {err}")]
    Hook { id: String, err: HookError },
}

/// What `create` needs from the command line.
#[derive(Debug, Default)]
pub struct CreateOpts {
    pub id: String,
    pub bundle: PathBuf,
    pub pid_file: Option<PathBuf>,
    pub console_socket: Option<PathBuf>,
    /// Global flags to hand on to the monitor (`--log`, `--log-format`, `--debug`).
    pub global_args: Vec<String>,
    /// `run`: the monitor starts the container as soon as it is created, on the agent
    /// connection it already has, before it reports ready.
    pub start: bool,
}

/// Removes a half-made container directory unless disarmed.
struct Cleanup<'a> {
    store: &'a Store,
    id: &'a str,
    armed: bool,
}

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        if self.armed {
            let _ = remove_dir(self.store, self.id);
        }
    }
}

fn write_pid_file(path: &Path, pid: u32) -> Result<(), LifecycleError> {
    let err = |err| LifecycleError::PidFile {
        path: path.into(),
        err,
    };
    let tmp = path.with_extension("sandbox-vm.tmp");
    std::fs::write(&tmp, pid.to_string()).map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

/// Starts `sandbox-vm monitor ID` and waits for its readiness line.
fn start_monitor(store: &Store, opts: &CreateOpts) -> Result<Child, LifecycleError> {
    let pipe = ReadyPipe::new()?;
    let exe = std::env::current_exe().map_err(LifecycleError::Spawn)?;
    let mut cmd = Command::new(exe);
    cmd.arg("--root")
        .arg(store.root())
        .args(&opts.global_args)
        .arg("monitor")
        .arg(&opts.id);
    if let Some(sock) = &opts.console_socket {
        cmd.arg("--console-socket").arg(sock);
    }
    if opts.start {
        cmd.arg("--start");
    }
    pipe.pass_to(&mut cmd)?;
    let spawned = cmd.spawn();
    let reader = pipe.spawned();
    let mut child = spawned.map_err(LifecycleError::Spawn)?;
    if let Err(msg) = reader.wait() {
        kill_group(child.id() as i32);
        let _ = child.wait();
        let msg = msg.unwrap_or_else(|| {
            format!(
                "the monitor exited without a word (see {})",
                store.dir(&opts.id).join("monitor.log").display()
            )
        });
        return Err(LifecycleError::Monitor {
            id: opts.id.clone(),
            msg,
        });
    }
    Ok(child)
}

/// `create`: plans the container's sandbox (every problem with the spec or the host is
/// found then, before anything is created), then starts the monitor, which creates it.
/// Returns the running monitor (our child; `run` waits for it).
pub fn create(
    store: &Store,
    host: &HostConfig,
    opts: &CreateOpts,
) -> Result<Child, LifecycleError> {
    crate::state::validate_id(&opts.id)?;
    if store.exists(&opts.id) {
        return Err(StateError::Exists(opts.id.clone()).into());
    }
    let bundle = bundle::load(&opts.bundle)?;
    let dir = store.dir(&opts.id);
    for w in sandbox::oci::validate::ignored_lsm_settings(&bundle.spec) {
        eprintln!("sandbox-vm: warning: {w}");
    }
    let plan = PodPlan::new(
        &opts.id,
        &bundle.spec,
        &bundle.rootfs,
        Role::Alone,
        &dir,
        host,
        &RealHost,
    )?;

    store.create_dir(&opts.id)?;
    let mut cleanup = Cleanup {
        store,
        id: &opts.id,
        armed: true,
    };
    let annotations = bundle
        .spec
        .annotations()
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect();
    let state = ContainerState {
        id: opts.id.clone(),
        bundle: bundle.dir.clone(),
        status: Status::Creating,
        pid: None,
        pid_start: None,
        created: now_secs(),
        annotations,
        exit_status: None,
        process: bundle.spec.process().clone(),
        resources: bundle
            .spec
            .linux()
            .as_ref()
            .and_then(|l| l.resources().clone()),
        hooks: bundle.spec.hooks().clone(),
    };
    store.save(&state)?;
    crate::plan::save(&plan, &dir)?;
    crate::testpoint::pause(crate::testpoint::STATE_SAVED);
    let started = start_monitor(store, opts).and_then(|mut child| {
        if let Some(p) = &opts.pid_file {
            if let Err(e) = write_pid_file(p, child.id()) {
                kill_group(child.id() as i32);
                let _ = child.wait();
                return Err(e);
            }
        }
        Ok(child)
    });
    match started {
        Ok(child) => {
            cleanup.armed = false;
            Ok(child)
        }
        Err(e) => {
            // The container is destroyed (the monitor is gone, its directory next): as
            // after any destroy, the poststop hooks run (runtime-spec lifecycle, 12-13).
            drop(cleanup);
            run_hooks(&state, HookKind::Poststop, Status::Stopped)?;
            Err(e)
        }
    }
}

/// Runs container `s`'s `kind` hooks on the host, in its bundle, with its state as
/// `status` on their stdin. A fatal kind's failure is the error; the other kinds' failures
/// are logged as warnings.
pub fn run_hooks(s: &ContainerState, kind: HookKind, status: Status) -> Result<(), LifecycleError> {
    let Some(set) = s.hooks.as_ref().filter(|h| !kind.of(h).is_empty()) else {
        return Ok(());
    };
    let state = s.oci_json_as(status).to_string();
    let cwd = if s.bundle.is_dir() {
        &s.bundle
    } else {
        Path::new("/")
    };
    let mut failed = hooks::run(kind, Some(set), &state, cwd).into_iter();
    if kind.fatal() {
        return match failed.next() {
            Some(err) => Err(LifecycleError::Hook {
                id: s.id.clone(),
                err,
            }),
            None => Ok(()),
        };
    }
    for e in failed {
        log::warn!("container {}: {e}", s.id);
    }
    Ok(())
}

/// The live sandbox of a container.
pub fn handle(store: &Store, id: &str) -> SandboxHandle {
    SandboxHandle::open(&store.dir(id))
}

/// Maps a sandbox error to this container.
pub fn sandbox_err(id: &str) -> impl FnOnce(HandleError) -> LifecycleError + '_ {
    move |err| LifecycleError::Sandbox { id: id.into(), err }
}

/// Loads a container that must be in one of `allowed`.
pub fn load_in(
    store: &Store,
    id: &str,
    allowed: &[Status],
    what: &'static str,
) -> Result<ContainerState, LifecycleError> {
    let s = store.load(id)?;
    let status = s.effective_status();
    if allowed.contains(&status) {
        Ok(s)
    } else {
        Err(LifecycleError::WrongState {
            id: id.into(),
            status,
            what,
        })
    }
}

/// `start`.
pub fn start(store: &Store, id: &str) -> Result<(), LifecycleError> {
    load_in(
        store,
        id,
        &[Status::Created],
        "only a created container can be started",
    )?;
    handle(store, id).start(id).map_err(sandbox_err(id))?;
    let s = store.update(id, |s| {
        if s.status == Status::Created {
            s.status = Status::Running;
        }
    })?;
    run_hooks(&s, HookKind::Poststart, Status::Running)
}

/// Parses `SIGTERM`, `TERM`, `term` or `15`.
pub fn parse_signal(s: &str) -> Result<i32, LifecycleError> {
    if let Ok(n) = s.parse::<i32>() {
        return if (1..=64).contains(&n) {
            Ok(n)
        } else {
            Err(LifecycleError::BadSignal(s.into()))
        };
    }
    let upper = s.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    name.parse::<Signal>()
        .map(|sig| sig as i32)
        .map_err(|_| LifecycleError::BadSignal(s.into()))
}

/// `kill`. A paused container is resumed first: its processes can only die when its vCPUs
/// run.
pub fn kill(store: &Store, id: &str, signal: &str, all: bool) -> Result<(), LifecycleError> {
    let sig = parse_signal(signal)?;
    let s = load_in(
        store,
        id,
        &[Status::Created, Status::Running, Status::Paused],
        "it is not running",
    )?;
    if s.effective_status() == Status::Paused {
        resume(store, id)?;
    }
    handle(store, id)
        .signal(id, None, sig, all)
        .map_err(sandbox_err(id))
}

/// `pause`: stops the sandbox's vCPUs.
pub fn pause(store: &Store, id: &str) -> Result<(), LifecycleError> {
    load_in(
        store,
        id,
        &[Status::Running],
        "only a running container can be paused",
    )?;
    handle(store, id).pause().map_err(sandbox_err(id))?;
    store.update(id, |s| {
        if s.status == Status::Running {
            s.status = Status::Paused;
        }
    })?;
    Ok(())
}

/// `resume`: lets a paused sandbox's vCPUs run again.
pub fn resume(store: &Store, id: &str) -> Result<(), LifecycleError> {
    load_in(
        store,
        id,
        &[Status::Paused],
        "only a paused container can be resumed",
    )?;
    handle(store, id).resume().map_err(sandbox_err(id))?;
    store.update(id, |s| {
        if s.status == Status::Paused {
            s.status = Status::Running;
        }
    })?;
    Ok(())
}

/// SIGKILLs a process group (the monitor's: the monitor, the VMM and virtiofsd).
fn kill_group(pgid: i32) {
    let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pgid), Signal::SIGKILL);
}

/// SIGKILLs the monitor's process group (and with it the VM and virtiofsd) and waits until
/// all of them are gone, their sockets under `dir` closed. A monitor that died (killed
/// half way through `create`, say) may have left the VMM and virtiofsd running in its
/// group: they are killed too.
fn kill_monitor(s: &ContainerState, dir: &Path) -> Result<(), LifecycleError> {
    let Some(pid) = s.pid else { return Ok(()) };
    if !crate::state::process_alive(pid, s.pid_start) && !crate::state::group_serves(pid, dir) {
        return Ok(());
    }
    kill_group(pid);
    let deadline = Instant::now() + Duration::from_secs(10);
    while crate::state::process_alive(pid, s.pid_start)
        || crate::state::group_alive(pid)
        || crate::state::sockets_open_under(dir)
    {
        if Instant::now() > deadline {
            return Err(LifecycleError::StuckMonitor {
                id: s.id.clone(),
                pid,
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// Removes the state directory after detaching any mount a dead monitor left in it.
fn remove_dir(store: &Store, id: &str) -> Result<(), LifecycleError> {
    sandbox::sandbox::clean_up_after_owner(&store.dir(id))
        .map_err(|err| LifecycleError::Cleanup { id: id.into(), err })?;
    Ok(store.remove(id)?)
}

/// `delete`: removes every trace, then runs the poststop hooks. A created or stopped
/// container is deleted as runc does (its VM, or what is left of it, is stopped); a
/// running, paused or still creating one needs `force`.
///
/// The container's lock is held from the first read to the removal: a monitor records its
/// pid under it ([`record_monitor`]), so one that has not yet done so finds its state gone
/// and starts nothing.
pub fn delete(store: &Store, id: &str, force: bool) -> Result<(), LifecycleError> {
    crate::state::validate_id(id)?;
    if !store.exists(id) {
        return Err(StateError::NotFound(id.into()).into());
    }
    let lock = store.lock(id)?;
    let s = match store.load(id) {
        Ok(s) => s,
        // A directory without a readable state: a create that died half way.
        Err(StateError::NotFound(_) | StateError::Corrupt { .. }) => return remove_dir(store, id),
        Err(e) => return Err(e.into()),
    };
    match s.effective_status() {
        Status::Stopped | Status::Created => {}
        status @ (Status::Running | Status::Creating | Status::Paused) => {
            if !force {
                return Err(LifecycleError::WrongState {
                    id: id.into(),
                    status,
                    what: "stop it first or use delete --force",
                });
            }
        }
    }
    kill_monitor(&s, &store.dir(id))?;
    remove_dir(store, id)?;
    drop(lock);
    run_hooks(&s, HookKind::Poststop, Status::Stopped)
}

/// The monitor's first step: records its pid (and start time) in the container's state,
/// under the lock. Fails when the state is gone: the container was deleted before its
/// monitor got here, and the monitor must start nothing.
pub fn record_monitor(store: &Store, id: &str, pid: i32) -> Result<ContainerState, StateError> {
    store.update(id, |s| {
        s.pid = Some(pid);
        s.pid_start = crate::state::process_start_time(pid);
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_parse() {
        assert_eq!(parse_signal("SIGTERM").unwrap(), 15);
        assert_eq!(parse_signal("term").unwrap(), 15);
        assert_eq!(parse_signal("KILL").unwrap(), 9);
        assert_eq!(parse_signal("10").unwrap(), 10);
        assert!(parse_signal("0").is_err());
        assert!(parse_signal("SIGNOPE").is_err());
    }

    fn state(id: &str, status: Status, pid: Option<i32>) -> ContainerState {
        ContainerState {
            id: id.into(),
            bundle: "/nonexistent".into(),
            status,
            pid,
            // Never a real start time: the monitor reads as dead.
            pid_start: Some(1),
            created: 0,
            annotations: Default::default(),
            exit_status: None,
            process: None,
            resources: None,
            hooks: None,
        }
    }

    fn temp_store(name: &str) -> Store {
        let base = std::env::temp_dir().join(format!("svm-lc-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        Store::new(base)
    }

    #[test]
    fn a_monitor_that_records_after_delete_finds_its_container_gone() {
        let store = temp_store("late");
        store.create_dir("c").unwrap();
        store.save(&state("c", Status::Creating, None)).unwrap();
        assert!(
            delete(&store, "c", false).is_err(),
            "creating needs --force"
        );
        delete(&store, "c", true).unwrap();
        assert!(!store.dir("c").exists());
        let e = record_monitor(&store, "c", std::process::id() as i32).unwrap_err();
        assert!(matches!(e, StateError::NotFound(_)), "{e}");
        assert!(
            !store.dir("c").exists(),
            "the record made the directory again"
        );
        let _ = std::fs::remove_dir_all(store.root());
    }

    #[test]
    fn delete_kills_what_a_dead_monitor_left_in_its_group() {
        use std::os::unix::process::CommandExt;
        let store = temp_store("orphans");
        let dir = store.create_dir("c").unwrap();
        // A "monitor" that leaves a child naming the state directory in its group, as a
        // killed monitor leaves the VMM and virtiofsd, and exits.
        let script = format!("sh -c 'sleep 600; : {}' & exit 0", dir.display());
        let mut monitor = Command::new("sh")
            .args(["-c", &script])
            .process_group(0)
            .spawn()
            .unwrap();
        let pgid = monitor.id() as i32;
        monitor.wait().unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while !crate::state::group_serves(pgid, &dir) {
            assert!(Instant::now() < deadline, "the orphan never showed up");
            std::thread::sleep(Duration::from_millis(10));
        }
        store
            .save(&state("c", Status::Running, Some(pgid)))
            .unwrap();
        // Unrelated groups are left alone: ours does not name another directory.
        assert!(!crate::state::group_serves(pgid, &store.dir("other")));
        delete(&store, "c", false).unwrap();
        assert!(
            !crate::state::group_alive(pgid),
            "the orphan survived delete"
        );
        assert!(!dir.exists());
        let _ = std::fs::remove_dir_all(store.root());
    }

    #[test]
    fn create_rejects_bad_bundles_and_leaves_nothing() {
        let base = std::env::temp_dir().join(format!("svm-lc-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let store = Store::new(base.join("root"));
        let host = HostConfig::resolve(|_| None, None);
        let bundle = base.join("b");
        std::fs::create_dir_all(bundle.join("rootfs")).unwrap();
        let opts = |id: &str| CreateOpts {
            id: id.into(),
            bundle: bundle.clone(),
            ..Default::default()
        };
        let e = create(&store, &host, &opts("c")).unwrap_err();
        assert!(e.to_string().contains("has no config.json"), "{e}");
        std::fs::write(
            bundle.join("config.json"),
            r#"{"ociVersion":"1.0.2","process":{"args":["sh"],"cwd":"/","user":{"uid":0,"gid":0}},
               "root":{"path":"rootfs"},"linux":{"namespaces":[{"type":"mount"}],"resources":{"memory":{"limit":1048576}}}}"#,
        )
        .unwrap();
        let e = create(&store, &host, &opts("c")).unwrap_err();
        assert!(e.to_string().contains("too small"), "{e}");
        let e = create(&store, &host, &opts("a/b")).unwrap_err();
        assert!(e.to_string().contains("invalid container id"), "{e}");
        std::fs::create_dir_all(store.dir("dup")).unwrap();
        let e = create(&store, &host, &opts("dup")).unwrap_err();
        assert!(e.to_string().contains("already exists"), "{e}");
        std::fs::remove_dir(store.dir("dup")).unwrap();
        assert_eq!(std::fs::read_dir(store.root()).unwrap().count(), 0);
        let _ = std::fs::remove_dir_all(&base);
    }
}
