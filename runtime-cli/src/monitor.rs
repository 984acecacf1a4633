//! The monitor: the host process that *is* the container for its callers (its pid is the
//! `--pid-file` pid). `create` starts it as `sandbox-vm monitor ID` in a new session with
//! the container's stdio. It owns the container's sandbox (`sandbox::Sandbox`: the VMM
//! process, virtiofsd and the share) and lives as long as the container:
//!
//! 1. creates the sandbox from `plan.json` and adds the container to it, with its streams
//!    attached (copy threads in `sandbox::stdio`);
//! 2. with `--start` (from `run`) starts the container on its own agent connection, then
//!    tells `create` it is ready (`ready`: `OK` or `ERR <message>`);
//! 3. waits for the container's exit, records it in `state.json`, stops the sandbox.
//!
//! The process exits with the container's status (128 + signal for a signal), or 255 when
//! the VM ended without one (crash; the reason goes to `monitor.log`). Its helpers (the VMM,
//! virtiofsd) are in its process group, so `delete` can kill them all with it.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sandbox::oci::hooks::HookKind;
use sandbox::stdio::HostIo;
use sandbox::{PodPlan, Sandbox, SandboxOps, LOST_EXIT_STATUS};

use crate::lifecycle::{record_monitor, run_hooks};
use crate::ready::ReadyWriter;
use crate::state::{log_line, Status, Store};
use crate::testpoint;

/// Errors of the monitor (reported on the readiness pipe and in `monitor.log`).
#[derive(Debug, thiserror::Error)]
pub enum MonitorError {
    #[error(transparent)]
    Plan(#[from] crate::plan::PlanFileError),
    #[error(transparent)]
    Sandbox(#[from] sandbox::SandboxError),
    #[error("cannot start the container: {0}")]
    Start(#[from] sandbox::HandleError),
    #[error(transparent)]
    Stdio(#[from] sandbox::stdio::StdioError),
    #[error(transparent)]
    State(#[from] crate::state::StateError),
    #[error(transparent)]
    Hook(#[from] crate::lifecycle::LifecycleError),
}

/// The container's streams: a new pty for `--console-socket` with a terminal, else our
/// own stdio (minus stderr with a terminal).
fn host_io(plan: &PodPlan, console: Option<&Path>) -> Result<HostIo, MonitorError> {
    let terminal = plan
        .first
        .request
        .spec
        .process()
        .as_ref()
        .and_then(|p| p.terminal())
        .unwrap_or(false);
    Ok(match (console, terminal) {
        (Some(sock), true) => HostIo::console(sock)?,
        _ => {
            let mut io = HostIo::inherited()?;
            if terminal {
                io.stderr = None;
            }
            io
        }
    })
}

/// Up to the container being created (and with `start`, started), its create hooks run
/// (prestart, createRuntime; with `start` also poststart): the VM and the container exist
/// in it, its process has not run yet.
fn create_sandbox(
    store: &Store,
    id: &str,
    console: Option<&Path>,
    start: bool,
) -> Result<(Sandbox, sandbox::stdio::Pumps), MonitorError> {
    let dir = store.dir(id);
    testpoint::pause(testpoint::MONITOR_STARTED);
    // Nothing exists before this record: `delete` finds (and kills) what follows by it.
    let state = record_monitor(store, id, std::process::id() as i32)?;
    testpoint::pause(testpoint::MONITOR_RECORDED);
    let plan = crate::plan::load(&dir)?;
    let io = host_io(&plan, console)?;
    let t0 = Instant::now();
    let sandbox = Sandbox::create(&plan)?;
    log_line(&dir, &format!("agent answered after {:.1?}", t0.elapsed()));
    testpoint::pause(testpoint::SANDBOX_UP);
    let (_, pumps) = sandbox.add_container(plan.first, io)?;
    run_hooks(&state, HookKind::Prestart, Status::Creating)?;
    run_hooks(&state, HookKind::CreateRuntime, Status::Creating)?;
    let state = store.update(id, |s| s.status = Status::Created)?;
    testpoint::pause(testpoint::CONTAINER_CREATED);
    log_line(
        &dir,
        &format!("container created after {:.1?}", t0.elapsed()),
    );
    if start {
        sandbox.start(id)?;
        store.update(id, |s| s.status = Status::Running)?;
        log_line(
            &dir,
            &format!("container started after {:.1?}", t0.elapsed()),
        );
        run_hooks(&state, HookKind::Poststart, Status::Running)?;
    }
    Ok((sandbox, pumps))
}

/// `sandbox-vm monitor ID [--console-socket PATH]` (hidden): see the module docs.
pub fn run(store: &Store, id: &str, console: Option<PathBuf>, start: bool) -> i32 {
    let _ = nix::unistd::setsid();
    let mut ready = ReadyWriter::from_env();
    let dir = store.dir(id);

    let (sandbox, pumps) = match create_sandbox(store, id, console.as_deref(), start) {
        Ok(s) => s,
        Err(e) => {
            log_line(&dir, &format!("error: {e}"));
            ready.err(&e);
            let _ = store.update(id, |s| s.status = Status::Stopped);
            return LOST_EXIT_STATUS;
        }
    };
    ready.ok();
    // The VMM first, then each share's virtiofsd.
    for virtiofsd in sandbox.host_pids().unwrap_or_default().into_iter().skip(1) {
        crate::watch::virtiofsd(&dir, virtiofsd);
    }
    // Nothing else in this process asks the agent anything: the wait has the kept
    // connection.
    let exit = sandbox.wait(id, None);
    for p in pumps.outputs {
        let _ = p.join();
    }
    let code = match exit {
        Ok(e) => {
            log_line(&dir, &format!("container exited ({:?})", e.status));
            e.status.as_shell_status()
        }
        Err(e) => {
            // The agent's connection closes as the VMM dies: give it a moment to be reaped.
            sandbox.wait_vmm(Duration::from_secs(2));
            let why = sandbox
                .vm_stopped()
                .unwrap_or_else(|| format!("lost the guest agent: {e}"));
            log_line(&dir, &format!("the container's VM ended: {why}"));
            LOST_EXIT_STATUS
        }
    };
    let _ = store.update(id, |s| {
        s.status = Status::Stopped;
        s.exit_status = Some(code);
    });
    match sandbox.stop() {
        Ok(status) => log_line(&dir, &format!("VM stopped ({status:?})")),
        Err(e) => log_line(&dir, &format!("error stopping the sandbox: {e}")),
    }
    code
}
