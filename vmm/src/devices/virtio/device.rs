//! The one device-state type every virtio device holds: inactive until the driver sets
//! `DRIVER_OK`, then activated with what the activation gave it.
//!
//! What an activation gives every device (guest memory, its interrupt, the features the driver
//! accepted) is held here once; each device adds its own part `T` (its queues, and whatever
//! else it needs while active). A snapshot of a device saves its `DeviceState`: inactive, or
//! the acked features plus the device's own part.

use std::sync::Arc;

use vmm_sys_util::eventfd::EventFd;

use super::{ActivateContext, VirtioInterrupt};
use crate::memory::GuestMemory;

/// What an activated device holds.
pub struct ActiveState<T> {
    /// Guest RAM, for the rings and buffers.
    pub mem: GuestMemory,
    /// How to tell the driver about used buffers and config changes.
    pub interrupt: Arc<VirtioInterrupt>,
    /// The features the driver accepted.
    pub acked_features: u64,
    /// The device's own part (its queues, ...).
    pub data: T,
}

/// A virtio device's state, from the transport's point of view.
#[derive(Default)]
pub enum DeviceState<T> {
    /// Never activated, or reset since.
    #[default]
    Inactive,
    /// The driver set `DRIVER_OK` and the device accepted its queues.
    Activated(ActiveState<T>),
}

impl<T> DeviceState<T> {
    /// Becomes active with `ctx`'s memory, interrupt and features, plus `data` (usually the
    /// queues the device took out of `ctx`). Returns `ctx`'s queue eventfds, for the device's
    /// [`Activation`](super::activation::Activation).
    pub fn activate(&mut self, ctx: ActivateContext, data: T) -> Vec<EventFd> {
        *self = Self::Activated(ActiveState {
            mem: ctx.mem,
            interrupt: ctx.interrupt,
            acked_features: ctx.acked_features,
            data,
        });
        ctx.queue_evts
    }

    /// Becomes inactive; returns what the device held, if it was active.
    pub fn reset(&mut self) -> Option<ActiveState<T>> {
        match std::mem::take(self) {
            Self::Activated(active) => Some(active),
            Self::Inactive => None,
        }
    }

    /// Whether the device is active.
    pub fn is_activated(&self) -> bool {
        matches!(self, Self::Activated(_))
    }

    /// The active state, if any.
    pub fn active(&self) -> Option<&ActiveState<T>> {
        match self {
            Self::Activated(active) => Some(active),
            Self::Inactive => None,
        }
    }

    /// The active state, if any, mutably.
    pub fn active_mut(&mut self) -> Option<&mut ActiveState<T>> {
        match self {
            Self::Activated(active) => Some(active),
            Self::Inactive => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::test_utils::{activate_ctx, test_interrupt, test_mem, TestQueue};

    #[test]
    fn activate_then_reset() {
        let mem = test_mem();
        let q = TestQueue::new(&mem, 0x10_0000, 16);
        let (interrupt, _irq) = test_interrupt();
        let mut state = DeviceState::<u32>::default();
        assert!(!state.is_activated());
        assert!(state.active().is_none());
        assert!(state.reset().is_none());

        let evts = state.activate(activate_ctx(&mem, &[&q, &q], interrupt, 7), 42);
        assert_eq!(evts.len(), 2);
        assert!(state.is_activated());
        let active = state.active_mut().unwrap();
        assert_eq!((active.acked_features, active.data), (7, 42));
        active.data = 43;
        assert_eq!(state.reset().map(|a| a.data), Some(43));
        assert!(!state.is_activated());
    }
}
