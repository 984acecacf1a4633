//! Interrupt lines as devices see them: something they can raise, nothing more.

use std::io;

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// An edge a device raises towards the guest (an IOAPIC pin through a KVM irqfd).
pub trait Interrupt: Send + Sync {
    /// Raises the interrupt once.
    fn trigger(&self) -> io::Result<()>;
}

/// An interrupt delivered by writing to an eventfd registered as a KVM irqfd.
pub struct IrqFd {
    evt: EventFd,
    gsi: u32,
}

impl IrqFd {
    /// A new eventfd for `gsi`; register it with [`IrqFd::eventfd`] on the VM.
    pub fn new(gsi: u32) -> io::Result<Self> {
        Ok(Self {
            evt: EventFd::new(EFD_NONBLOCK)?,
            gsi,
        })
    }

    /// The eventfd to hand to `VmFd::register_irqfd`.
    pub fn eventfd(&self) -> &EventFd {
        &self.evt
    }

    /// The IOAPIC pin.
    pub fn gsi(&self) -> u32 {
        self.gsi
    }
}

impl Interrupt for IrqFd {
    fn trigger(&self) -> io::Result<()> {
        self.evt.write(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trigger_signals_the_eventfd() {
        let irq = IrqFd::new(5).unwrap();
        irq.trigger().unwrap();
        irq.trigger().unwrap();
        assert_eq!(irq.eventfd().read().unwrap(), 2);
        assert_eq!(irq.gsi(), 5);
    }
}
