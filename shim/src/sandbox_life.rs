//! The life of a Sandbox API sandbox (containerd 2.x, `sandboxer = "shim"`), apart from
//! its VM: created (planned) → starting (the VM boots) → ready → stopped, and the exit
//! that `WaitSandbox` callers watch. A failed start leaves it created, so containerd may
//! stop and shut it down as usual.

use std::time::SystemTime;

use tokio::sync::watch;

use crate::container::Exit;
use crate::error::ShimError;

/// Where the sandbox is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Created,
    Starting,
    Ready,
    Stopped,
}

/// CRI's names for a sandbox's state (`runtime.v1.PodSandboxState`).
pub const READY: &str = "SANDBOX_READY";
pub const NOT_READY: &str = "SANDBOX_NOTREADY";

/// One sandbox's life (see the module docs).
#[derive(Debug)]
pub struct SandboxLife {
    id: String,
    phase: Phase,
    created_at: SystemTime,
    exit: watch::Sender<Option<Exit>>,
}

impl SandboxLife {
    pub fn new(id: &str) -> SandboxLife {
        SandboxLife {
            id: id.into(),
            phase: Phase::Created,
            created_at: SystemTime::now(),
            exit: watch::channel(None).0,
        }
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    pub fn created_at(&self) -> SystemTime {
        self.created_at
    }

    /// Fails unless the request names this sandbox.
    pub fn check_id(&self, id: &str) -> Result<(), ShimError> {
        match id == self.id {
            true => Ok(()),
            false => Err(ShimError::NotFound(format!("sandbox {id}"))),
        }
    }

    /// Created → starting; anything else is refused.
    pub fn begin_start(&mut self) -> Result<(), ShimError> {
        if self.phase != Phase::Created {
            return Err(ShimError::State(format!(
                "sandbox {} is {:?}, not created",
                self.id, self.phase
            )));
        }
        self.phase = Phase::Starting;
        Ok(())
    }

    /// Starting → ready (`true`) or back to created (`false`: the VM did not boot).
    pub fn end_start(&mut self, booted: bool) {
        if self.phase == Phase::Starting {
            self.phase = match booted {
                true => Phase::Ready,
                false => Phase::Created,
            };
        }
    }

    /// Stopped with `status` (the first stop's status stays); tells every waiter.
    /// Returns whether this was the first.
    pub fn stopped(&mut self, status: u32) -> bool {
        self.phase = Phase::Stopped;
        self.exit.send_if_modified(|e| {
            if e.is_some() {
                return false;
            }
            *e = Some(Exit {
                status,
                at: SystemTime::now(),
            });
            true
        })
    }

    /// Its exit, once stopped.
    pub fn exited(&self) -> Option<Exit> {
        *self.exit.borrow()
    }

    /// For `WaitSandbox`.
    pub fn subscribe(&self) -> watch::Receiver<Option<Exit>> {
        self.exit.subscribe()
    }

    /// CRI's state name: ready only while the VM runs.
    pub fn state_name(&self) -> &'static str {
        match self.phase {
            Phase::Ready => READY,
            _ => NOT_READY,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sandbox_goes_created_starting_ready_stopped_and_its_waiters_hear_once() {
        let mut s = SandboxLife::new("sb1");
        assert!(s.check_id("sb1").is_ok());
        let e = s.check_id("other").unwrap_err();
        assert_eq!(e.code(), containerd_shim_protos::ttrpc::Code::NOT_FOUND);
        assert_eq!((s.phase(), s.state_name()), (Phase::Created, NOT_READY));
        let mut waiter = s.subscribe();
        s.begin_start().unwrap();
        assert_eq!(s.state_name(), NOT_READY);
        assert!(s.begin_start().is_err(), "a second start while starting");
        s.end_start(true);
        assert_eq!((s.phase(), s.state_name()), (Phase::Ready, READY));
        let e = s.begin_start().unwrap_err();
        assert_eq!(
            e.code(),
            containerd_shim_protos::ttrpc::Code::FAILED_PRECONDITION
        );
        assert!(!waiter.has_changed().unwrap());
        assert!(s.stopped(0));
        assert!(!s.stopped(255), "only the first stop counts");
        assert_eq!(s.exited().map(|e| e.status), Some(0));
        assert!(waiter.has_changed().unwrap());
        assert_eq!(waiter.borrow_and_update().map(|e| e.status), Some(0));
        assert_eq!((s.phase(), s.state_name()), (Phase::Stopped, NOT_READY));
        assert!(s.begin_start().is_err(), "no restart after a stop");
    }

    #[test]
    fn a_failed_boot_leaves_the_sandbox_created() {
        let mut s = SandboxLife::new("sb1");
        s.begin_start().unwrap();
        s.end_start(false);
        assert_eq!(s.phase(), Phase::Created);
        assert_eq!(s.exited(), None);
        // A stop after the failure ends it.
        assert!(s.stopped(255));
        s.end_start(true);
        assert_eq!(
            s.phase(),
            Phase::Stopped,
            "a late end_start changes nothing"
        );
    }
}
