//! The Intel MultiProcessor Specification 1.4 table: how a guest without ACPI finds its CPUs,
//! the IOAPIC and the interrupt routing. Without it Linux boots one CPU in PIC mode.
//!
//! Placed at the start of the last KiB of base memory (`layout::MPTABLE_START`), where Linux
//! scans for the floating pointer. All structures are little endian, packed, with byte-sum
//! checksums.

use vm_memory::{Bytes, GuestAddress};

use crate::layout::{IOAPIC_START, IRQ_LAST, LAPIC_START, MPTABLE_MAX_END, MPTABLE_START};
use crate::memory::GuestMemory;

const MPC_SIGNATURE: &[u8; 4] = b"PCMP";
const MPF_SIGNATURE: &[u8; 4] = b"_MP_";
const SPEC_REV: u8 = 4;
const LAPIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
const ENTRY_PROCESSOR: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_IO_INTERRUPT: u8 = 3;
const ENTRY_LOCAL_INTERRUPT: u8 = 4;
const CPU_ENABLED: u8 = 1;
const CPU_BSP: u8 = 2;
/// Family 6 signature and FPU + APIC feature flags, as a generic x86-64 CPU reports.
const CPU_SIGNATURE: u32 = 0x600;
const CPU_FEATURES: u32 = 0x201;
const IRQ_TYPE_INT: u8 = 0;
const IRQ_TYPE_NMI: u8 = 1;
const IRQ_TYPE_EXTINT: u8 = 3;
/// Largest vCPU count the table can describe: APIC IDs 0..n-1, the IOAPIC takes ID n, and
/// 0xff is the broadcast ID.
pub const MAX_VCPUS: u8 = 254;

/// Errors writing the MP table.
#[derive(Debug, thiserror::Error)]
pub enum MptableError {
    #[error("the MP table describes at most {MAX_VCPUS} vCPUs, not {0}")]
    TooManyCpus(u8),
    #[error("the MP table for {0} vCPUs does not fit below 1 MiB")]
    TooBig(u8),
    #[error("cannot write the MP table into guest memory: {0}")]
    Write(vm_memory::GuestMemoryError),
}

fn checksum(bytes: &[u8]) -> u8 {
    0u8.wrapping_sub(bytes.iter().fold(0u8, |s, b| s.wrapping_add(*b)))
}

/// The floating pointer and configuration table for `cpus` vCPUs, as placed at `base`.
pub fn build(cpus: u8, base: u64) -> Result<Vec<u8>, MptableError> {
    if cpus == 0 || cpus > MAX_VCPUS {
        return Err(MptableError::TooManyCpus(cpus));
    }
    let ioapic_id = cpus;
    let mut entries = Vec::new();
    let mut count: u16 = 0;
    for id in 0..cpus {
        entries.extend_from_slice(&[ENTRY_PROCESSOR, id, LAPIC_VERSION]);
        entries.push(CPU_ENABLED | if id == 0 { CPU_BSP } else { 0 });
        entries.extend_from_slice(&CPU_SIGNATURE.to_le_bytes());
        entries.extend_from_slice(&CPU_FEATURES.to_le_bytes());
        entries.extend_from_slice(&[0; 8]);
        count += 1;
    }
    entries.extend_from_slice(&[ENTRY_BUS, 0]);
    entries.extend_from_slice(b"ISA   ");
    count += 1;
    entries.extend_from_slice(&[ENTRY_IOAPIC, ioapic_id, IOAPIC_VERSION, 1]);
    entries.extend_from_slice(&(IOAPIC_START as u32).to_le_bytes());
    count += 1;
    for irq in 0..=IRQ_LAST as u8 {
        // ISA bus IRQ n to IOAPIC pin n, bus-default polarity and trigger (edge, high).
        entries.extend_from_slice(&[
            ENTRY_IO_INTERRUPT,
            IRQ_TYPE_INT,
            0,
            0,
            0,
            irq,
            ioapic_id,
            irq,
        ]);
        count += 1;
    }
    // LINT0 of every CPU takes ExtINT (the PIC), LINT1 takes NMI.
    entries.extend_from_slice(&[ENTRY_LOCAL_INTERRUPT, IRQ_TYPE_EXTINT, 0, 0, 0, 0, 0xff, 0]);
    entries.extend_from_slice(&[ENTRY_LOCAL_INTERRUPT, IRQ_TYPE_NMI, 0, 0, 0, 0, 0xff, 1]);
    count += 2;

    let table_addr = base + 16;
    let mut table = Vec::with_capacity(44 + entries.len());
    table.extend_from_slice(MPC_SIGNATURE);
    table.extend_from_slice(&((44 + entries.len()) as u16).to_le_bytes());
    table.extend_from_slice(&[SPEC_REV, 0]);
    table.extend_from_slice(b"SANDBXVM");
    table.extend_from_slice(b"MICROVM     ");
    table.extend_from_slice(&0u32.to_le_bytes()); // OEM table pointer
    table.extend_from_slice(&0u16.to_le_bytes()); // OEM table size
    table.extend_from_slice(&count.to_le_bytes());
    table.extend_from_slice(&(LAPIC_START as u32).to_le_bytes());
    table.extend_from_slice(&[0; 4]); // extended table length, checksum, reserved
    table.extend_from_slice(&entries);
    table[7] = checksum(&table);

    let mut mpf = Vec::with_capacity(16);
    mpf.extend_from_slice(MPF_SIGNATURE);
    mpf.extend_from_slice(&(table_addr as u32).to_le_bytes());
    mpf.extend_from_slice(&[1, SPEC_REV, 0, 0, 0, 0, 0, 0]);
    mpf[10] = checksum(&mpf);

    mpf.extend_from_slice(&table);
    if base + mpf.len() as u64 > MPTABLE_MAX_END {
        return Err(MptableError::TooBig(cpus));
    }
    Ok(mpf)
}

/// Writes the MP table for `cpus` vCPUs at `MPTABLE_START`.
pub fn write(mem: &GuestMemory, cpus: u8) -> Result<(), MptableError> {
    let bytes = build(cpus, MPTABLE_START)?;
    mem.write_slice(&bytes, GuestAddress(MPTABLE_START))
        .map_err(MptableError::Write)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |s, x| s.wrapping_add(*x))
    }

    /// Walks the table the way Linux's mpparse does and returns (CPU APIC IDs, BSP, IOAPIC
    /// address, routed pins).
    fn parse(t: &[u8]) -> (Vec<u8>, u8, u32, Vec<u8>) {
        assert_eq!(&t[0..4], MPF_SIGNATURE);
        assert_eq!(sum(&t[0..16]), 0, "floating pointer checksum");
        let phys = u32::from_le_bytes(t[4..8].try_into().unwrap()) as u64;
        let off = (phys - MPTABLE_START) as usize;
        let len = u16::from_le_bytes(t[off + 4..off + 6].try_into().unwrap()) as usize;
        let c = &t[off..off + len];
        assert_eq!(&c[0..4], MPC_SIGNATURE);
        assert_eq!(sum(c), 0, "config table checksum");
        assert_eq!(
            u32::from_le_bytes(c[36..40].try_into().unwrap()),
            LAPIC_START as u32
        );
        let count = u16::from_le_bytes(c[34..36].try_into().unwrap());
        let (mut cpus, mut bsp, mut ioapic, mut pins) = (vec![], 0xff, 0, vec![]);
        let mut p = 44;
        for _ in 0..count {
            match c[p] {
                ENTRY_PROCESSOR => {
                    cpus.push(c[p + 1]);
                    if c[p + 3] & CPU_BSP != 0 {
                        bsp = c[p + 1];
                    }
                    p += 20;
                }
                ENTRY_IOAPIC => {
                    ioapic = u32::from_le_bytes(c[p + 4..p + 8].try_into().unwrap());
                    p += 8;
                }
                ENTRY_IO_INTERRUPT => {
                    pins.push(c[p + 7]);
                    p += 8;
                }
                ENTRY_BUS | ENTRY_LOCAL_INTERRUPT => p += 8,
                t => panic!("unknown entry type {t}"),
            }
        }
        assert_eq!(p, len, "entries fill the table exactly");
        (cpus, bsp, ioapic, pins)
    }

    #[test]
    fn describes_every_cpu_the_ioapic_and_all_pins() {
        let t = build(4, MPTABLE_START).unwrap();
        let (cpus, bsp, ioapic, pins) = parse(&t);
        assert_eq!(cpus, vec![0, 1, 2, 3]);
        assert_eq!(bsp, 0);
        assert_eq!(ioapic, IOAPIC_START as u32);
        assert_eq!(pins, (0..=IRQ_LAST as u8).collect::<Vec<_>>());
    }

    #[test]
    fn cpu_count_limits() {
        assert!(matches!(
            build(0, MPTABLE_START),
            Err(MptableError::TooManyCpus(0))
        ));
        assert!(matches!(
            build(255, MPTABLE_START),
            Err(MptableError::TooManyCpus(255))
        ));
        let big = build(MAX_VCPUS, MPTABLE_START).unwrap();
        assert_eq!(parse(&big).0.len(), MAX_VCPUS as usize);
        assert!(MPTABLE_START + big.len() as u64 <= MPTABLE_MAX_END);
    }
}
