//! virtio-rng: entropy from the host's `getrandom(2)`.
//!
//! One queue of device-writable buffers; each is filled (up to [`request::MAX_REQUEST_BYTES`]
//! per chain) and returned.

pub mod event_handler;
pub mod request;

use virtio_bindings::virtio_ids::VIRTIO_ID_RNG;
use virtio_queue::Queue;

use super::activation::Activation;
use super::device::DeviceState;
use super::{ActivateContext, ActivateError, VirtioDevice, VIRTIO_F_VERSION_1};

/// Entries in the request queue.
pub const QUEUE_SIZE: u16 = 64;

/// Errors creating an entropy device.
#[derive(Debug, thiserror::Error)]
pub enum RngError {
    #[error("cannot create the entropy device's eventfd: {0}")]
    EventFd(std::io::Error),
}

/// A virtio entropy device.
pub struct Rng {
    activation: Activation,
    state: DeviceState<Queue>,
}

impl Rng {
    /// A new entropy device.
    pub fn new() -> Result<Self, RngError> {
        Ok(Self {
            activation: Activation::new().map_err(RngError::EventFd)?,
            state: DeviceState::Inactive,
        })
    }
}

impl VirtioDevice for Rng {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_RNG
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn avail_features(&self) -> u64 {
        VIRTIO_F_VERSION_1
    }

    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn activate(&mut self, mut ctx: ActivateContext) -> Result<(), ActivateError> {
        let [queue] = ctx.take_queues()?;
        let evts = self.state.activate(ctx, queue);
        self.activation.activate(evts)
    }

    fn reset(&mut self) {
        self.state.reset();
        self.activation.deactivate();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::test_utils::{
        activate_ctx, test_interrupt, test_mem, TestQueue, WRITE,
    };
    use vm_memory::{Bytes, GuestAddress};

    #[test]
    fn fills_writable_buffers() {
        let mem = test_mem();
        let mut rng = Rng::new().unwrap();
        let mut q = TestQueue::new(&mem, 0x10_0000, 16);
        let (interrupt, irq) = test_interrupt();
        rng.activate(activate_ctx(&mem, &[&q], interrupt, VIRTIO_F_VERSION_1))
            .unwrap();
        q.add_chain(&[(0x1000, 64, WRITE), (0x2000, 64, WRITE)]);
        q.add_chain(&[(0x3000, 16, 0)]); // readable: refused
        q.add_chain(&[(0x3000, 0x100_0000, WRITE)]); // past the end of RAM: refused
        q.add_chain(&[(0x4000, 1 << 20, WRITE)]); // capped
        rng.process_queue();
        let used = q.used();
        assert_eq!(used.len(), 4);
        assert_eq!(used[0].1, 128);
        assert_eq!(used[1].1, 0);
        assert_eq!(used[2].1, 0);
        assert_eq!(used[3].1, request::MAX_REQUEST_BYTES as u32);
        let mut buf = [0u8; 128];
        mem.read_slice(&mut buf[..64], GuestAddress(0x1000))
            .unwrap();
        mem.read_slice(&mut buf[64..], GuestAddress(0x2000))
            .unwrap();
        assert!(buf.iter().filter(|&&b| b == 0).count() < 16);
        assert_eq!(irq.eventfd().read().unwrap(), 1);
    }
}
