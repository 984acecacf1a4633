//! The monitor: the host process that *is* the container for its callers (its pid is the
//! `--pid-file` pid). `create` starts it as `sandbox-vm monitor ID` in a new session with
//! the container's stdio. It runs the VM in-process and lives as long as the container.
//!
//! Threads:
//! - **main**: builds the VM from `plan.json`, then `Vm::run` until the VM stops.
//! - **agent**: waits for the guest agent on the VMM's vsock socket, sends CreateSandbox and
//!   CreateContainer, attaches the streams (copy threads in `stdio`), tells `create` it is
//!   ready (one line on the pipe in `SANDBOX_VM_READY_FD`: `OK` or `ERR <message>`), then
//!   waits for the container's exit, records it in `state.json` and stops the VM.
//!
//! The process exits with the container's status (128 + signal for a signal), or 255 when
//! the VM ended without one (crash; the reason goes to `monitor.log`).

use std::fs::File;
use std::io::Write;
use std::os::fd::FromRawFd;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use agent_protocol::{Client, CreateSandbox, Endpoint, AGENT_VSOCK_PORT};
use vmm::stop::{StopReason, StopSignal};

use crate::oci::translate::Plan;
use crate::state::{process_start_time, Status, Store};
use crate::stdio::{self, HostIo};

/// Environment variable naming the readiness pipe's fd.
pub const READY_FD_ENV: &str = "SANDBOX_VM_READY_FD";
/// Environment variable carrying `--console-socket` to the monitor.
pub const CONSOLE_SOCKET_ENV: &str = "SANDBOX_VM_CONSOLE_SOCKET";
/// How long the guest may take to boot to its agent (boots take about a minute on hosts
/// that emulate guest kernel mode).
pub const AGENT_TIMEOUT: Duration = Duration::from_secs(600);
/// Exit status when the VM stopped without the container reporting one.
pub const CRASH_STATUS: i32 = 255;

/// Errors of the monitor (reported on the readiness pipe and in `monitor.log`).
#[derive(Debug, thiserror::Error)]
pub enum MonitorError {
    #[error("cannot read {path}: {err}")]
    Plan { path: PathBuf, err: String },
    #[error("cannot start the VM: {0}")]
    Build(#[from] vmm::builder::BuildError),
    #[error("the VM stopped before its agent answered: {0}")]
    VmStopped(String),
    #[error("the guest agent did not answer within {0:?}")]
    AgentTimeout(Duration),
    #[error("agent: {0}")]
    Agent(#[from] agent_protocol::ClientError),
    #[error(transparent)]
    Stdio(#[from] stdio::StdioError),
    #[error(transparent)]
    State(#[from] crate::state::StateError),
}

/// The agent endpoint of a container's VM.
pub fn endpoint(dir: &Path) -> Endpoint {
    Endpoint::HybridVsock {
        path: dir.join("vsock.sock"),
        port: AGENT_VSOCK_PORT,
    }
}

/// Polls until the agent accepts a control connection (the VMM resets connections while
/// nothing listens in the guest).
fn wait_for_agent(ep: &Endpoint, stop: &StopSignal) -> Result<Client, MonitorError> {
    let deadline = Instant::now() + AGENT_TIMEOUT;
    loop {
        if let Some(r) = stop.reason() {
            return Err(MonitorError::VmStopped(r.to_string()));
        }
        if let Ok(c) = Client::connect(ep) {
            return Ok(c);
        }
        if Instant::now() > deadline {
            return Err(MonitorError::AgentTimeout(AGENT_TIMEOUT));
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// A one-line message for `create`; `None` once sent.
struct Ready(Option<File>);

impl Ready {
    fn from_env() -> Ready {
        let fd = std::env::var(READY_FD_ENV)
            .ok()
            .and_then(|v| v.parse::<i32>().ok());
        std::env::remove_var(READY_FD_ENV);
        Ready(fd.filter(|fd| *fd > 2).map(|fd| {
            // SAFETY: `create` left this fd open (not close-on-exec) for us alone and named
            // it in the environment; nothing else in this process owns or closes it.
            unsafe { File::from_raw_fd(fd) }
        }))
    }

    fn send(&mut self, line: &str) {
        if let Some(mut f) = self.0.take() {
            let _ = writeln!(f, "{}", line.replace('\n', " "));
        }
    }
}

fn log_line(dir: &Path, msg: &str) {
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("monitor.log"))
    {
        let _ = writeln!(f, "{} {msg}", crate::state::now_secs());
    }
}

/// The agent thread's work up to the container's exit status.
fn serve(
    store: &Store,
    id: &str,
    plan: Plan,
    io: HostIo,
    stop: &StopSignal,
    ready: &mut Ready,
) -> Result<i32, MonitorError> {
    let ep = endpoint(&store.dir(id));
    let t0 = Instant::now();
    let mut client = wait_for_agent(&ep, stop)?;
    log_line(
        &store.dir(id),
        &format!("agent answered after {:.1} s", t0.elapsed().as_secs_f64()),
    );
    client.create_sandbox(CreateSandbox {
        sandbox_id: id.into(),
        hostname: plan.container.spec.hostname().clone(),
        shares: Vec::new(),
    })?;
    let mut container = plan.container;
    container.stdio = io.config();
    client.create_container(container)?;
    let pumps = stdio::attach(&ep, id, None, io)?;
    store.update(id, |s| s.status = Status::Created)?;
    ready.send("OK");
    log_line(
        &store.dir(id),
        &format!(
            "container created after {:.1} s",
            t0.elapsed().as_secs_f64()
        ),
    );
    let exit = client.wait(id, None)?;
    log_line(
        &store.dir(id),
        &format!("container exited ({:?})", exit.status),
    );
    for p in pumps.outputs {
        let _ = p.join();
    }
    Ok(exit.status.as_shell_status())
}

/// `sandbox-vm monitor ID` (hidden): see the module docs.
pub fn run(store: &Store, id: &str) -> i32 {
    let _ = nix::unistd::setsid();
    let mut ready = Ready::from_env();
    let dir = store.dir(id);
    let console = std::env::var_os(CONSOLE_SOCKET_ENV).map(PathBuf::from);
    std::env::remove_var(CONSOLE_SOCKET_ENV);
    let fail = |ready: &mut Ready, e: &dyn std::fmt::Display| {
        log_line(&dir, &format!("error: {e}"));
        ready.send(&format!("ERR {e}"));
        CRASH_STATUS
    };

    let pid = std::process::id() as i32;
    if let Err(e) = store.update(id, |s| {
        s.pid = Some(pid);
        s.pid_start = process_start_time(pid);
    }) {
        return fail(&mut ready, &e);
    }
    let plan_path = dir.join("plan.json");
    let plan: Plan = match std::fs::read(&plan_path)
        .map_err(|e| e.to_string())
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
    {
        Ok(p) => p,
        Err(err) => {
            return fail(
                &mut ready,
                &MonitorError::Plan {
                    path: plan_path,
                    err,
                },
            )
        }
    };
    let terminal = plan
        .container
        .spec
        .process()
        .as_ref()
        .and_then(|p| p.terminal())
        .unwrap_or(false);
    let io = match (&console, terminal) {
        (Some(sock), true) => HostIo::console(sock),
        _ => HostIo::inherited().map(|mut io| {
            if terminal {
                io.stderr = None;
            }
            io
        }),
    };
    let io = match io {
        Ok(io) => io,
        Err(e) => return fail(&mut ready, &e),
    };

    let mut vm = match vmm::builder::build(&plan.vm) {
        Ok(vm) => vm,
        Err(e) => return fail(&mut ready, &MonitorError::Build(e)),
    };
    let stop: Arc<StopSignal> = vm.stop_signal();
    let (tx, rx) = mpsc::channel::<Result<i32, String>>();
    {
        let store = store.clone();
        let id = id.to_string();
        let stop = stop.clone();
        let dir = dir.clone();
        std::thread::spawn(move || {
            let result = serve(&store, &id, plan, io, &stop, &mut ready);
            let result = match result {
                Ok(code) => Ok(code),
                Err(e) => {
                    log_line(&dir, &format!("error: {e}"));
                    ready.send(&format!("ERR {e}"));
                    Err(e.to_string())
                }
            };
            let _ = tx.send(result);
            // The rootfs image is thrown away with the container: no need for an orderly
            // guest shutdown.
            stop.request(StopReason::GuestPowerOff);
        });
    }
    let reason = match vm.run() {
        Ok(r) => r.to_string(),
        Err(e) => format!("vCPU error: {e}"),
    };
    log_line(&dir, &format!("VM stopped: {reason}"));
    // A crash before the agent answered is noticed by the agent thread within a poll.
    let code = match rx.recv_timeout(Duration::from_secs(2)) {
        Ok(Ok(code)) => code,
        Ok(Err(_)) => CRASH_STATUS,
        Err(_) => {
            log_line(&dir, "the VM stopped while the container was running");
            CRASH_STATUS
        }
    };
    let _ = store.update(id, |s| {
        s.status = Status::Stopped;
        s.exit_status = Some(code);
    });
    code
}
