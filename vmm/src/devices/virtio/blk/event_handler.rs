//! virtio-blk on the event loop: queue notifications drive request processing.

use event_manager::{EventOps, Events, MutEventSubscriber};

use super::{request, Block};
use crate::devices::virtio::activation::Change;
use crate::devices::virtio::process_chains;

impl Block {
    /// Processes every request the driver made available.
    pub(crate) fn process_queue(&mut self) {
        let Some(a) = self.state.active_mut() else {
            return;
        };
        let disk = &mut self.disk;
        process_chains(&a.mem, &mut a.data, &a.interrupt, |descs| {
            request::handle(&a.mem, descs, disk)
        });
    }
}

impl MutEventSubscriber for Block {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        match self.activation.handle(&events, ops) {
            // Requests may have been queued before the eventfd was polled.
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
