//! Tiny hand-made guests: a few bytes of 64-bit code, loaded where a kernel would be
//! (the vmm's `testing::tiny_elf` wraps them in an ELF).

/// `mov dx, 0x510; xor eax, eax; 1: inc eax; out dx, eax; jmp 1b`: counts on port 0x510
/// until stopped. Where nothing is attached at 0x510, every write is an I/O exit the VMM
/// drops.
pub const COUNTING: &[u8] = &[
    0x66, 0xba, 0x10, 0x05, 0x31, 0xc0, 0xff, 0xc0, 0xef, 0xeb, 0xfb,
];

/// The port [`COUNTING`] writes to.
pub const COUNTING_PORT: u16 = 0x510;

/// `ud2` with no IDT: a triple fault.
pub const CRASHING: &[u8] = &[0x0f, 0x0b];
