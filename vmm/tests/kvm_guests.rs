//! KVM tests with tiny hand-made guests: a few bytes of 64-bit code in an ELF, booted
//! through the real build recipe. They need /dev/kvm and run in about a second.

use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use vmm::bus::BusDevice;
use vmm::config::{SerialOutput, VmConfig};
use vmm::stop::StopReason;
use vmm::testing::tiny_elf;

use test_support::TempDir;

const LOAD_ADDR: u64 = 0x20_0000;

/// Tiny x86-64 assembler for the few instructions these guests use.
#[derive(Default)]
struct Code(Vec<u8>);

impl Code {
    fn bytes(mut self, b: &[u8]) -> Self {
        self.0.extend_from_slice(b);
        self
    }
    /// mov dx, port
    fn dx(self, port: u16) -> Self {
        let p = port.to_le_bytes();
        self.bytes(&[0x66, 0xba, p[0], p[1]])
    }
    /// mov al, v; out dx, al
    fn out_dx(self, v: u8) -> Self {
        self.bytes(&[0xb0, v, 0xee])
    }
    fn print(mut self, s: &str) -> Self {
        self = self.dx(0x3f8);
        for b in s.bytes() {
            self = self.out_dx(b);
        }
        self
    }
    /// mov al, 0xfe; out 0x64, al  — the i8042 reset
    fn reset(self) -> Self {
        self.bytes(&[0xb0, 0xfe, 0xe6, 0x64])
    }
    /// hlt; jmp back to hlt
    fn halt(self) -> Self {
        self.bytes(&[0xf4, 0xeb, 0xfd])
    }
}

struct Guest {
    dir: TempDir,
}

impl Guest {
    fn new(name: &str, code: Code) -> Self {
        let dir = TempDir::named(&format!("vmm-kvm-{name}"));
        std::fs::File::create(dir.join("guest.elf"))
            .unwrap()
            .write_all(&tiny_elf(LOAD_ADDR, &code.0, code.0.len() as u64))
            .unwrap();
        Self { dir }
    }
    fn config(&self) -> VmConfig {
        let mut c = VmConfig::new(self.dir.join("guest.elf"));
        c.mem_mib = 16;
        c.serial = SerialOutput::File(self.serial_path());
        c
    }
    fn serial_path(&self) -> PathBuf {
        self.dir.join("serial.out")
    }
    fn serial(&self) -> String {
        std::fs::read_to_string(self.serial_path()).unwrap_or_default()
    }
}

fn run(config: &VmConfig) -> StopReason {
    let mut vm = vmm::builder::build(config).expect("build");
    vm.run().expect("run")
}

#[test]
fn serial_output_then_i8042_reset_is_a_clean_stop() {
    let g = Guest::new(
        "serial",
        Code::default()
            .print("hello from the guest\n")
            .reset()
            .halt(),
    );
    assert_eq!(run(&g.config()), StopReason::GuestReset);
    assert_eq!(g.serial(), "hello from the guest\n");
}

#[test]
fn two_vcpus_stop_cleanly_while_the_second_waits_for_sipi() {
    let g = Guest::new("smp", Code::default().print("ok").reset().halt());
    let mut c = g.config();
    c.vcpus = 2;
    assert_eq!(run(&c), StopReason::GuestReset);
    assert_eq!(g.serial(), "ok");
}

#[test]
fn port_reads_reach_the_device_and_unmapped_ports_read_all_ones() {
    // Write 'Q' to the UART scratch register (0x3ff), read it back, print it; then read
    // an unmapped port (0x80) and print the byte only if it is 0xff.
    let code = Code::default()
        .dx(0x3ff)
        .out_dx(b'Q')
        .bytes(&[0xb0, 0x00]) // mov al, 0
        .bytes(&[0xec]) // in al, dx
        .bytes(&[0x88, 0xc3]) // mov bl, al
        .dx(0x3f8)
        .bytes(&[0x88, 0xd8, 0xee]) // mov al, bl; out dx, al
        .bytes(&[0xe4, 0x80]) // in al, 0x80
        .bytes(&[0x3c, 0xff, 0x75, 0x03]) // cmp al, 0xff; jne +3
        .out_dx(b'F')
        .reset()
        .halt();
    let g = Guest::new("pio", code);
    assert_eq!(run(&g.config()), StopReason::GuestReset);
    assert_eq!(g.serial(), "QF");
}

#[derive(Default)]
struct Probe {
    writes: Vec<(u64, Vec<u8>)>,
}

impl BusDevice for Probe {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(if offset == 4 { b'Z' } else { 0 });
    }
    fn write(&mut self, offset: u64, data: &[u8]) {
        self.writes.push((offset, data.to_vec()));
    }
}

#[test]
fn mmio_accesses_reach_the_device_at_that_address() {
    // Above the 16 MiB of RAM, so the access exits to the VMM.
    let base: u64 = 0x2000_0000;
    let code = Code::default()
        .bytes(&[0xbb, 0x00, 0x00, 0x00, 0x20]) // mov ebx, 0x20000000
        .bytes(&[0xc7, 0x03, 0x78, 0x56, 0x34, 0x12]) // mov dword [rbx], 0x12345678
        .bytes(&[0x8b, 0x43, 0x04]) // mov eax, [rbx+4]
        .dx(0x3f8)
        .bytes(&[0xee]) // out dx, al
        .bytes(&[0x8b, 0x43, 0x40]) // mov eax, [rbx+0x40]: outside the device
        .bytes(&[0x3c, 0xff, 0x75, 0x03]) // cmp al, 0xff; jne +3
        .out_dx(b'U')
        .reset()
        .halt();
    let g = Guest::new("mmio", code);
    let probe = Arc::new(Mutex::new(Probe::default()));
    let mut vm = vmm::builder::build(&g.config()).unwrap();
    vm.attach_mmio(probe.clone(), base, 0x10).unwrap();
    assert_eq!(vm.run().unwrap(), StopReason::GuestReset);
    assert_eq!(g.serial(), "ZU");
    assert_eq!(
        probe.lock().unwrap().writes,
        vec![(0, 0x1234_5678u32.to_le_bytes().to_vec())]
    );
}

#[test]
fn triple_fault_is_not_a_clean_stop() {
    // ud2 with an empty IDT: #UD cannot be delivered -> #DF -> triple fault.
    let g = Guest::new("triple", Code::default().bytes(&[0x0f, 0x0b]));
    let reason = run(&g.config());
    assert_eq!(reason, StopReason::TripleFault);
    assert!(!reason.is_clean());
}

#[test]
fn panic_banner_on_the_console_makes_the_run_a_panic() {
    let g = Guest::new(
        "panic",
        Code::default()
            .print("Kernel panic - not syncing: test\n")
            .reset()
            .halt(),
    );
    assert_eq!(run(&g.config()), StopReason::GuestPanic);
}

#[test]
fn kernel_larger_than_memory_is_a_clear_error() {
    let g = Guest::new("big", Code::default().halt());
    let mut c = g.config();
    c.mem_mib = 2;
    let err = vmm::builder::build(&c)
        .err()
        .expect("must fail")
        .to_string();
    assert!(err.contains("too small"), "{err}");
}
