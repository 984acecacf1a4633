//! The i8042 keyboard controller, reduced to what Linux uses to reset the machine
//! (`reboot=k`: command 0xFE on port 0x64). A reset ends the VM cleanly.

use std::sync::Arc;

use vm_superio::{I8042Device, Trigger};

use crate::bus::{read_byte_register, write_byte_register, BusDevice};
use crate::stop::{StopReason, StopSignal};

/// Turns the controller's CPU-reset command into a clean VM stop.
pub struct ResetToStop(pub Arc<StopSignal>);

impl Trigger for ResetToStop {
    type E = std::convert::Infallible;

    fn trigger(&self) -> Result<(), Self::E> {
        self.0.request(StopReason::GuestReset);
        Ok(())
    }
}

/// The i8042 on the port-I/O bus at 0x60, 5 ports wide (0x60 data .. 0x64 command).
pub struct I8042(I8042Device<ResetToStop>);

impl I8042 {
    /// A controller whose reset command raises `stop`.
    pub fn new(stop: Arc<StopSignal>) -> Self {
        Self(I8042Device::new(ResetToStop(stop)))
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        read_byte_register(offset, data, |o| self.0.read(o));
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        // The trigger cannot fail.
        write_byte_register(offset, data, |o, v| {
            let _ = self.0.write(o, v);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_command_stops_the_vm_cleanly() {
        let stop = Arc::new(StopSignal::new().unwrap());
        let mut dev = I8042::new(stop.clone());
        let mut status = [0xffu8];
        dev.read(4, &mut status);
        assert_eq!(status[0] & 0x2, 0, "input buffer must read empty");
        dev.write(0, &[0xfe]);
        dev.write(4, &[0xfe, 0]);
        assert!(!stop.is_requested());
        dev.write(4, &[0xfe]);
        assert_eq!(stop.reason(), Some(StopReason::GuestReset));
    }
}
