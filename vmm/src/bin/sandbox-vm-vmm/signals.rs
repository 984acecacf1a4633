//! SIGTERM and SIGINT end the run in order: the handler writes to an eventfd that the API
//! thread turns into a `stop`.

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicI32, Ordering};

use anyhow::{Context, Result};
use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

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
pub fn stop_on_signals() -> Result<EventFd> {
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
