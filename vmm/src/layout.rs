//! Every guest-physical address the VMM uses on x86_64, in one place.
//!
//! ```text
//! 0x0000_0000  real-mode IVT / BIOS data (unused)
//! 0x0000_0500  boot GDT                    (BOOT_GDT_START)
//! 0x0000_0520  boot IDT (empty)            (BOOT_IDT_START)
//! 0x0000_6000  setup_data: RNG seed        (SETUP_DATA_START)
//! 0x0000_7000  zero page / boot_params     (ZERO_PAGE_START)
//! 0x0000_8ff0  initial stack pointer       (BOOT_STACK_POINTER)
//! 0x0000_9000  PML4, 0xa000 PDPTE, 0xb000 PDE (identity map of the first 1 GiB)
//! 0x0002_0000  kernel command line         (CMDLINE_START)
//! 0x0009_fc00  EBDA start: not RAM from here to 1 MiB; the MP table lives here
//! 0x0010_0000  kernel load address         (HIMEM_START)
//! ...          RAM; the initrd is placed page-aligned at its top
//! 0xd000_0000  MMIO gap (768 MiB): virtio-mmio windows from here
//! 0xfec0_0000  IOAPIC, 0xfee0_0000 LAPIC (inside the gap)
//! 0xfffb_c000  KVM identity-map page, 0xfffb_d000 KVM TSS (3 pages)
//! 0x1_0000_0000 RAM above 4 GiB when the VM has more than the gap start
//! ```

/// GDT used for the 64-bit entry.
pub const BOOT_GDT_START: u64 = 0x500;
/// Empty IDT loaded at entry.
pub const BOOT_IDT_START: u64 = 0x520;
/// The boot protocol's `setup_data` list (one RNG-seed entry).
pub const SETUP_DATA_START: u64 = 0x6000;
/// Bytes reserved for `setup_data` entries.
pub const SETUP_DATA_MAX_SIZE: u64 = 0x1000;
/// `struct boot_params` ("zero page").
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Initial RSP/RBP.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Boot page tables: PML4, one PDPT, one PD of 2 MiB pages (first 1 GiB identity-mapped).
pub const PML4_START: u64 = 0x9000;
/// Page directory pointer table.
pub const PDPTE_START: u64 = 0xa000;
/// Page directory.
pub const PDE_START: u64 = 0xb000;
/// Kernel command line.
pub const CMDLINE_START: u64 = 0x20000;
/// Longest command line x86 Linux accepts (COMMAND_LINE_SIZE), NUL included.
pub const CMDLINE_MAX_SIZE: usize = 2048;
/// Extended BIOS data area: the low RAM region ends here.
pub const EBDA_START: u64 = 0x9fc00;
/// The MP table (floating pointer, then the configuration table): the last KiB of base
/// memory, where Linux looks for it; it may run on into the legacy hole below 1 MiB.
pub const MPTABLE_START: u64 = EBDA_START;
/// The MP table must end here.
pub const MPTABLE_MAX_END: u64 = HIMEM_START;
/// Where the kernel is loaded (1 MiB).
pub const HIMEM_START: u64 = 0x10_0000;
/// First address of the 32-bit MMIO gap.
pub const MMIO_GAP_START: u64 = 0xd000_0000;
/// The IOAPIC's register window (in the MMIO gap).
pub const IOAPIC_START: u64 = 0xfec0_0000;
/// The local APICs' register window.
pub const LAPIC_START: u64 = 0xfee0_0000;
/// First address past 32 bits.
pub const FIRST_ADDR_PAST_32BITS: u64 = 1 << 32;
/// Size of the MMIO gap.
pub const MMIO_GAP_SIZE: u64 = FIRST_ADDR_PAST_32BITS - MMIO_GAP_START;
/// Each virtio-mmio device gets one window of this size.
pub const VIRTIO_MMIO_WINDOW: u64 = 0x1000;
/// Number of virtio-mmio windows we hand out (placed from MMIO_GAP_START); defined with the
/// config that is validated against it.
pub const VIRTIO_MMIO_MAX_DEVICES: u64 = vmm_api::config::VIRTIO_MMIO_MAX_DEVICES;
/// IOAPIC pins 0..23; 0-4 belong to legacy devices (timer, keyboard, cascade, COM2, COM1).
pub const IRQ_FIRST_VIRTIO: u32 = 5;
/// Last IOAPIC pin usable.
pub const IRQ_LAST: u32 = 23;
/// KVM's three-page TSS region (Intel VMX needs it; harmless elsewhere), inside the gap.
pub const KVM_TSS_START: u64 = 0xfffb_d000;
/// KVM's identity-map page (for real-mode emulation on VMX), just below the TSS.
pub const KVM_IDENTITY_MAP_START: u64 = 0xfffb_c000;
/// COM1 legacy port and IRQ.
pub const COM1_PORT: u16 = 0x3f8;
/// COM1 interrupt line.
pub const COM1_IRQ: u32 = 4;
/// CMOS RTC index port (data at +1).
pub const CMOS_PORT: u16 = 0x70;
/// i8042 keyboard controller data/command ports (used for the reset path).
pub const I8042_DATA_PORT: u16 = 0x60;
/// i8042 command/status port.
pub const I8042_CMD_PORT: u16 = 0x64;
/// Smallest guest RAM we accept: the boot structures plus a kernel need far more, but
/// below this even the fixed low-memory layout does not fit. Defined with the config that
/// is validated against it.
pub const MIN_MEM_BYTES: u64 = vmm_api::config::MIN_MEM_BYTES;
const _: () = assert!(MIN_MEM_BYTES == HIMEM_START + 0x10_0000);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_structures_do_not_overlap() {
        let regions = [
            (BOOT_GDT_START, 0x20),
            (BOOT_IDT_START, 0x8),
            (SETUP_DATA_START, SETUP_DATA_MAX_SIZE),
            (ZERO_PAGE_START, 0x1000),
            (PML4_START, 0x1000),
            (PDPTE_START, 0x1000),
            (PDE_START, 0x1000),
            (CMDLINE_START, CMDLINE_MAX_SIZE as u64),
        ];
        for (i, a) in regions.iter().enumerate() {
            assert!(a.0 + a.1 <= EBDA_START, "region {i} runs into the EBDA");
            for b in regions.iter().skip(i + 1) {
                assert!(
                    a.0 + a.1 <= b.0 || b.0 + b.1 <= a.0,
                    "{a:x?} overlaps {b:x?}"
                );
            }
        }
        // The stack grows down from just below the page tables, above the zero page.
        const { assert!(BOOT_STACK_POINTER > ZERO_PAGE_START + 0x1000) };
        const { assert!(BOOT_STACK_POINTER < PML4_START) };
    }

    #[test]
    fn virtio_windows_fit_in_gap_below_ioapic() {
        let end = MMIO_GAP_START + VIRTIO_MMIO_WINDOW * VIRTIO_MMIO_MAX_DEVICES;
        assert!(end <= IOAPIC_START);
        const { assert!(IRQ_FIRST_VIRTIO + VIRTIO_MMIO_MAX_DEVICES as u32 - 1 <= IRQ_LAST) };
    }
}
