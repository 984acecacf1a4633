//! The kick: a real-time signal with a no-op handler, sent to a vCPU thread to make its
//! KVM_RUN return (EINTR) so it sees a pause or a stop. Used by `vcpu` (stopping) and
//! `control` (pausing); it lives apart so neither of them imports the other for it.

use std::sync::Once;

use vmm_sys_util::signal::{register_signal_handler, SIGRTMIN};

/// The kick handler could not be installed.
#[derive(Debug, thiserror::Error)]
#[error("cannot install the vCPU kick signal handler: {0}")]
pub struct KickError(vmm_sys_util::errno::Error);

/// The signal used to kick a vCPU thread out of KVM_RUN.
pub(crate) fn kick_signal() -> i32 {
    SIGRTMIN()
}

extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// Installs the kick signal's no-op handler (once per process), so a kick interrupts
/// KVM_RUN instead of killing the process.
pub(crate) fn install_kick_handler() -> Result<(), KickError> {
    static HANDLER: Once = Once::new();
    let mut result = Ok(());
    HANDLER.call_once(|| result = register_signal_handler(kick_signal(), on_kick));
    result.map_err(KickError)
}
