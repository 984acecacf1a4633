//! The container lifecycle: `create` (validate, translate, image, start the monitor),
//! `start`, `run`, `kill`, `delete`. Everything a later command needs is in the state
//! directory; the monitor (see `monitor`) owns the VM.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use agent_protocol::{Client, ClientError};
use nix::fcntl::{fcntl, FcntlArg, FdFlag, OFlag};
use nix::sys::signal::Signal;

use crate::image::{self, ImageError};
use crate::monitor::{self, CONSOLE_SOCKET_ENV, READY_FD_ENV};
use crate::oci::bundle::{self, BundleError};
use crate::oci::translate::{self, probe_host, StatePaths, TranslateError};
use crate::state::{now_secs, ContainerState, StateError, Status, Store};

/// Lifecycle failures; one line each.
#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    #[error(transparent)]
    Bundle(#[from] BundleError),
    #[error(transparent)]
    Translate(#[from] TranslateError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error("{what} {path} not found: {how}")]
    Artifact {
        what: &'static str,
        path: PathBuf,
        how: &'static str,
    },
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
    Agent { id: String, err: ClientError },
    #[error("invalid signal {0:?} (use a name like SIGTERM or TERM, or a number)")]
    BadSignal(String),
    #[error("cannot stop the monitor of container {id} (pid {pid})")]
    StuckMonitor { id: String, pid: i32 },
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
            let _ = self.store.remove(self.id);
        }
    }
}

fn check_artifact(
    what: &'static str,
    path: &Path,
    how: &'static str,
) -> Result<(), LifecycleError> {
    if path.is_file() {
        Ok(())
    } else {
        Err(LifecycleError::Artifact {
            what,
            path: path.into(),
            how,
        })
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

/// A pipe whose write end the monitor inherits.
fn ready_pipe() -> Result<(OwnedFd, OwnedFd), LifecycleError> {
    let (r, w) =
        nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| LifecycleError::Spawn(e.into()))?;
    fcntl(&w, FcntlArg::F_SETFD(FdFlag::empty())).map_err(|e| LifecycleError::Spawn(e.into()))?;
    Ok((r, w))
}

/// `create`: returns the running monitor (our child; `run` waits for it).
pub fn create(store: &Store, opts: &CreateOpts) -> Result<Child, LifecycleError> {
    crate::state::validate_id(&opts.id)?;
    if store.exists(&opts.id) {
        return Err(StateError::Exists(opts.id.clone()).into());
    }
    let bundle = bundle::load(&opts.bundle)?;
    let dir = store.dir(&opts.id);
    let paths = StatePaths::in_dir(&dir);
    let plan = translate::translate(
        &opts.id,
        &bundle.spec,
        &crate::oci::host_defaults(),
        &paths,
        &probe_host,
    )?;
    check_artifact(
        "guest kernel",
        &plan.vm.kernel,
        "build it with guest-kernel-config/build.sh or set SANDBOX_VM_KERNEL",
    )?;
    for d in plan
        .vm
        .disks
        .iter()
        .filter(|d| d.id.as_deref() == Some("agent"))
    {
        check_artifact(
            "agent disk",
            &d.path,
            "build it with images/build-agent-disk.sh or unset SANDBOX_VM_AGENT_DISK",
        )?;
    }
    if let Some(initrd) = &plan.vm.initrd {
        check_artifact(
            "agent initramfs",
            initrd,
            "build it with images/build-agent-initramfs.sh or set SANDBOX_VM_INITRD",
        )?;
    }

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
    })?;
    image::build(&bundle.rootfs, &paths.disk, &plan.copies)?;
    let plan_json = serde_json::to_vec(&plan).expect("plan serializes");
    std::fs::write(dir.join("plan.json"), plan_json).map_err(|err| StateError::Io {
        what: "cannot write",
        path: dir.join("plan.json"),
        err,
    })?;

    let (r, w) = ready_pipe()?;
    let exe = std::env::current_exe().map_err(LifecycleError::Spawn)?;
    let mut cmd = Command::new(exe);
    cmd.arg("--root")
        .arg(store.root())
        .args(&opts.global_args)
        .arg("monitor")
        .arg(&opts.id)
        .env(READY_FD_ENV, w.as_raw_fd().to_string());
    if let Some(sock) = &opts.console_socket {
        cmd.env(CONSOLE_SOCKET_ENV, sock);
    }
    let mut child = cmd.spawn().map_err(LifecycleError::Spawn)?;
    drop(w);
    let mut line = String::new();
    let _ = BufReader::new(File::from(r)).read_line(&mut line);
    if line.trim_end() != "OK" {
        let msg = line
            .trim_end()
            .strip_prefix("ERR ")
            .map(str::to_string)
            .unwrap_or_else(|| {
                format!(
                    "the monitor exited without a word (see {})",
                    dir.join("console.log").display()
                )
            });
        let _ = child.kill();
        let _ = child.wait();
        return Err(LifecycleError::Monitor {
            id: opts.id.clone(),
            msg,
        });
    }
    if let Some(p) = &opts.pid_file {
        if let Err(e) = write_pid_file(p, child.id()) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(e);
        }
    }
    cleanup.armed = false;
    Ok(child)
}

fn agent_err(id: &str) -> impl FnOnce(ClientError) -> LifecycleError + '_ {
    move |err| LifecycleError::Agent { id: id.into(), err }
}

/// A control connection to a live container's agent.
pub fn connect(store: &Store, id: &str) -> Result<Client, LifecycleError> {
    Client::connect(&monitor::endpoint(&store.dir(id))).map_err(agent_err(id))
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
    connect(store, id)?
        .start_container(id)
        .map_err(agent_err(id))?;
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

/// `kill`.
pub fn kill(store: &Store, id: &str, signal: &str, all: bool) -> Result<(), LifecycleError> {
    let sig = parse_signal(signal)?;
    load_in(
        store,
        id,
        &[Status::Created, Status::Running],
        "it is not running",
    )?;
    connect(store, id)?
        .signal(id, None, sig, all)
        .map_err(agent_err(id))
}

/// SIGKILLs the monitor (and with it the VM) and waits until it is gone.
fn kill_monitor(s: &ContainerState) -> Result<(), LifecycleError> {
    let Some(pid) = s.pid else { return Ok(()) };
    if !crate::state::process_alive(pid, s.pid_start) {
        return Ok(());
    }
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
    let deadline = Instant::now() + Duration::from_secs(10);
    while crate::state::process_alive(pid, s.pid_start) {
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

/// `delete`: removes every trace. A created container is deleted as runc does (its VM is
/// stopped); a running one needs `force`.
pub fn delete(store: &Store, id: &str, force: bool) -> Result<(), LifecycleError> {
    crate::state::validate_id(id)?;
    if !store.exists(id) {
        return Err(StateError::NotFound(id.into()).into());
    }
    let s = match store.load(id) {
        Ok(s) => s,
        // A directory without a readable state: a create that died half way.
        Err(StateError::NotFound(_) | StateError::Corrupt { .. }) => return Ok(store.remove(id)?),
        Err(e) => return Err(e.into()),
    };
    match s.effective_status() {
        Status::Stopped => {}
        Status::Created => kill_monitor(&s)?,
        status @ (Status::Running | Status::Creating) => {
            if !force {
                return Err(LifecycleError::WrongState {
                    id: id.into(),
                    status,
                    what: "stop it first or use delete --force",
                });
            }
            kill_monitor(&s)?;
        }
    }
    Ok(store.remove(id)?)
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
        let bundle = base.join("b");
        std::fs::create_dir_all(bundle.join("rootfs")).unwrap();
        let opts = |id: &str| CreateOpts {
            id: id.into(),
            bundle: bundle.clone(),
            ..Default::default()
        };
        let e = create(&store, &opts("c")).unwrap_err();
        assert!(e.to_string().contains("has no config.json"), "{e}");
        std::fs::write(
            bundle.join("config.json"),
            r#"{"ociVersion":"1.0.2","process":{"args":["sh"],"cwd":"/","user":{"uid":0,"gid":0}},
               "root":{"path":"rootfs"},"linux":{"resources":{"memory":{"limit":1048576}}}}"#,
        )
        .unwrap();
        let e = create(&store, &opts("c")).unwrap_err();
        assert!(e.to_string().contains("too small"), "{e}");
        let e = create(&store, &opts("a/b")).unwrap_err();
        assert!(e.to_string().contains("invalid container id"), "{e}");
        std::fs::create_dir_all(store.dir("dup")).unwrap();
        let e = create(&store, &opts("dup")).unwrap_err();
        assert!(e.to_string().contains("already exists"), "{e}");
        std::fs::remove_dir(store.dir("dup")).unwrap();
        assert_eq!(std::fs::read_dir(store.root()).unwrap().count(), 0);
        let _ = std::fs::remove_dir_all(&base);
    }
}
