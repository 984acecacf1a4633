//! Why a VM stopped, and the one-shot signal that tells the VMM's main thread it has.

use std::sync::Mutex;

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// How a VM run ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// The guest reset the machine through the i8042 (Linux `reboot=k`): a clean exit.
    GuestReset,
    /// The guest asked KVM to power off or reset (KVM_SYSTEM_EVENT).
    GuestPowerOff,
    /// The guest kernel panicked.
    GuestPanic,
    /// The guest triple-faulted (a reset without the orderly path: a crash).
    TripleFault,
    /// KVM could not run the guest; the text says what and where.
    GuestFault(String),
    /// The VMM itself failed while running the guest.
    VmmError(String),
    /// Someone outside the guest asked the VMM to stop (the control API's `stop`, SIGTERM).
    Requested,
}

impl StopReason {
    /// True for the clean ends: the guest's own reboot or power-off, or a requested stop.
    pub fn is_clean(&self) -> bool {
        matches!(
            self,
            StopReason::GuestReset | StopReason::GuestPowerOff | StopReason::Requested
        )
    }
}

impl std::fmt::Display for StopReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StopReason::GuestReset => write!(f, "the guest rebooted"),
            StopReason::GuestPowerOff => write!(f, "the guest powered off"),
            StopReason::GuestPanic => write!(f, "the guest kernel panicked"),
            StopReason::TripleFault => write!(f, "the guest triple-faulted"),
            StopReason::GuestFault(s) => write!(f, "the guest could not run: {s}"),
            StopReason::VmmError(s) => write!(f, "VMM error: {s}"),
            StopReason::Requested => write!(f, "the VM was stopped on request"),
        }
    }
}

/// Set once by whoever sees the VM end (a vCPU thread, a device); read by the main thread.
pub struct StopSignal {
    evt: EventFd,
    reason: Mutex<Option<StopReason>>,
    panicked: std::sync::atomic::AtomicBool,
}

impl StopSignal {
    /// A signal nobody has raised yet.
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {
            evt: EventFd::new(EFD_NONBLOCK)?,
            reason: Mutex::new(None),
            panicked: false.into(),
        })
    }

    /// Records `reason` (the first one wins) and wakes the main thread.
    pub fn request(&self, reason: StopReason) {
        let mut r = self.reason.lock().unwrap_or_else(|e| e.into_inner());
        if r.is_none() {
            *r = Some(reason);
        }
        drop(r);
        // A full eventfd counter still leaves it readable, which is all we need.
        let _ = self.evt.write(1);
    }

    /// Notes that the guest kernel announced a panic: whatever ends the run next, the
    /// run counts as a panic.
    pub fn note_guest_panic(&self) {
        self.panicked
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// True once a stop was requested.
    pub fn is_requested(&self) -> bool {
        self.reason
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
    }

    /// The eventfd that becomes readable on the first request.
    pub fn eventfd(&self) -> &EventFd {
        &self.evt
    }

    /// The final reason, with a noted panic taking precedence over the reset it causes.
    pub fn reason(&self) -> Option<StopReason> {
        let r = self
            .reason
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if self.panicked.load(std::sync::atomic::Ordering::SeqCst) {
            return Some(StopReason::GuestPanic);
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_request_wins_and_panic_overrides() {
        let s = StopSignal::new().unwrap();
        assert!(!s.is_requested());
        s.request(StopReason::GuestReset);
        s.request(StopReason::TripleFault);
        assert!(s.is_requested());
        assert_eq!(s.eventfd().read().unwrap(), 2);
        assert_eq!(s.reason(), Some(StopReason::GuestReset));
        s.note_guest_panic();
        assert_eq!(s.reason(), Some(StopReason::GuestPanic));
        assert!(StopReason::GuestReset.is_clean());
        assert!(!StopReason::GuestPanic.is_clean());
        assert!(StopReason::Requested.is_clean());
    }
}
