//! virtio-net on the event loop: TAP readability drives receive, queue notifications drive
//! transmit and resume receive.

use std::io::ErrorKind;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use virtio_queue::QueueT;

use super::{request, Net, RX_QUEUE, TX_QUEUE};
use crate::devices::virtio::activation::{Change, FIRST_BACKEND_TOKEN};
use crate::devices::virtio::{
    add_used, avail_ring_sane, notify_used, process_chains, MAX_CHAIN_LEN,
};

/// `Events::data()` of the backend fd.
const BACKEND_TOKEN: u32 = FIRST_BACKEND_TOKEN;

/// What receive processing needs from the event loop next.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum RxState {
    /// The backend has no more frames: keep polling it.
    Drained,
    /// A frame waits for receive buffers: stop polling the backend until the guest posts some.
    NeedBuffers,
}

impl Net {
    /// Sends every frame the guest queued.
    pub(crate) fn process_tx(&mut self) {
        let Some(a) = self.state.active_mut() else {
            return;
        };
        let (backend, frame) = (&mut self.backend, &mut self.tx_frame);
        process_chains(&a.mem, &mut a.data.tx, &a.interrupt, |descs| {
            match request::gather_tx(&a.mem, descs, frame) {
                Ok(_) => {
                    if let Err(e) = backend.write_frame(frame) {
                        log::debug!("virtio-net: frame dropped by the host: {e}");
                    }
                }
                Err(e) => log::debug!("virtio-net: bad transmit chain: {e}"),
            }
            0
        });
    }

    /// Moves frames from the backend into receive buffers until either runs out.
    pub(crate) fn process_rx(&mut self) -> RxState {
        let Some(a) = self.state.active_mut() else {
            return RxState::Drained;
        };
        let rx = &mut a.data.rx;
        let mut used = false;
        let state = loop {
            if !avail_ring_sane(&a.mem, rx, &a.interrupt) {
                break RxState::Drained;
            }
            if self.rx_len == 0 {
                match self.backend.read_frame(&mut self.rx_frame) {
                    Ok(n) => self.rx_len = n,
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    Err(e) => {
                        if e.kind() != ErrorKind::WouldBlock {
                            log::warn!("virtio-net: cannot read from the host: {e}");
                        }
                        break RxState::Drained;
                    }
                }
            }
            let Some(chain) = rx.pop_descriptor_chain(&a.mem) else {
                break RxState::NeedBuffers;
            };
            let head = chain.head_index();
            let descs: Vec<_> = chain.take(MAX_CHAIN_LEN).collect();
            let frame = &self.rx_frame[..self.rx_len];
            self.rx_len = 0;
            let len = request::scatter_rx(&a.mem, &descs, frame).unwrap_or_else(|e| {
                log::debug!("virtio-net: receive frame dropped: {e}");
                0
            });
            if !add_used(&a.mem, rx, &a.interrupt, head, len) {
                break RxState::Drained;
            }
            used = true;
        };
        if used {
            notify_used(&a.mem, rx, &a.interrupt);
        }
        state
    }

    fn poll_backend(&mut self, ops: &mut EventOps, on: bool) {
        if on == self.backend_polled {
            return;
        }
        let fd = self.backend.as_raw_fd();
        let r = if on {
            ops.add(Events::with_data_raw(fd, BACKEND_TOKEN, EventSet::IN))
        } else {
            ops.remove(Events::empty_raw(fd))
        };
        match r {
            Ok(()) => self.backend_polled = on,
            Err(e) => log::error!("virtio-net: cannot change polling of the host side: {e}"),
        }
    }

    fn rx_and_poll(&mut self, ops: &mut EventOps) {
        let state = self.process_rx();
        self.poll_backend(ops, state == RxState::Drained && self.state.is_activated());
    }
}

impl MutEventSubscriber for Net {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        match self.activation.handle(&events, ops) {
            Some(Change::Activated) => {
                self.process_tx();
                self.rx_and_poll(ops);
            }
            Some(Change::Deactivated) => self.poll_backend(ops, false),
            Some(Change::Unchanged) => {}
            None => match events.data() {
                BACKEND_TOKEN => self.rx_and_poll(ops),
                t if t == RX_QUEUE as u32 && self.activation.consume_queue_event(t) => {
                    self.rx_and_poll(ops)
                }
                t if t == TX_QUEUE as u32 && self.activation.consume_queue_event(t) => {
                    self.process_tx()
                }
                _ => {}
            },
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        self.activation.init(ops);
    }
}
