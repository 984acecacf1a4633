//! Guest RAM: one memfd, mapped as one or two regions around the 32-bit MMIO gap.
//!
//! A memfd (rather than anonymous memory) lets later vhost-user backends map the same pages.

use std::ffi::CStr;
use std::fs::File;
use std::os::fd::FromRawFd;

use vm_memory::{FileOffset, GuestAddress, GuestMemoryMmap};

use crate::layout::{FIRST_ADDR_PAST_32BITS, MIN_MEM_BYTES, MMIO_GAP_START};

/// The guest memory type used across the VMM and its devices.
pub type GuestMemory = GuestMemoryMmap<()>;

/// Errors creating guest memory.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("guest memory of {0} MiB is too small (minimum {min} MiB)", min = MIN_MEM_BYTES >> 20)]
    TooSmall(u64),
    #[error("guest memory of {0} MiB does not fit in this host's address space")]
    TooLarge(u64),
    #[error("cannot create the guest memory file (memfd_create): {0}")]
    Memfd(std::io::Error),
    #[error("cannot size the guest memory file to {0} MiB: {1}")]
    Resize(u64, std::io::Error),
    #[error("cannot map guest memory: {0}")]
    Mmap(vm_memory::mmap::FromRangesError),
}

/// The guest-physical RAM ranges for `size` bytes of RAM: below the MMIO gap first, the
/// rest from 4 GiB.
pub fn ram_ranges(size: u64) -> Vec<(GuestAddress, u64)> {
    if size <= MMIO_GAP_START {
        vec![(GuestAddress(0), size)]
    } else {
        vec![
            (GuestAddress(0), MMIO_GAP_START),
            (GuestAddress(FIRST_ADDR_PAST_32BITS), size - MMIO_GAP_START),
        ]
    }
}

/// Creates `mem_mib` MiB of guest RAM backed by one memfd.
pub fn create_guest_memory(mem_mib: u64) -> Result<GuestMemory, MemoryError> {
    let size = mem_mib
        .checked_mul(1 << 20)
        .ok_or(MemoryError::TooLarge(mem_mib))?;
    if size < MIN_MEM_BYTES {
        return Err(MemoryError::TooSmall(mem_mib));
    }
    let file = memfd(c"sandbox-vm-guest-ram").map_err(MemoryError::Memfd)?;
    file.set_len(size)
        .map_err(|e| MemoryError::Resize(mem_mib, e))?;
    let mut offset = 0u64;
    let mut ranges = Vec::new();
    for (addr, len) in ram_ranges(size) {
        let len_usize = usize::try_from(len).map_err(|_| MemoryError::TooLarge(mem_mib))?;
        let fd = file.try_clone().map_err(MemoryError::Memfd)?;
        ranges.push((addr, len_usize, Some(FileOffset::new(fd, offset))));
        offset += len;
    }
    GuestMemoryMmap::from_ranges_with_files(ranges).map_err(MemoryError::Mmap)
}

fn memfd(name: &CStr) -> std::io::Result<File> {
    // SAFETY: `name` is a valid NUL-terminated string; memfd_create does not retain it.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by memfd_create and is owned by nobody else.
    Ok(unsafe { File::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestMemoryBackend};

    #[test]
    fn small_vm_has_one_range() {
        assert_eq!(ram_ranges(128 << 20), vec![(GuestAddress(0), 128 << 20)]);
    }

    #[test]
    fn large_vm_skips_the_mmio_gap() {
        let r = ram_ranges(4 << 30);
        assert_eq!(r[0], (GuestAddress(0), MMIO_GAP_START));
        assert_eq!(r[1], (GuestAddress(1 << 32), (4 << 30) - MMIO_GAP_START));
    }

    #[test]
    fn memory_is_usable_and_sized() {
        let mem = create_guest_memory(16).unwrap();
        assert_eq!(mem.num_regions(), 1);
        mem.write_obj(0xdead_beefu32, GuestAddress(0x1000)).unwrap();
        assert_eq!(
            mem.read_obj::<u32>(GuestAddress(0x1000)).unwrap(),
            0xdead_beef
        );
        assert!(mem.write_obj(0u8, GuestAddress(16 << 20)).is_err());
    }

    #[test]
    fn too_small_is_rejected() {
        assert!(matches!(
            create_guest_memory(1),
            Err(MemoryError::TooSmall(1))
        ));
    }
}
