//! virtio-fs on the event loop: the backend's call eventfds become interrupts with the
//! used-buffer bit set, and the backend socket is watched for a hang-up.
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

use super::vhost::PeerState;
use super::Fs;
use crate::devices::virtio::activation::FIRST_BACKEND_TOKEN;

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
    /// caller stops polling it).
    pub(crate) fn check_backend(&mut self) -> bool {
        let why = match self.backend.peer_state() {
            PeerState::Quiet => return true,
            PeerState::Closed(why) => format!("closed the connection ({why})"),
            PeerState::Unexpected => "sent a message nobody asked for".to_string(),
        };
        if !self.backend.is_broken() {
            // A failed request already said why and the transport set NEEDS_RESET.
            self.backend.set_broken();
            let active = self.state.active();
            let effect = if active.is_some() {
                "the device needs a reset"
            } else {
                "the device will not start"
            };
            log::error!("{}: the backend {why}; {effect}", self.name());
            if let Some(a) = active {
                a.interrupt.set_needs_reset();
            }
        }
        false
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
        if self.activation.handle(&events, ops).is_some() {
            return;
        }
        match events.data() {
            SOCKET_TOKEN => {
                if !self.check_backend() {
                    self.poll_socket(ops, false);
                }
            }
            q => {
                if self.activation.consume_queue_event(q) {
                    self.backend_called();
                }
            }
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        self.activation.init(ops);
        self.poll_socket(ops, true);
    }
}
