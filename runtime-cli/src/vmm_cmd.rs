//! `sandbox-vm vmm --config vm.json --api-sock PATH`: the VMM as a process of its own, with
//! its control API on a Unix socket (`vmm::api`). Nothing but the VM runs in it: the main
//! thread, the vCPU threads, the device event loop and the API thread.
//!
//! The socket is bound only once the VM is built, so a caller that can connect knows the
//! VM is ready (`vmm::api::ApiClient::connect` retries until then); a stale socket file at
//! that path is replaced, and the socket is removed when the process exits.
//!
//! Exit status, as `boot`: 0 when the guest reboots or powers off, or the VM is stopped on
//! request (the API's `stop`, SIGTERM or SIGINT: an orderly stop, the vCPUs are joined and
//! the socket removed); 2 when the guest crashes; 1 for a VMM error, with one line on
//! stderr.

use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;
use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
use vmm::api::ApiServer;
use vmm::config::VmConfig;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

#[derive(Args)]
pub struct VmmArgs {
    /// The VM config (JSON; the fields of `boot --config`)
    #[arg(long)]
    config: PathBuf,
    /// Unix socket for the control API (mode 0600, bound once the VM is built, removed on
    /// exit)
    #[arg(long, value_name = "PATH")]
    api_sock: PathBuf,
}

/// Runs the VM with its API server until it stops; maps how it ended to the exit status.
pub fn run(args: VmmArgs) -> Result<ExitCode> {
    let config = VmConfig::from_file(&args.config)?;
    let stop_evt = stop_on_signals()?;
    let started = Instant::now();
    let mut vm = vmm::builder::build(&config)?;
    let server = ApiServer::start(&args.api_sock, vm.control(), Some(stop_evt))?;
    let reason = vm.run();
    drop(server);
    let reason = reason?;
    let secs = started.elapsed().as_secs_f64();
    if reason.is_clean() {
        eprintln!("sandbox-vm vmm: {reason} after {secs:.1} s");
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("sandbox-vm vmm: {reason} (after {secs:.1} s)");
        Ok(ExitCode::from(2))
    }
}

/// The eventfd the signal handler writes; -1 until `stop_on_signals` set it.
static STOP_FD: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_stop_signal(_: libc::c_int) {
    let fd = STOP_FD.load(Ordering::SeqCst);
    if fd >= 0 {
        let one = 1u64.to_ne_bytes();
        // SAFETY: write(2) is async-signal-safe; `one` is 8 valid bytes and `fd` is the
        // eventfd kept open by the API thread for the life of the process.
        unsafe { libc::write(fd, one.as_ptr().cast(), one.len()) };
    }
}

/// Makes SIGTERM and SIGINT write to an eventfd, which the API thread turns into a stop.
fn stop_on_signals() -> Result<EventFd> {
    let evt = EventFd::new(EFD_NONBLOCK).context("cannot create the stop eventfd")?;
    let keep = evt.try_clone().context("cannot create the stop eventfd")?;
    // The handler's copy stays open until exit: forget it rather than close it under a
    // signal that may arrive late.
    STOP_FD.store(keep.as_raw_fd(), Ordering::SeqCst);
    std::mem::forget(keep);
    let action = SigAction::new(
        SigHandler::Handler(on_stop_signal),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for sig in [Signal::SIGTERM, Signal::SIGINT] {
        // SAFETY: the handler only loads an atomic and calls write(2), both
        // async-signal-safe.
        unsafe { sigaction(sig, &action) }
            .with_context(|| format!("cannot install the {sig} handler"))?;
    }
    Ok(evt)
}
