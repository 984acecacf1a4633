//! The container lifecycle: `create` (validate, translate, start the monitor), `start`,
//! `kill`, `pause`, `resume`, `delete`. Everything a later command needs is in the state
//! directory; the monitor (see `monitor`) owns the sandbox.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use sandbox::oci::bundle::{self, BundleError};
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
    store.save(&ContainerState {
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
    })?;
    crate::plan::save(&plan, &dir)?;
    let mut child = start_monitor(store, opts)?;
    if let Some(p) = &opts.pid_file {
        if let Err(e) = write_pid_file(p, child.id()) {
            kill_group(child.id() as i32);
            let _ = child.wait();
            return Err(e);
        }
    }
    cleanup.armed = false;
    Ok(child)
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
    store.update(id, |s| {
        if s.status == Status::Created {
            s.status = Status::Running;
        }
    })?;
    Ok(())
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
/// all of them are gone, their sockets under `dir` closed.
fn kill_monitor(s: &ContainerState, dir: &Path) -> Result<(), LifecycleError> {
    let Some(pid) = s.pid else { return Ok(()) };
    if !crate::state::process_alive(pid, s.pid_start) {
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

/// `delete`: removes every trace. A created container is deleted as runc does (its VM is
/// stopped); a running or paused one needs `force`.
pub fn delete(store: &Store, id: &str, force: bool) -> Result<(), LifecycleError> {
    crate::state::validate_id(id)?;
    if !store.exists(id) {
        return Err(StateError::NotFound(id.into()).into());
    }
    let s = match store.load(id) {
        Ok(s) => s,
        // A directory without a readable state: a create that died half way.
        Err(StateError::NotFound(_) | StateError::Corrupt { .. }) => return remove_dir(store, id),
        Err(e) => return Err(e.into()),
    };
    match s.effective_status() {
        Status::Stopped => {}
        Status::Created => kill_monitor(&s, &store.dir(id))?,
        status @ (Status::Running | Status::Creating | Status::Paused) => {
            if !force {
                return Err(LifecycleError::WrongState {
                    id: id.into(),
                    status,
                    what: "stop it first or use delete --force",
                });
            }
            kill_monitor(&s, &store.dir(id))?;
        }
    }
    remove_dir(store, id)
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
               "root":{"path":"rootfs"},"linux":{"resources":{"memory":{"limit":1048576}}}}"#,
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
