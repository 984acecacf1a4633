//! Test support shared by the crate's unit tests, its KVM tests and the runtime's CLI
//! tests: the smallest guest "kernel" the loader accepts. Not part of the VMM proper.

/// A minimal ELF64 executable with one PT_LOAD segment of `code` at `paddr` (also the
/// entry point), taking `memsz` bytes of memory.
pub fn tiny_elf(paddr: u64, code: &[u8], memsz: u64) -> Vec<u8> {
    let mut f = vec![0u8; 64 + 56];
    f[0..4].copy_from_slice(b"\x7fELF");
    f[4] = 2; // 64-bit
    f[5] = 1; // little endian
    f[6] = 1; // version
    f[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    f[18..20].copy_from_slice(&62u16.to_le_bytes()); // x86_64
    f[20..24].copy_from_slice(&1u32.to_le_bytes());
    f[24..32].copy_from_slice(&paddr.to_le_bytes()); // e_entry
    f[32..40].copy_from_slice(&64u64.to_le_bytes()); // e_phoff
    f[52..54].copy_from_slice(&64u16.to_le_bytes()); // e_ehsize
    f[54..56].copy_from_slice(&56u16.to_le_bytes()); // e_phentsize
    f[56..58].copy_from_slice(&1u16.to_le_bytes()); // e_phnum
    let ph = 64;
    f[ph..ph + 4].copy_from_slice(&1u32.to_le_bytes()); // PT_LOAD
    f[ph + 4..ph + 8].copy_from_slice(&7u32.to_le_bytes()); // RWX
    f[ph + 8..ph + 16].copy_from_slice(&120u64.to_le_bytes()); // p_offset
    f[ph + 16..ph + 24].copy_from_slice(&paddr.to_le_bytes()); // p_vaddr
    f[ph + 24..ph + 32].copy_from_slice(&paddr.to_le_bytes()); // p_paddr
    f[ph + 32..ph + 40].copy_from_slice(&(code.len() as u64).to_le_bytes());
    f[ph + 40..ph + 48].copy_from_slice(&memsz.to_le_bytes());
    f[ph + 48..ph + 56].copy_from_slice(&0x1000u64.to_le_bytes());
    f.extend_from_slice(code);
    f
}
