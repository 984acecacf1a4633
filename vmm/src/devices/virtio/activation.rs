//! Handing a device's queue eventfds from the vCPU thread that activates it to the
//! event-loop thread that polls them.
//!
//! [`VirtioDevice::activate`](super::VirtioDevice::activate) and `reset` run on a vCPU thread
//! (the driver wrote the status register), but only the event-loop thread may change its epoll
//! set. A device keeps an [`Activation`]: `activate`/`deactivate` record the wanted set of
//! queue eventfds and kick the "activate" eventfd; the event loop then calls
//! [`Activation::handle`], which swaps the registered set for the wanted one.
//!
//! Events carry a token in `Events::data()`: the queue index for queue eventfds,
//! [`ACTIVATE_TOKEN`] for the activate eventfd. Devices use other tokens (from
//! [`FIRST_BACKEND_TOKEN`]) for their backend fds.

use std::io;

use event_manager::{EventOps, EventSet, Events};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::ActivateError;

/// `Events::data()` of the activate eventfd.
pub const ACTIVATE_TOKEN: u32 = u32::MAX;
/// Tokens below this are queue indices; devices number their own fds from here.
pub const FIRST_BACKEND_TOKEN: u32 = 0x1_0000;

/// What [`Activation::handle`] did to the epoll set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// The queue eventfds of a new activation are now polled (any earlier ones were removed).
    Activated,
    /// The device was reset: its queue eventfds are no longer polled.
    Deactivated,
    /// A spurious wake-up.
    Unchanged,
}

/// The queue eventfds a device wants polled, and the ones that are.
pub struct Activation {
    evt: EventFd,
    /// Set on the vCPU thread: `Some(evts)` to activate with `evts`, `Some(vec![])` to deactivate.
    wanted: Option<Vec<EventFd>>,
    /// Owned so they stay open (and removable from epoll) until removed.
    registered: Vec<EventFd>,
}

impl Activation {
    /// A new, inactive activation.
    pub fn new() -> io::Result<Self> {
        Ok(Self {
            evt: EventFd::new(EFD_NONBLOCK)?,
            wanted: None,
            registered: Vec::new(),
        })
    }

    /// Event-loop thread, from `MutEventSubscriber::init`: poll the activate eventfd.
    pub fn init(&self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::with_data(&self.evt, ACTIVATE_TOKEN, EventSet::IN)) {
            log::error!("cannot poll a virtio activate eventfd: {e}");
        }
    }

    /// vCPU thread, from `VirtioDevice::activate`: poll `queue_evts` (token = index).
    pub fn activate(&mut self, queue_evts: Vec<EventFd>) -> Result<(), ActivateError> {
        self.wanted = Some(queue_evts);
        self.evt.write(1).map_err(ActivateError::EventFd)
    }

    /// vCPU thread, from `VirtioDevice::reset`: stop polling the queue eventfds.
    pub fn deactivate(&mut self) {
        self.wanted = Some(Vec::new());
        if let Err(e) = self.evt.write(1) {
            log::error!("cannot signal virtio device reset to the event loop: {e}");
        }
    }

    /// Event-loop thread: applies the wanted set if `events` is the activate eventfd.
    /// Returns `None` for any other event (the caller's own).
    pub fn handle(&mut self, events: &Events, ops: &mut EventOps) -> Option<Change> {
        if events.data() != ACTIVATE_TOKEN {
            return None;
        }
        let _ = self.evt.read();
        let Some(wanted) = self.wanted.take() else {
            return Some(Change::Unchanged);
        };
        for evt in self.registered.drain(..) {
            if let Err(e) = ops.remove(Events::empty(&evt)) {
                log::error!("cannot stop polling a virtio queue eventfd: {e}");
            }
        }
        let change = if wanted.is_empty() {
            Change::Deactivated
        } else {
            Change::Activated
        };
        for (i, evt) in wanted.into_iter().enumerate() {
            // Queue counts come from `queue_max_sizes`, far below FIRST_BACKEND_TOKEN.
            let token = u32::try_from(i).unwrap_or(ACTIVATE_TOKEN - 1);
            if let Err(e) = ops.add(Events::with_data(&evt, token, EventSet::IN)) {
                log::error!("cannot poll virtio queue eventfd {i}: {e}");
            }
            self.registered.push(evt);
        }
        Some(change)
    }

    /// Event-loop thread: consumes a notification on queue `index`. False if that queue is
    /// not (or no longer) active: the caller should ignore the event.
    pub fn consume_queue_event(&self, index: u32) -> bool {
        match self.registered.get(index as usize) {
            Some(evt) => {
                let _ = evt.read();
                true
            }
            None => false,
        }
    }
}
