//! virtio-console on the event loop: transmit notifications, receive buffers, host input.

use std::io::{ErrorKind, Read};

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use virtio_queue::QueueT;

use super::{request, Console, MAX_PENDING_INPUT, RX_QUEUE, TX_QUEUE};
use crate::devices::virtio::activation::{Change, FIRST_BACKEND_TOKEN};
use crate::devices::virtio::{add_used, avail_ring_sane, notify_used, process_chains};

/// `Events::data()` of the host input fd.
const INPUT_TOKEN: u32 = FIRST_BACKEND_TOKEN;

impl Console {
    /// Writes out everything the guest queued for output.
    pub(crate) fn process_tx(&mut self) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let out = &mut self.output;
        process_chains(&active.mem, &mut active.tx, &active.interrupt, |descs| {
            request::transmit(&active.mem, descs, out.as_mut())
        });
    }

    /// Moves pending input into the guest's receive buffers, as far as they go.
    pub(crate) fn process_rx(&mut self) {
        let Some(a) = self.active.as_mut() else {
            return;
        };
        if !avail_ring_sane(&a.mem, &a.rx, &a.interrupt) {
            return;
        }
        let mut used = false;
        while !self.pending_input.is_empty() {
            let Some(chain) = a.rx.pop_descriptor_chain(&a.mem) else {
                break;
            };
            let head = chain.head_index();
            let descs: Vec<_> = chain.take(crate::devices::virtio::MAX_CHAIN_LEN).collect();
            let n = request::receive(&a.mem, &descs, &mut self.pending_input);
            if !add_used(&a.mem, &mut a.rx, &a.interrupt, head, n) {
                return;
            }
            used = true;
        }
        if used {
            notify_used(&a.mem, &mut a.rx, &a.interrupt);
        }
    }

    /// Reads what the host input has, keeping at most `MAX_PENDING_INPUT` bytes.
    pub(crate) fn read_input(&mut self, ops: &mut EventOps) {
        let Some(input) = self.input.as_mut() else {
            return;
        };
        let mut buf = [0u8; 4096];
        match input.read(&mut buf) {
            Ok(0) => {
                log::debug!("virtio-console: host input closed");
                self.stop_polling_input(ops);
                self.input = None;
            }
            Ok(n) => {
                let room = MAX_PENDING_INPUT.saturating_sub(self.pending_input.len());
                if n > room {
                    log::warn!(
                        "virtio-console: guest not reading, {} input bytes dropped",
                        n - room
                    );
                }
                self.pending_input.extend(&buf[..n.min(room)]);
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {}
            Err(e) => {
                log::warn!("virtio-console: host input failed, closing it: {e}");
                self.stop_polling_input(ops);
                self.input = None;
            }
        }
    }

    fn start_polling_input(&mut self, ops: &mut EventOps) {
        if let (Some(input), false) = (&self.input, self.input_polled) {
            let ev = Events::with_data_raw(input.as_raw_fd(), INPUT_TOKEN, EventSet::IN);
            match ops.add(ev) {
                Ok(()) => self.input_polled = true,
                Err(e) => log::error!("virtio-console: cannot poll host input: {e}"),
            }
        }
    }

    fn stop_polling_input(&mut self, ops: &mut EventOps) {
        if let (Some(input), true) = (&self.input, self.input_polled) {
            let _ = ops.remove(Events::empty_raw(input.as_raw_fd()));
            self.input_polled = false;
        }
    }
}

impl MutEventSubscriber for Console {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        match self.activation.handle(&events, ops) {
            Some(Change::Activated) => {
                self.start_polling_input(ops);
                self.process_tx();
                self.process_rx();
            }
            Some(Change::Deactivated) => self.stop_polling_input(ops),
            Some(Change::Unchanged) => {}
            None => match events.data() {
                INPUT_TOKEN => {
                    self.read_input(ops);
                    self.process_rx();
                }
                t if t == RX_QUEUE as u32 && self.activation.consume_queue_event(t) => {
                    self.process_rx()
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
