//! COM1: a 16550A UART (vm-superio) whose output goes to stdout, a file or nowhere, and is
//! watched for the guest kernel's panic banner.

use std::io::{self, Write};
use std::sync::Arc;

use vm_superio::{serial::NoEvents, Serial, Trigger};

use crate::bus::{read_byte_register, write_byte_register, BusDevice};
use crate::devices::interrupt::Interrupt;
use crate::stop::StopSignal;

/// What Linux prints first when it panics.
const PANIC_BANNER: &[u8] = b"Kernel panic - not syncing";
/// Longest line kept for the banner search.
const MAX_LINE: usize = 256;
/// Most console output passed on: a guest that writes without end must not fill the
/// host's disk (the rest is dropped, the panic banner is still watched for).
pub const MAX_LOG_BYTES: u64 = 256 << 20;

/// Raises the serial IRQ.
pub struct SerialIrq(pub Arc<dyn Interrupt>);

impl Trigger for SerialIrq {
    type E = io::Error;

    fn trigger(&self) -> io::Result<()> {
        self.0.trigger()
    }
}

/// The UART's output: forwards bytes and notes a guest panic.
pub struct SerialSink {
    out: Option<Box<dyn Write + Send>>,
    line: Vec<u8>,
    stop: Arc<StopSignal>,
    /// Bytes still to pass on before the output is dropped.
    budget: u64,
}

impl SerialSink {
    /// Output to `out` (`None` discards it).
    pub fn new(out: Option<Box<dyn Write + Send>>, stop: Arc<StopSignal>) -> Self {
        Self {
            out,
            line: Vec::with_capacity(MAX_LINE),
            stop,
            budget: MAX_LOG_BYTES,
        }
    }

    fn watch(&mut self, buf: &[u8]) {
        for &b in buf {
            if b == b'\n' {
                self.line.clear();
                continue;
            }
            if self.line.len() < MAX_LINE {
                self.line.push(b);
            }
            if self.line.ends_with(PANIC_BANNER) {
                self.stop.note_guest_panic();
            }
        }
    }
}

impl Write for SerialSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.watch(buf);
        let n = buf
            .len()
            .min(usize::try_from(self.budget).unwrap_or(usize::MAX));
        if let (Some(out), true) = (self.out.as_mut(), n > 0) {
            self.budget -= n as u64;
            // A closed or full destination must not stall or kill the guest.
            let _ = out.write_all(&buf[..n]);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        match self.out.as_mut() {
            Some(out) => out.flush(),
            None => Ok(()),
        }
    }
}

/// The UART on the port-I/O bus (8 ports from 0x3f8).
pub struct SerialPort(Serial<SerialIrq, NoEvents, SerialSink>);

impl SerialPort {
    /// A UART raising `irq` and writing to `sink`.
    pub fn new(irq: Arc<dyn Interrupt>, sink: SerialSink) -> Self {
        Self(Serial::new(SerialIrq(irq), sink))
    }
}

impl BusDevice for SerialPort {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        read_byte_register(offset, data, |o| self.0.read(o));
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        // Output errors were swallowed by the sink; interrupt errors leave the guest
        // polling, which Linux copes with.
        write_byte_register(offset, data, |o, v| {
            let _ = self.0.write(o, v);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);
    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    struct CountIrq(Mutex<u32>);
    impl Interrupt for CountIrq {
        fn trigger(&self) -> io::Result<()> {
            *self.0.lock().unwrap() += 1;
            Ok(())
        }
    }

    fn port() -> (SerialPort, Shared, Arc<StopSignal>, Arc<CountIrq>) {
        let out = Shared::default();
        let stop = Arc::new(StopSignal::new().unwrap());
        let irq = Arc::new(CountIrq(Mutex::new(0)));
        let sink = SerialSink::new(Some(Box::new(out.clone())), stop.clone());
        (SerialPort::new(irq.clone(), sink), out, stop, irq)
    }

    fn puts(p: &mut SerialPort, s: &[u8]) {
        for b in s {
            p.write(0, &[*b]);
        }
    }

    #[test]
    fn bytes_written_to_thr_reach_the_output() {
        let (mut p, out, stop, _) = port();
        puts(&mut p, b"hello\n");
        assert_eq!(&*out.0.lock().unwrap(), b"hello\n");
        assert_eq!(stop.reason(), None);
        // Line status register says the transmitter is empty.
        let mut lsr = [0u8];
        p.read(5, &mut lsr);
        assert_ne!(lsr[0] & 0x20, 0);
    }

    #[test]
    fn thr_empty_interrupt_is_raised_when_enabled() {
        let (mut p, _, _, irq) = port();
        p.write(1, &[0x02]); // IER: THR empty
        puts(&mut p, b"x");
        assert!(*irq.0.lock().unwrap() >= 1);
    }

    #[test]
    fn panic_banner_is_noticed_even_split_across_writes() {
        let (mut p, _, stop, _) = port();
        puts(&mut p, b"[  1.0] Kernel pan");
        assert_eq!(stop.reason(), None);
        puts(&mut p, b"ic - not syncing: VFS\n");
        stop.request(crate::stop::StopReason::GuestReset);
        assert_eq!(stop.reason(), Some(crate::stop::StopReason::GuestPanic));
    }

    #[test]
    fn output_past_the_log_budget_is_dropped_but_still_watched() {
        let out = Shared::default();
        let stop = Arc::new(StopSignal::new().unwrap());
        let mut sink = SerialSink::new(Some(Box::new(out.clone())), stop.clone());
        sink.budget = 4;
        sink.write_all(b"ab").unwrap();
        sink.write_all(b"cdef\nKernel panic - not syncing").unwrap();
        assert_eq!(&*out.0.lock().unwrap(), b"abcd");
        stop.request(crate::stop::StopReason::GuestReset);
        assert_eq!(stop.reason(), Some(crate::stop::StopReason::GuestPanic));
    }

    #[test]
    fn odd_accesses_do_not_panic() {
        let (mut p, _, _, _) = port();
        let mut buf = [0u8; 4];
        p.read(u64::MAX, &mut buf);
        p.write(300, &[1, 2]);
        p.write(0, &[]);
        p.read(0, &mut []);
    }
}
