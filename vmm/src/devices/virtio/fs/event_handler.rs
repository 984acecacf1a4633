//! virtio-fs on the event loop: the backend's call eventfds become interrupts with the
//! used-buffer bit set, and the backend socket is watched for a hang-up.
//!
//! After a hang-up of an active device's backend, the device takes over ([`super::eio`]):
//! it hands its [`Activation`](crate::devices::virtio::activation) the queue eventfds in
//! place of the call eventfds (same tokens: the queue index), answers what is pending, and
//! from then on answers a queue whenever its eventfd fires.
//!
//! The call eventfds go through the device's [`Activation`](crate::devices::virtio::activation)
//! like other devices' queue eventfds (token = queue index). The socket is polled from
//! `init` until it fails; it is only read on the thread that holds the device, so a reply
//! the vCPU thread is waiting for never reaches this handler: when the event loop gets the
//! device, the reply has been consumed and [`VhostUserBackend::peer_state`] finds the socket
//! quiet.
//!
//! [`VhostUserBackend::peer_state`]: super::vhost::VhostUserBackend::peer_state

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};

use super::eio::Answering;
use super::vhost::PeerState;
use super::Fs;
use crate::devices::virtio::activation::{Change, FIRST_BACKEND_TOKEN};

/// `Events::data()` of the backend socket.
const SOCKET_TOKEN: u32 = FIRST_BACKEND_TOKEN;

impl Fs {
    /// The backend used buffers on some queue: tell the driver.
    pub(crate) fn backend_called(&self) {
        if let Some(a) = self.state.active() {
            a.interrupt.signal_used_queue();
        }
    }

    /// The backend socket became readable or hung up. False if it is broken now (the
    /// caller stops polling it). An active device whose backend is gone takes over.
    pub(crate) fn check_backend(&mut self) -> bool {
        let (why, gone) = match self.backend.peer_state() {
            PeerState::Quiet => return true,
            PeerState::Closed(why) => (format!("closed the connection ({why})"), true),
            PeerState::Unexpected => ("sent a message nobody asked for".to_string(), false),
        };
        if !self.backend.is_broken() {
            // A failed request already said why and the transport set NEEDS_RESET.
            self.backend.set_broken();
            let active = self.state.active();
            let effect = match (active.is_some(), gone) {
                (true, true) => "the device needs a reset; it answers every request with EIO",
                (true, false) => "the device needs a reset",
                (false, _) => "the device will not start",
            };
            log::error!("{}: the backend {why}; {effect}", self.name());
            if let Some(a) = active {
                a.interrupt.set_needs_reset();
            }
            if gone {
                self.take_over();
            }
        }
        false
    }

    /// The backend is gone: the device answers its queues from now on.
    fn take_over(&mut self) {
        let name = self.name();
        let Some(a) = self.state.active_mut() else {
            return;
        };
        let rings = &mut a.data;
        if rings.answering.is_some() {
            return;
        }
        rings.answering = Some(Answering::take_over(&a.mem, &rings.queues, name.clone()));
        // Polled from the next turn of the event loop, which then answers every queue.
        let kicks = std::mem::take(&mut rings.kicks);
        if let Err(e) = self.activation.activate(kicks) {
            log::error!("{name}: cannot poll the queue notifications: {e}");
        }
        self.answer(None);
    }

    /// Answers queue `index` (all with None) if the device answers for a dead backend, and
    /// interrupts the driver if a buffer was used.
    fn answer(&mut self, index: Option<u32>) {
        let Some(a) = self.state.active_mut() else {
            return;
        };
        let Some(answering) = a.data.answering.as_mut() else {
            return;
        };
        let used = match index {
            Some(i) => answering.answer(&a.mem, i as usize),
            None => answering.answer_all(&a.mem),
        };
        if used {
            a.interrupt.signal_used_queue();
        }
    }

    /// Whether the device answers the requests itself.
    pub fn answering(&self) -> bool {
        self.state
            .active()
            .is_some_and(|a| a.data.answering.is_some())
    }

    /// The backend socket is readable: stop polling it once it is broken.
    fn socket_event(&mut self, ops: &mut EventOps) {
        if !self.check_backend() {
            self.poll_socket(ops, false);
        }
    }

    fn poll_socket(&mut self, ops: &mut EventOps, on: bool) {
        if on == self.socket_polled {
            return;
        }
        let fd = std::os::fd::AsRawFd::as_raw_fd(&self.backend);
        let r = if on {
            ops.add(Events::with_data_raw(fd, SOCKET_TOKEN, EventSet::IN))
        } else {
            ops.remove(Events::empty_raw(fd))
        };
        match r {
            Ok(()) => self.socket_polled = on,
            Err(e) => log::error!("{}: cannot change polling of the backend: {e}", self.name()),
        }
    }
}

impl MutEventSubscriber for Fs {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        match self.activation.handle(&events, ops) {
            // After a take-over: the queue eventfds are polled now.
            Some(Change::Activated) => return self.answer(None),
            Some(_) => return,
            None => {}
        }
        match events.data() {
            SOCKET_TOKEN => self.socket_event(ops),
            q if self.activation.consume_queue_event(q) => {
                if self.answering() {
                    self.answer(Some(q));
                } else {
                    self.backend_called();
                }
            }
            _ => {}
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        self.activation.init(ops);
        self.poll_socket(ops, true);
    }
}
