//! Named points in `create` and the monitor where a test can hold the process, to signal
//! it there and see what `delete --force` leaves (runtime-cli/tests/e2e_hooks.rs). For
//! tests only: with `SANDBOX_VM_TEST_PAUSE=POINT` the process says `sandbox-vm test:
//! paused at POINT` on stderr when it reaches POINT, then waits until the file named by
//! `SANDBOX_VM_TEST_RESUME` exists (for ever without it). Unset, nothing happens.

use std::time::Duration;

/// `create`: the state directory and `state.json` exist, the monitor is not started.
pub const STATE_SAVED: &str = "create-state-saved";
/// The monitor runs (in its own session) but has not recorded its pid yet.
pub const MONITOR_STARTED: &str = "monitor-started";
/// The monitor has recorded its pid; nothing of the sandbox exists yet.
pub const MONITOR_RECORDED: &str = "monitor-recorded";
/// The VMM and virtiofsd run and the agent answered; no container yet.
pub const SANDBOX_UP: &str = "sandbox-up";
/// The container exists in the guest and the create hooks ran; `create` not told yet.
pub const CONTAINER_CREATED: &str = "container-created";

/// Holds the process at `point` if the test asked for it (see the module docs).
pub fn pause(point: &str) {
    if std::env::var("SANDBOX_VM_TEST_PAUSE").ok().as_deref() != Some(point) {
        return;
    }
    eprintln!("sandbox-vm test: paused at {point}");
    let resume = std::env::var_os("SANDBOX_VM_TEST_RESUME");
    while !resume
        .as_ref()
        .is_some_and(|f| std::path::Path::new(f).exists())
    {
        std::thread::sleep(Duration::from_millis(20));
    }
}
