//! The commands that read state or talk to a running container: `state`, `ps`, `list`,
//! `features`, `spec`, `run` (create + start + wait) and `exec`.

use std::path::{Path, PathBuf};
use std::process::Command;

use oci_spec::runtime::{Process, Spec};
use sandbox::stdio::{self, HostIo};
use sandbox::{HandleError, HostConfig, SandboxOps};

use crate::lifecycle::{self, handle, load_in, CreateOpts, LifecycleError};
use crate::ready::{ReadyError, ReadyPipe, ReadyWriter};
use crate::state::{rfc3339, Status, Store};

/// Failures of these commands; one line each.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error(transparent)]
    Lifecycle(#[from] LifecycleError),
    #[error(transparent)]
    State(#[from] crate::state::StateError),
    #[error("container {id}: {err}")]
    Sandbox { id: String, err: HandleError },
    #[error(transparent)]
    Ready(#[from] ReadyError),
    #[error(transparent)]
    Stdio(#[from] stdio::StdioError),
    #[error("unknown format {0:?} (use table or json)")]
    Format(String),
    #[error("{} exists; remove it first", .0.display())]
    SpecExists(PathBuf),
    #[error("cannot {what} {path}: {err}")]
    Io {
        what: &'static str,
        path: PathBuf,
        err: String,
    },
    #[error("exec needs a command or --process FILE")]
    NoCommand,
    #[error("exec --detach: {0}")]
    Detach(String),
}

fn sandbox_err(id: &str) -> impl FnOnce(HandleError) -> CommandError + '_ {
    move |err| CommandError::Sandbox { id: id.into(), err }
}

/// `state ID`.
pub fn state(store: &Store, id: &str) -> Result<String, CommandError> {
    let s = store.load(id)?;
    Ok(serde_json::to_string_pretty(&s.oci_json()).expect("json"))
}

/// `ps [--format table|json] ID`: the container's processes (guest pids).
pub fn ps(store: &Store, id: &str, format: &str) -> Result<String, CommandError> {
    load_in(
        store,
        id,
        &[Status::Created, Status::Running],
        "it is not running",
    )?;
    let procs = handle(store, id).processes(id).map_err(sandbox_err(id))?;
    match format {
        "json" => Ok(
            serde_json::to_string(&procs.iter().map(|p| p.pid).collect::<Vec<_>>()).expect("json"),
        ),
        "table" => {
            let mut out = String::from("PID   CMD\n");
            for p in procs {
                out += &format!("{:<5} {}\n", p.pid, p.command);
            }
            Ok(out.trim_end().to_string())
        }
        f => Err(CommandError::Format(f.into())),
    }
}

/// `list [--format table|json] [-q]`.
pub fn list(store: &Store, format: &str, quiet: bool) -> Result<String, CommandError> {
    let all = store.list();
    if quiet {
        return Ok(all
            .iter()
            .map(|s| s.id.as_str())
            .collect::<Vec<_>>()
            .join("\n"));
    }
    match format {
        "json" => {
            let v: Vec<_> = all
                .iter()
                .map(|s| {
                    let mut j = s.oci_json();
                    j["owner"] = "root".into();
                    j
                })
                .collect();
            Ok(serde_json::to_string(&v).expect("json"))
        }
        "table" => {
            let mut out = format!(
                "{:<20} {:<8} {:<8} {:<40} {:<21} OWNER\n",
                "ID", "PID", "STATUS", "BUNDLE", "CREATED"
            );
            for s in &all {
                let status = s.effective_status();
                let pid = if status == Status::Stopped {
                    0
                } else {
                    s.pid.unwrap_or(0)
                };
                out += &format!(
                    "{:<20} {:<8} {:<8} {:<40} {:<21} root\n",
                    s.id,
                    pid,
                    status,
                    s.bundle.display(),
                    rfc3339(s.created)
                );
            }
            Ok(out.trim_end().to_string())
        }
        f => Err(CommandError::Format(f.into())),
    }
}

/// `features`: what this runtime supports (runtime-spec `features.md`).
pub fn features() -> String {
    let v = serde_json::json!({
        "ociVersionMin": "1.0.0",
        "ociVersionMax": sandbox::oci::OCI_VERSION,
        // createContainer and startContainer would run in the guest: see sandbox::oci::hooks.
        "hooks": ["prestart", "createRuntime", "poststart", "poststop"],
        "mountOptions": ["ro", "rw", "nosuid", "nodev", "noexec", "relatime", "noatime",
            "strictatime", "bind", "rbind", "private", "rprivate", "slave", "rslave",
            "shared", "rshared", "unbindable", "runbindable"],
        "linux": {
            "namespaces": ["pid", "network", "ipc", "uts", "mount", "cgroup", "user"],
            "cgroup": {"v1": true, "v2": true, "systemd": false, "systemdUser": false},
            "seccomp": {"enabled": false},
            "apparmor": {"enabled": false},
            "selinux": {"enabled": false},
        },
        "annotations": sandbox::oci::annotations::features(),
    });
    serde_json::to_string_pretty(&v).expect("json")
}

/// The default bundle config: `sh` on a terminal, rootfs `rootfs`.
pub fn default_spec() -> Spec {
    let mut spec = Spec::default();
    spec.set_hostname(Some("sandbox-vm".into()));
    if let Some(p) = spec.process_mut() {
        p.set_terminal(Some(true));
    }
    spec
}

/// `spec [--bundle DIR]`: writes `config.json`.
pub fn spec(bundle: Option<&Path>) -> Result<(), CommandError> {
    let path = bundle.unwrap_or(Path::new(".")).join("config.json");
    if path.exists() {
        return Err(CommandError::SpecExists(path));
    }
    let text = serde_json::to_string_pretty(&default_spec()).expect("json");
    std::fs::write(&path, text + "\n").map_err(|e| CommandError::Io {
        what: "write",
        path,
        err: e.to_string(),
    })
}

/// `run`: create and start (the monitor starts the container itself: `opts.start`), wait
/// for the monitor (our child) and delete, unless `detach`.
pub fn run(
    store: &Store,
    host: &HostConfig,
    opts: &CreateOpts,
    detach: bool,
    keep: bool,
) -> Result<i32, CommandError> {
    let mut monitor = lifecycle::create(store, host, opts)?;
    if detach {
        return Ok(0);
    }
    forward_signals(store, &opts.id);
    let terminal = store
        .load(&opts.id)
        .ok()
        .and_then(|s| s.process)
        .and_then(|p| p.terminal())
        .unwrap_or(false);
    let _raw = (terminal && opts.console_socket.is_none())
        .then(RawTerminal::stdin)
        .flatten();
    let code = match monitor.wait() {
        Ok(st) => st.code().unwrap_or(sandbox::LOST_EXIT_STATUS),
        Err(_) => sandbox::LOST_EXIT_STATUS,
    };
    if !keep {
        lifecycle::delete(store, &opts.id, true)?;
    }
    Ok(code)
}

/// Passes SIGINT, SIGTERM, SIGHUP and SIGQUIT sent to `run` on to the container, as runc
/// does in the foreground. (Called after the monitor was started, so it does not inherit
/// the blocked mask.)
fn forward_signals(store: &Store, id: &str) {
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    for s in [
        Signal::SIGINT,
        Signal::SIGTERM,
        Signal::SIGHUP,
        Signal::SIGQUIT,
    ] {
        set.add(s);
    }
    if set.thread_block().is_err() {
        return;
    }
    let (store, id) = (store.clone(), id.to_string());
    std::thread::spawn(move || {
        while let Ok(sig) = set.wait() {
            if let Err(e) = lifecycle::kill(&store, &id, &(sig as i32).to_string(), false) {
                log::warn!("cannot forward {sig} to container {id}: {e}");
            }
        }
    });
}

/// Our terminal in raw mode while a container's terminal is attached to it (the guest's
/// pty does the line discipline); restored on drop.
struct RawTerminal(nix::sys::termios::Termios);

impl RawTerminal {
    fn stdin() -> Option<RawTerminal> {
        use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg};
        let stdin = std::io::stdin();
        let saved = tcgetattr(&stdin).ok()?;
        let mut raw = saved.clone();
        cfmakeraw(&mut raw);
        tcsetattr(&stdin, SetArg::TCSANOW, &raw).ok()?;
        Some(RawTerminal(saved))
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        use nix::sys::termios::{tcsetattr, SetArg};
        let _ = tcsetattr(std::io::stdin(), SetArg::TCSANOW, &self.0);
    }
}

/// What `exec` needs from the command line.
#[derive(Debug, Default)]
pub struct ExecOpts {
    pub id: String,
    pub process_file: Option<PathBuf>,
    pub command: Vec<String>,
    pub tty: bool,
    pub cwd: Option<PathBuf>,
    pub env: Vec<(String, String)>,
    pub user: Option<(u32, Option<u32>)>,
    pub detach: bool,
    pub pid_file: Option<PathBuf>,
    pub console_socket: Option<PathBuf>,
    /// The full command line, for re-running ourselves in the background (`--detach`).
    pub argv: Vec<String>,
}

fn exec_process(base: Option<Process>, opts: &ExecOpts) -> Result<Process, CommandError> {
    if let Some(f) = &opts.process_file {
        let io = |e: String| CommandError::Io {
            what: "read process file",
            path: f.clone(),
            err: e,
        };
        let text = std::fs::read_to_string(f).map_err(|e| io(e.to_string()))?;
        return serde_json::from_str(&text).map_err(|e| io(e.to_string()));
    }
    if opts.command.is_empty() {
        return Err(CommandError::NoCommand);
    }
    let mut p = base.unwrap_or_default();
    p.set_args(Some(opts.command.clone()));
    p.set_terminal(Some(opts.tty));
    p.set_console_size(None);
    if let Some(cwd) = &opts.cwd {
        p.set_cwd(cwd.clone());
    }
    if !opts.env.is_empty() {
        let mut env = p.env().clone().unwrap_or_default();
        env.extend(opts.env.iter().map(|(k, v)| format!("{k}={v}")));
        p.set_env(Some(env));
    }
    if let Some((uid, gid)) = opts.user {
        let mut u = p.user().clone();
        u.set_uid(uid);
        if let Some(g) = gid {
            u.set_gid(g);
        }
        p.set_user(u);
    }
    Ok(p)
}

/// `exec --detach`: runs this same exec in the background (a new session) and returns
/// once the process is running; the background copy is the `--pid-file` process and exits
/// with the exec'd process's status.
fn exec_detached(opts: &ExecOpts) -> Result<i32, CommandError> {
    let exe = std::env::current_exe().map_err(|e| CommandError::Detach(e.to_string()))?;
    let args: Vec<&String> = opts
        .argv
        .iter()
        .skip(1)
        .filter(|a| *a != "-d" && *a != "--detach")
        .collect();
    let pipe = ReadyPipe::new()?;
    let mut cmd = Command::new(exe);
    cmd.args(args);
    pipe.pass_to(&mut cmd)?;
    let spawned = cmd.spawn();
    let reader = pipe.spawned();
    let mut child = spawned.map_err(|e| CommandError::Detach(e.to_string()))?;
    if let Err(msg) = reader.wait() {
        let _ = child.wait();
        return Err(CommandError::Detach(
            msg.unwrap_or_else(|| "exec failed".into()),
        ));
    }
    if let Some(p) = &opts.pid_file {
        std::fs::write(p, child.id().to_string()).map_err(|e| CommandError::Io {
            what: "write pid file",
            path: p.clone(),
            err: e.to_string(),
        })?;
    }
    Ok(0)
}

/// `exec`: runs a process in the container's VM; returns its exit status.
pub fn exec(store: &Store, opts: &ExecOpts) -> Result<i32, CommandError> {
    if opts.detach {
        return exec_detached(opts);
    }
    // Someone waits for our line when we are the background half of `exec --detach`.
    let mut ready = ReadyWriter::from_env();
    if ready.is_waited_for() {
        let _ = nix::unistd::setsid();
    }
    let result = exec_attached(store, opts, &mut ready);
    if let Err(e) = &result {
        ready.err(e);
    }
    result
}

fn exec_attached(
    store: &Store,
    opts: &ExecOpts,
    ready: &mut ReadyWriter,
) -> Result<i32, CommandError> {
    let id = opts.id.as_str();
    let state = load_in(
        store,
        id,
        &[Status::Running],
        "exec needs a running container",
    )?;
    let process = exec_process(state.process, opts)?;
    let tty = process.terminal().unwrap_or(false);
    let console = opts.console_socket.clone();
    let io = match (&console, tty) {
        (Some(sock), true) => HostIo::console(sock)?,
        _ => {
            let mut io = HostIo::inherited()?;
            if tty {
                io.stderr = None;
            }
            io
        }
    };
    let exec_id = format!("exec-{}-{}", std::process::id(), crate::state::now_secs());
    let sandbox = handle(store, id);
    let t0 = std::time::Instant::now();
    let (_, pumps) = sandbox
        .exec(id, &exec_id, process, io)
        .map_err(sandbox_err(id))?;
    log::debug!(
        "exec {exec_id}: started, streams attached after {:?}",
        t0.elapsed()
    );
    ready.ok();
    let exit = sandbox.wait(id, Some(&exec_id)).map_err(sandbox_err(id))?;
    log::debug!("exec {exec_id}: exited after {:?}", t0.elapsed());
    for p in pumps.outputs {
        let _ = p.join();
    }
    Ok(exit.status.as_shell_status())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_spec_is_sh_on_rootfs_and_valid() {
        let s = default_spec();
        assert_eq!(s.root().as_ref().unwrap().path(), Path::new("rootfs"));
        let p = s.process().as_ref().unwrap();
        assert_eq!(p.args().as_ref().unwrap(), &vec!["sh".to_string()]);
        assert!(sandbox::oci::bundle::version_supported(s.version()));
        let text = serde_json::to_string(&s).unwrap();
        let back: Spec = serde_json::from_str(&text).unwrap();
        assert_eq!(back, s);
    }

    #[test]
    fn features_has_required_fields() {
        let v: serde_json::Value = serde_json::from_str(&features()).unwrap();
        assert_eq!(v["ociVersionMin"], "1.0.0");
        assert!(v["ociVersionMax"].is_string());
        // Every annotation of the table, and no other.
        let listed = v["annotations"].as_object().unwrap();
        let table = sandbox::oci::annotations::TABLE;
        assert_eq!(listed.len(), table.len());
        assert!(table.iter().all(|k| listed.contains_key(k.key)));
    }

    #[test]
    fn exec_process_from_args_inherits_env() {
        let opts = ExecOpts {
            command: vec!["ls".into()],
            env: vec![("A".into(), "1".into())],
            user: Some((5, Some(6))),
            cwd: Some("/tmp".into()),
            ..Default::default()
        };
        let p = exec_process(Some(Process::default()), &opts).unwrap();
        assert_eq!(p.args().as_ref().unwrap(), &vec!["ls".to_string()]);
        assert!(p.env().as_ref().unwrap().iter().any(|e| e == "A=1"));
        assert!(p
            .env()
            .as_ref()
            .unwrap()
            .iter()
            .any(|e| e.starts_with("PATH=")));
        assert_eq!((p.user().uid(), p.user().gid()), (5, 6));
        assert_eq!(p.cwd(), Path::new("/tmp"));
        assert!(matches!(
            exec_process(None, &ExecOpts::default()),
            Err(CommandError::NoCommand)
        ));
    }
}
