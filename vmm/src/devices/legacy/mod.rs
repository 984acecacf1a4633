//! Legacy PC devices: the 8250 serial console, the i8042 reset line and the CMOS clock.

pub mod cmos;
pub mod i8042;
pub mod serial;
