//! What to do with each vCPU exit: a pure function of the exit and the I/O buses, tested
//! without running KVM.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::stop::StopReason;

/// KVM_SYSTEM_EVENT types (linux/kvm.h).
pub const KVM_SYSTEM_EVENT_SHUTDOWN: u32 = 1;
pub const KVM_SYSTEM_EVENT_RESET: u32 = 2;
pub const KVM_SYSTEM_EVENT_CRASH: u32 = 3;

/// A vCPU exit, in the VMM's own terms (borrowing KVM's data buffers).
#[derive(Debug)]
pub enum Exit<'a> {
    IoIn(u16, &'a mut [u8]),
    IoOut(u16, &'a [u8]),
    MmioRead(u64, &'a mut [u8]),
    MmioWrite(u64, &'a [u8]),
    Hlt,
    Shutdown,
    SystemEvent(u32),
    /// KVM_EXIT_INTERNAL_ERROR (the suberror is read when diagnosing).
    InternalError,
    /// KVM_EXIT_FAIL_ENTRY with the hardware reason.
    FailEntry(u64),
    /// KVM_RUN returned EINTR/EAGAIN (a signal kicked us out).
    Interrupted,
    /// Any other exit, by name.
    Other(&'static str),
}

/// What the vCPU loop does next.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    /// Enter the guest again.
    Resume,
    /// Stop the VM for this reason.
    Stop(StopReason),
    /// Stop after collecting registers and code bytes: KVM could not run an instruction.
    Diagnose,
}

/// Port-I/O and MMIO dispatch as the exit handler sees it.
pub trait IoDispatch {
    /// Returns false if nothing is mapped at `port`.
    fn pio_read(&self, port: u16, data: &mut [u8]) -> bool;
    fn pio_write(&self, port: u16, data: &[u8]) -> bool;
    fn mmio_read(&self, addr: u64, data: &mut [u8]) -> bool;
    fn mmio_write(&self, addr: u64, data: &[u8]) -> bool;
}

/// Maps an exit to an action, performing the I/O it carries.
///
/// Reads from unmapped ports or MMIO return all ones, as an empty ISA/PCI bus does, so the
/// guest's device probes see "nothing here"; writes to them are dropped.
pub fn handle_exit(exit: Exit, io: &impl IoDispatch) -> Action {
    match exit {
        Exit::IoIn(port, data) => {
            if !io.pio_read(port, data) {
                data.fill(0xff);
            }
            Action::Resume
        }
        Exit::IoOut(port, data) => {
            io.pio_write(port, data);
            Action::Resume
        }
        Exit::MmioRead(addr, data) => {
            if !io.mmio_read(addr, data) {
                data.fill(0xff);
            }
            Action::Resume
        }
        Exit::MmioWrite(addr, data) => {
            io.mmio_write(addr, data);
            Action::Resume
        }
        Exit::Interrupted => Action::Resume,
        // With the in-kernel irqchip HLT is handled by KVM; seeing it means a vCPU halted
        // for good (e.g. a guest power-off without ACPI).
        Exit::Hlt => Action::Stop(StopReason::GuestPowerOff),
        Exit::Shutdown => Action::Stop(StopReason::TripleFault),
        Exit::SystemEvent(KVM_SYSTEM_EVENT_SHUTDOWN | KVM_SYSTEM_EVENT_RESET) => {
            Action::Stop(StopReason::GuestPowerOff)
        }
        Exit::SystemEvent(KVM_SYSTEM_EVENT_CRASH) => Action::Stop(StopReason::GuestPanic),
        Exit::SystemEvent(t) => Action::Stop(StopReason::GuestFault(format!(
            "unknown KVM system event {t}"
        ))),
        Exit::InternalError => Action::Diagnose,
        Exit::FailEntry(reason) => Action::Stop(StopReason::GuestFault(format!(
            "KVM could not enter the guest (hardware reason {reason:#x})"
        ))),
        Exit::Other(name) => Action::Stop(StopReason::GuestFault(format!(
            "unexpected vCPU exit {name}"
        ))),
    }
}

pub use vmm_api::api::ExitCounts;

/// One vCPU's exit counters: written by its own thread only (relaxed, uncontended),
/// read by the control API.
#[derive(Debug, Default)]
pub struct ExitCounters([AtomicU64; 11]);

impl ExitCounters {
    /// Counts `exit`.
    pub fn record(&self, exit: &Exit) {
        let i = match exit {
            Exit::IoIn(..) => 0,
            Exit::IoOut(..) => 1,
            Exit::MmioRead(..) => 2,
            Exit::MmioWrite(..) => 3,
            Exit::Hlt => 4,
            Exit::Interrupted => 5,
            Exit::Shutdown => 6,
            Exit::SystemEvent(_) => 7,
            Exit::InternalError => 8,
            Exit::FailEntry(_) => 9,
            Exit::Other(_) => 10,
        };
        self.0[i].fetch_add(1, Ordering::Relaxed);
    }

    /// The counts so far.
    pub fn snapshot(&self) -> ExitCounts {
        let c = |i: usize| self.0[i].load(Ordering::Relaxed);
        ExitCounts {
            io_in: c(0),
            io_out: c(1),
            mmio_read: c(2),
            mmio_write: c(3),
            hlt: c(4),
            interrupted: c(5),
            shutdown: c(6),
            system_event: c(7),
            internal_error: c(8),
            fail_entry: c(9),
            other: c(10),
        }
    }
}

/// Names KVM's internal-error suberrors.
pub fn internal_error_name(suberror: u32) -> &'static str {
    match suberror {
        1 => "emulation failure",
        2 => "simultaneous exception",
        3 => "delivery event failure",
        4 => "unexpected exit reason",
        _ => "unknown",
    }
}

/// The one-line message for an internal error, with the bytes at RIP when they could be read.
pub fn describe_internal_error(suberror: u32, rip: u64, code: Option<&[u8]>) -> String {
    let bytes = code
        .map(|c| {
            c.iter()
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_else(|| "unreadable".into());
    format!(
        "KVM internal error {suberror} ({}) at RIP {rip:#x}, code bytes: {bytes} (look the RIP up in the kernel's System.map)",
        internal_error_name(suberror)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    #[derive(Default)]
    struct FakeIo {
        pio_writes: RefCell<Vec<(u16, Vec<u8>)>>,
        mmio_writes: RefCell<Vec<(u64, Vec<u8>)>>,
    }
    impl IoDispatch for FakeIo {
        fn pio_read(&self, port: u16, data: &mut [u8]) -> bool {
            if port == 0x3fd {
                data.fill(0x60);
                return true;
            }
            false
        }
        fn pio_write(&self, port: u16, data: &[u8]) -> bool {
            self.pio_writes.borrow_mut().push((port, data.to_vec()));
            true
        }
        fn mmio_read(&self, addr: u64, data: &mut [u8]) -> bool {
            if addr == 0xd000_0000 {
                data.copy_from_slice(&0x7472_6976u32.to_le_bytes()[..data.len()]);
                return true;
            }
            false
        }
        fn mmio_write(&self, addr: u64, data: &[u8]) -> bool {
            self.mmio_writes.borrow_mut().push((addr, data.to_vec()));
            true
        }
    }

    #[test]
    fn pio_reaches_the_bus_and_unmapped_reads_float_high() {
        let io = FakeIo::default();
        let mut b = [0u8; 1];
        assert_eq!(handle_exit(Exit::IoIn(0x3fd, &mut b), &io), Action::Resume);
        assert_eq!(b, [0x60]);
        let mut w = [0u8; 2];
        assert_eq!(handle_exit(Exit::IoIn(0x70, &mut w), &io), Action::Resume);
        assert_eq!(w, [0xff, 0xff]);
        handle_exit(Exit::IoOut(0x3f8, b"A"), &io);
        assert_eq!(io.pio_writes.borrow()[0], (0x3f8, b"A".to_vec()));
    }

    #[test]
    fn mmio_reaches_the_bus() {
        let io = FakeIo::default();
        let mut b = [0u8; 4];
        handle_exit(Exit::MmioRead(0xd000_0000, &mut b), &io);
        assert_eq!(u32::from_le_bytes(b), 0x7472_6976);
        handle_exit(Exit::MmioRead(0xe000_0000, &mut b), &io);
        assert_eq!(b, [0xff; 4]);
        handle_exit(Exit::MmioWrite(0xd000_0050, &[1, 0, 0, 0]), &io);
        assert_eq!(io.mmio_writes.borrow().len(), 1);
    }

    #[test]
    fn ends_of_the_guest() {
        let io = FakeIo::default();
        assert_eq!(
            handle_exit(Exit::Shutdown, &io),
            Action::Stop(StopReason::TripleFault)
        );
        assert_eq!(
            handle_exit(Exit::SystemEvent(KVM_SYSTEM_EVENT_RESET), &io),
            Action::Stop(StopReason::GuestPowerOff)
        );
        assert_eq!(
            handle_exit(Exit::SystemEvent(KVM_SYSTEM_EVENT_CRASH), &io),
            Action::Stop(StopReason::GuestPanic)
        );
        assert_eq!(handle_exit(Exit::InternalError, &io), Action::Diagnose);
        assert!(matches!(
            handle_exit(Exit::FailEntry(0x80000021), &io),
            Action::Stop(StopReason::GuestFault(m)) if m.contains("0x80000021")
        ));
        assert!(matches!(
            handle_exit(Exit::Other("KVM_EXIT_DCR"), &io),
            Action::Stop(StopReason::GuestFault(_))
        ));
        assert_eq!(handle_exit(Exit::Interrupted, &io), Action::Resume);
    }

    #[test]
    fn exit_counters_count_each_kind_and_sum() {
        let c = ExitCounters::default();
        let mut b = [0u8; 1];
        c.record(&Exit::IoOut(0x80, &[1]));
        c.record(&Exit::IoOut(0x80, &[2]));
        c.record(&Exit::IoIn(0x80, &mut b));
        c.record(&Exit::MmioWrite(0xd000_0000, &[0]));
        c.record(&Exit::Interrupted);
        c.record(&Exit::Other("x"));
        let s = c.snapshot();
        assert_eq!((s.io_out, s.io_in, s.mmio_write, s.mmio_read), (2, 1, 1, 0));
        assert_eq!((s.interrupted, s.other, s.hlt), (1, 1, 0));
        let mut total = s.clone();
        total.add(&s);
        assert_eq!((total.io_out, total.interrupted), (4, 2));
    }

    #[test]
    fn internal_error_message_shows_code_bytes() {
        let m = describe_internal_error(1, 0xffff_ffff_8100_0000, Some(&[0x0f, 0x01, 0xca]));
        assert!(m.contains("emulation failure"), "{m}");
        assert!(m.contains("0xffffffff81000000"), "{m}");
        assert!(m.contains("0f 01 ca"), "{m}");
        assert!(describe_internal_error(9, 0, None).contains("unreadable"));
    }
}
