//! virtio-rng on the event loop.

use event_manager::{EventOps, Events, MutEventSubscriber};

use super::{request, Rng};
use crate::devices::virtio::activation::Change;
use crate::devices::virtio::process_chains;

impl Rng {
    /// Answers every request the driver made available.
    pub(crate) fn process_queue(&mut self) {
        if let Some(a) = self.state.active_mut() {
            process_chains(&a.mem, &mut a.data, &a.interrupt, |descs| {
                request::handle(&a.mem, descs)
            });
        }
    }
}

impl MutEventSubscriber for Rng {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        match self.activation.handle(&events, ops) {
            Some(Change::Activated) => self.process_queue(),
            Some(_) => {}
            None => {
                if events.data() == 0 && self.activation.consume_queue_event(0) {
                    self.process_queue();
                }
            }
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        self.activation.init(ops);
    }
}
