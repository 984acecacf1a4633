//! virtio-vsock on the event loop: queue notifications and the backend's fd drive the
//! muxer; this module only moves packets between virtqueues and the muxer.

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use log::{debug, error};
use virtio_queue::desc::split::Descriptor;
use virtio_queue::{QueueOwnedT, QueueT};

use super::packet::{read_tx_header, read_tx_packet, RxBuffer};
use super::{Vsock, VsockBackend, EVENT_QUEUE, RX_QUEUE, TX_QUEUE};
use crate::devices::virtio::activation::{Change, FIRST_BACKEND_TOKEN};
use crate::devices::virtio::{add_used, avail_ring_sane, notify_used, MAX_CHAIN_LEN};

const BACKEND_TOKEN: u32 = FIRST_BACKEND_TOKEN;

impl<B: VsockBackend> Vsock<B> {
    /// Hands every packet the driver queued on TX to the muxer.
    ///
    /// A chain that is not a valid packet is returned unused; if its header could be read,
    /// the connection it names is reset (its byte stream would otherwise silently lose
    /// data).
    pub(crate) fn process_tx(&mut self) {
        let Some(a) = self.state.active_mut() else {
            return;
        };
        if !avail_ring_sane(&a.mem, &a.data.tx, &a.interrupt) {
            return;
        }
        let mut used_any = false;
        while let Some(chain) = a.data.tx.pop_descriptor_chain(&a.mem) {
            let head = chain.head_index();
            let descs: Vec<Descriptor> = chain.take(MAX_CHAIN_LEN + 1).collect();
            if descs.len() > MAX_CHAIN_LEN {
                debug!("vsock: TX chain longer than {MAX_CHAIN_LEN}, dropped");
            } else {
                match read_tx_packet(&a.mem, descs.iter().copied(), &mut self.pkt_buf) {
                    Ok(hdr) => {
                        let len = hdr.len as usize;
                        self.muxer.send_pkt(&hdr, &self.pkt_buf[..len]);
                    }
                    Err(e) => {
                        debug!("vsock: bad TX packet: {e}");
                        if let Ok(hdr) = read_tx_header(&a.mem, descs.iter().copied()) {
                            self.muxer.guest_error(&hdr);
                        }
                    }
                }
            }
            if !add_used(&a.mem, &mut a.data.tx, &a.interrupt, head, 0) {
                return;
            }
            used_any = true;
        }
        if used_any {
            notify_used(&a.mem, &mut a.data.tx, &a.interrupt);
        }
    }

    /// Fills RX buffers with what the muxer has for the guest, as long as both last.
    pub(crate) fn process_rx(&mut self) {
        if self.reset_pending {
            return;
        }
        let Some(a) = self.state.active_mut() else {
            return;
        };
        if !self.muxer.has_pending_rx() || !avail_ring_sane(&a.mem, &a.data.rx, &a.interrupt) {
            return;
        }
        let mut used_any = false;
        while self.muxer.has_pending_rx() {
            let Some(chain) = a.data.rx.pop_descriptor_chain(&a.mem) else {
                break;
            };
            let head = chain.head_index();
            let descs: Vec<Descriptor> = chain.take(MAX_CHAIN_LEN + 1).collect();
            let rxbuf = if descs.len() > MAX_CHAIN_LEN {
                debug!("vsock: RX chain longer than {MAX_CHAIN_LEN}, dropped");
                None
            } else {
                RxBuffer::new(&a.mem, descs)
                    .map_err(|e| debug!("vsock: bad RX buffer dropped: {e}"))
                    .ok()
            };
            let mut len = 0;
            if let Some(rxbuf) = rxbuf {
                let cap = rxbuf.data_capacity();
                let Some((hdr, n)) = self.muxer.recv_pkt(&mut self.pkt_buf[..cap]) else {
                    // Nothing after all (e.g. the host had no data yet): keep the buffer.
                    a.data.rx.go_to_previous_position();
                    break;
                };
                // The buffer was checked to be in guest RAM and large enough, so this
                // cannot fail short of a VMM bug; the packet is then lost, not the device.
                len = rxbuf
                    .write(&a.mem, &hdr, &self.pkt_buf[..n])
                    .unwrap_or_else(|e| {
                        error!("vsock: cannot write an RX packet: {e}");
                        0
                    });
            }
            if !add_used(&a.mem, &mut a.data.rx, &a.interrupt, head, len) {
                return;
            }
            used_any = true;
        }
        if used_any {
            notify_used(&a.mem, &mut a.data.rx, &a.interrupt);
        }
    }

    /// Host-side activity: let the muxer handle it, then deliver what it produced.
    pub(crate) fn process_backend(&mut self) {
        self.muxer.process_backend();
        self.process_rx();
    }
}

impl<B: VsockBackend> MutEventSubscriber for Vsock<B> {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        match self.activation.handle(&events, ops) {
            // Packets may have been queued before the eventfds were polled.
            Some(Change::Activated) => {
                self.process_tx();
                self.process_rx();
            }
            Some(_) => {}
            None => match events.data() {
                BACKEND_TOKEN => self.process_backend(),
                q if q == TX_QUEUE as u32 && self.activation.consume_queue_event(q) => {
                    self.process_tx();
                    // Replies (RESPONSE, RST, credit) and freed room on RX.
                    self.process_rx();
                }
                q if q == RX_QUEUE as u32 && self.activation.consume_queue_event(q) => {
                    self.process_rx()
                }
                // The driver re-posted its event buffer: it has handled the reset.
                q if q == EVENT_QUEUE as u32
                    && self.activation.consume_queue_event(q)
                    && std::mem::take(&mut self.reset_pending) =>
                {
                    self.process_rx()
                }
                _ => {}
            },
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        self.activation.init(ops);
        // Polled from the start, also before activation: host peers may connect at any
        // time, and an unread level-triggered fd would spin the loop.
        let fd = self.muxer.backend().as_raw_fd();
        if let Err(e) = ops.add(Events::with_data_raw(fd, BACKEND_TOKEN, EventSet::IN)) {
            error!("vsock: cannot poll the backend: {e}");
        }
    }
}
