//! OCI hooks (runtime-spec config.md, "POSIX-platform Hooks"), run on the host.
//!
//! A hook is a host program: `path` run with `args` (argv, `args[0]` included) and exactly
//! `env`, the container's state JSON on its stdin, killed after `timeout` seconds. Where
//! each kind runs for a VM:
//!
//! | kind | spec: namespace, when | here |
//! |---|---|---|
//! | `prestart`, `createRuntime` | runtime's, during `create` | host, after the VM and the container exist in it, before `create` returns; a failure fails `create` |
//! | `createContainer`, `startContainer` | the container's | refused: the container's namespaces are in the guest kernel, which a host program cannot enter |
//! | `poststart` | runtime's, before `start` returns | host; a failure is a warning |
//! | `poststop` | runtime's, after the container is deleted | host, in `delete` (also after the VM crashed); a failure is a warning |
//!
//! The state's `pid` is the container's host process (the OCI CLI's monitor): its
//! namespaces are the host's, not the container's.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use oci_spec::runtime::{Hook, Hooks};

/// The kinds of hook, in the order the lifecycle runs them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HookKind {
    Prestart,
    CreateRuntime,
    CreateContainer,
    StartContainer,
    Poststart,
    Poststop,
}

impl HookKind {
    pub const ALL: [HookKind; 6] = [
        HookKind::Prestart,
        HookKind::CreateRuntime,
        HookKind::CreateContainer,
        HookKind::StartContainer,
        HookKind::Poststart,
        HookKind::Poststop,
    ];

    /// The spec's name (config.json's key).
    pub fn name(self) -> &'static str {
        match self {
            HookKind::Prestart => "prestart",
            HookKind::CreateRuntime => "createRuntime",
            HookKind::CreateContainer => "createContainer",
            HookKind::StartContainer => "startContainer",
            HookKind::Poststart => "poststart",
            HookKind::Poststop => "poststop",
        }
    }

    /// Whether a failure fails the operation (else it is a warning and the next hooks run).
    pub fn fatal(self) -> bool {
        !matches!(self, HookKind::Poststart | HookKind::Poststop)
    }

    /// This kind's hooks in `hooks` (none when unset).
    pub fn of(self, hooks: &Hooks) -> &[Hook] {
        let list = match self {
            HookKind::Prestart => hooks.prestart(),
            HookKind::CreateRuntime => hooks.create_runtime(),
            HookKind::CreateContainer => hooks.create_container(),
            HookKind::StartContainer => hooks.start_container(),
            HookKind::Poststart => hooks.poststart(),
            HookKind::Poststop => hooks.poststop(),
        };
        list.as_deref().unwrap_or_default()
    }
}

/// Hooks that cannot run, or did not run well; one line each.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum HookError {
    #[error("{0} hooks run in the container's namespaces, which are in the VM's guest kernel: a host program cannot run there (use createRuntime or poststart hooks)")]
    InContainer(&'static str),
    #[error("OCI hooks are not run by the containerd shim (config.json sets {0}); the sandbox-vm OCI command line runs them")]
    NotInShim(String),
    #[error("{kind} hook {path}: the path must be absolute")]
    RelativePath { kind: &'static str, path: PathBuf },
    #[error("{kind} hook {path}: timeout {timeout} must be greater than zero")]
    BadTimeout {
        kind: &'static str,
        path: PathBuf,
        timeout: i64,
    },
    #[error("{kind} hook {path} cannot run: {err}")]
    Spawn {
        kind: &'static str,
        path: PathBuf,
        err: String,
    },
    #[error("{kind} hook {path} failed ({status}){stderr}")]
    Failed {
        kind: &'static str,
        path: PathBuf,
        status: String,
        /// `: ` and the last line of its stderr, or nothing.
        stderr: String,
    },
    #[error("{kind} hook {path} timed out after {secs} s (killed)")]
    TimedOut {
        kind: &'static str,
        path: PathBuf,
        secs: i64,
    },
}

/// The kinds `hooks` sets (non-empty lists), by their spec names.
pub fn kinds_set(hooks: Option<&Hooks>) -> Vec<&'static str> {
    let Some(hooks) = hooks else {
        return Vec::new();
    };
    HookKind::ALL
        .into_iter()
        .filter(|k| !k.of(hooks).is_empty())
        .map(HookKind::name)
        .collect()
}

/// Checks hooks the OCI CLI is to run: the kinds a VM cannot run are refused, each hook's
/// path must be absolute and its timeout positive.
pub fn check(hooks: Option<&Hooks>) -> Result<(), HookError> {
    let Some(hooks) = hooks else { return Ok(()) };
    for kind in HookKind::ALL {
        let list = kind.of(hooks);
        if matches!(kind, HookKind::CreateContainer | HookKind::StartContainer) && !list.is_empty()
        {
            return Err(HookError::InContainer(kind.name()));
        }
        for h in list {
            if !h.path().is_absolute() {
                return Err(HookError::RelativePath {
                    kind: kind.name(),
                    path: h.path().clone(),
                });
            }
            if let Some(t) = h.timeout().filter(|t| *t <= 0) {
                return Err(HookError::BadTimeout {
                    kind: kind.name(),
                    path: h.path().clone(),
                    timeout: t,
                });
            }
        }
    }
    Ok(())
}

/// Refuses every hook (the containerd shim does not run them).
pub fn refuse(hooks: Option<&Hooks>) -> Result<(), HookError> {
    let set = kinds_set(hooks);
    if set.is_empty() {
        Ok(())
    } else {
        Err(HookError::NotInShim(set.join(", ")))
    }
}

/// Runs `kind`'s hooks one after the other in `cwd`, each with `state` (the container's
/// state JSON) on its stdin. A fatal kind stops at the first failure; the others run every
/// hook. Returns the failures.
pub fn run(kind: HookKind, hooks: Option<&Hooks>, state: &str, cwd: &Path) -> Vec<HookError> {
    let mut failed = Vec::new();
    for hook in hooks.map(|h| kind.of(h)).unwrap_or_default() {
        if let Err(e) = run_one(kind, hook, state, cwd) {
            failed.push(e);
            if kind.fatal() {
                break;
            }
        }
    }
    failed
}

/// How much of a hook's stderr is kept for its error message.
const STDERR_KEEP: usize = 4096;

/// Runs one hook to its end or its timeout.
pub fn run_one(kind: HookKind, hook: &Hook, state: &str, cwd: &Path) -> Result<(), HookError> {
    let path = hook.path().clone();
    let spawn_err = |err: std::io::Error| HookError::Spawn {
        kind: kind.name(),
        path: path.clone(),
        err: err.to_string(),
    };
    let mut cmd = Command::new(&path);
    if let Some(args) = hook.args() {
        if let Some((argv0, rest)) = args.split_first() {
            std::os::unix::process::CommandExt::arg0(&mut cmd, argv0);
            cmd.args(rest);
        }
    }
    cmd.env_clear()
        .envs(
            hook.env()
                .iter()
                .flatten()
                .filter_map(|e| e.split_once('=')),
        )
        .current_dir(cwd)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(spawn_err)?;
    // A hook need not read its stdin: a closed pipe is not an error. The state goes from
    // a thread, so a big one cannot block us past the timeout.
    if let Some(mut stdin) = child.stdin.take() {
        let state = state.to_string();
        std::thread::spawn(move || {
            let _ = stdin.write_all(state.as_bytes());
        });
    }
    let stderr = child.stderr.take().map(|mut err| {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = (&mut err).take(1 << 20).read_to_end(&mut buf);
            let _ = tx.send(buf);
        });
        rx
    });
    let timeout = hook.timeout().map(|t| Duration::from_secs(t as u64));
    let Some(status) = wait_until(&mut child, timeout) else {
        return Err(HookError::TimedOut {
            kind: kind.name(),
            path,
            secs: hook.timeout().unwrap_or_default(),
        });
    };
    if status.success() {
        return Ok(());
    }
    // A daemon the hook left may hold its stderr open: do not wait for it long.
    let text = stderr
        .and_then(|rx| rx.recv_timeout(Duration::from_millis(200)).ok())
        .unwrap_or_default();
    Err(HookError::Failed {
        kind: kind.name(),
        path,
        status: describe(status),
        stderr: last_line(&text),
    })
}

/// Waits for `child`; after `timeout` kills it and returns `None`.
fn wait_until(child: &mut Child, timeout: Option<Duration>) -> Option<ExitStatus> {
    let deadline = timeout.map(|t| Instant::now() + t);
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) => {}
            // Cannot happen for our own child; treat it as gone.
            Err(_) => return child.wait().ok(),
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        _ => status.to_string(),
    }
}

/// `: ` and the last non-empty line of `bytes` (at most [`STDERR_KEEP`] bytes of it).
fn last_line(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    match text.lines().rev().find(|l| !l.trim().is_empty()) {
        Some(l) => {
            let l = l.trim();
            let cut = l.len().min(STDERR_KEEP);
            let cut = (0..=cut)
                .rev()
                .find(|i| l.is_char_boundary(*i))
                .unwrap_or(0);
            format!(": {}", &l[..cut])
        }
        None => String::new(),
    }
}

#[cfg(test)]
#[path = "hooks_tests.rs"]
mod tests;
