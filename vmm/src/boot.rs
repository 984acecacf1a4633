//! Loading the guest kernel and initrd, and writing what the 64-bit Linux boot protocol
//! reads: `boot_params` (zero page) with the e820 map, the command line, and a
//! `setup_data` RNG seed so the guest never waits for entropy.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use linux_loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use linux_loader::loader::{self, bzimage::BzImage, elf::Elf, KernelLoader};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use crate::layout::{
    CMDLINE_MAX_SIZE, CMDLINE_START, EBDA_START, FIRST_ADDR_PAST_32BITS, HIMEM_START,
    SETUP_DATA_START, ZERO_PAGE_START,
};
use crate::memory::GuestMemory;

const E820_RAM: u32 = 1;
const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448; // "HdrS"
const KERNEL_LOADER_OTHER: u8 = 0xff;
const KERNEL_MIN_ALIGNMENT_BYTES: u32 = 0x100_0000;
/// `setup_data` type of an RNG seed (arch/x86/include/uapi/asm/bootparam.h).
const SETUP_RNG_SEED: u32 = 9;
/// Bytes of seed handed to the guest.
pub const RNG_SEED_LEN: usize = 32;
/// The 64-bit entry point of a bzImage is this far past its protected-mode code.
const BZIMAGE_64BIT_ENTRY_OFFSET: u64 = 0x200;
const PAGE_SIZE: u64 = 0x1000;

/// Errors loading the kernel and initrd or writing boot structures.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("kernel {0} does not exist")]
    KernelMissing(PathBuf),
    #[error("cannot read kernel {0}: {1}")]
    KernelRead(PathBuf, std::io::Error),
    #[error("{0} is not a kernel: expected an ELF vmlinux or a bzImage")]
    NotAKernel(PathBuf),
    #[error("cannot load kernel {0}: {1}")]
    KernelLoad(PathBuf, loader::Error),
    #[error("guest memory of {mem_mib} MiB is too small for kernel {path} (it needs about {need_mib} MiB)")]
    KernelTooBig {
        path: PathBuf,
        mem_mib: u64,
        need_mib: u64,
    },
    #[error("cannot read initrd {0}: {1}")]
    InitrdRead(PathBuf, std::io::Error),
    #[error("initrd {path} ({size_mib} MiB) does not fit in guest memory above the kernel; raise mem_mib")]
    InitrdTooBig { path: PathBuf, size_mib: u64 },
    #[error("kernel command line is {0} bytes; the limit is {max}", max = CMDLINE_MAX_SIZE - 1)]
    CmdlineTooLong(usize),
    #[error("kernel command line contains a NUL byte")]
    CmdlineNul,
    #[error("cannot get random bytes for the guest RNG seed: {0}")]
    Seed(std::io::Error),
    #[error("cannot write boot structures into guest memory: {0}")]
    Write(vm_memory::GuestMemoryError),
}

/// Where a loaded kernel starts running, and the memory it occupies.
#[derive(Clone, Copy, Debug)]
pub struct LoadedKernel {
    /// 64-bit entry point (guest-physical).
    pub entry: u64,
    /// First address past the kernel's image and the memory it needs right after it.
    pub end: u64,
    /// The bzImage setup header, `None` for an ELF vmlinux.
    pub setup_header: Option<setup_header>,
}

/// An initrd placed in guest memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoadedInitrd {
    pub addr: u64,
    pub size: u64,
}

#[derive(Debug, PartialEq, Eq)]
enum KernelFormat {
    Elf,
    BzImage,
}

fn detect_format(file: &mut File) -> std::io::Result<Option<KernelFormat>> {
    if read_magic(file, 0)? == Some(*b"\x7fELF") {
        return Ok(Some(KernelFormat::Elf));
    }
    if read_magic(file, 0x202)?.map(u32::from_le_bytes) == Some(KERNEL_HDR_MAGIC) {
        return Ok(Some(KernelFormat::BzImage));
    }
    Ok(None)
}

/// Four bytes at `offset`, `None` if the file is shorter; other read errors are errors.
fn read_magic(file: &mut File, offset: u64) -> std::io::Result<Option<[u8; 4]>> {
    let mut magic = [0u8; 4];
    file.seek(SeekFrom::Start(offset))?;
    match file.read_exact(&mut magic) {
        Ok(()) => Ok(Some(magic)),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(None),
        Err(e) => Err(e),
    }
}

/// The end of the RAM region that starts at 0 (everything below the MMIO gap).
fn low_ram_end(mem: &GuestMemory) -> u64 {
    mem.find_region(GuestAddress(0))
        .map(|r| r.len())
        .unwrap_or(0)
}

fn open(path: &Path) -> Result<File, BootError> {
    File::open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => BootError::KernelMissing(path.into()),
        _ => BootError::KernelRead(path.into(), e),
    })
}

/// Loads an ELF vmlinux or bzImage at its preferred address (1 MiB or above).
pub fn load_kernel(mem: &GuestMemory, path: &Path) -> Result<LoadedKernel, BootError> {
    let mut file = open(path)?;
    let format = detect_format(&mut file)
        .map_err(|e| BootError::KernelRead(path.into(), e))?
        .ok_or_else(|| BootError::NotAKernel(path.into()))?;
    let mem_end = low_ram_end(mem);
    let too_big = |need: u64| BootError::KernelTooBig {
        path: path.into(),
        mem_mib: mem.iter().map(|r| r.len()).sum::<u64>() >> 20,
        need_mib: need.div_ceil(1 << 20),
    };
    let file_len = file
        .metadata()
        .map_err(|e| BootError::KernelRead(path.into(), e))?
        .len();
    let result = match format {
        KernelFormat::Elf => Elf::load(mem, None, &mut file, Some(GuestAddress(HIMEM_START))),
        KernelFormat::BzImage => {
            BzImage::load(mem, None, &mut file, Some(GuestAddress(HIMEM_START)))
        }
    };
    let result = result.map_err(|e| match e {
        // The loader failing to copy a segment in means it ran past the end of RAM.
        loader::Error::Elf(linux_loader::loader::elf::Error::ReadKernelImage)
        | loader::Error::Bzimage(
            linux_loader::loader::bzimage::Error::ReadBzImageCompressedKernel,
        ) => too_big(HIMEM_START + file_len),
        e => BootError::KernelLoad(path.into(), e),
    })?;
    let (entry, end) = match (&format, result.setup_header) {
        (KernelFormat::BzImage, Some(hdr)) => {
            let load = result.kernel_load.raw_value();
            // The decompressor needs init_size bytes from the load address.
            let end = load + u64::from(hdr.init_size).max(result.kernel_end - load);
            (load + BZIMAGE_64BIT_ENTRY_OFFSET, end)
        }
        _ => (result.kernel_load.raw_value(), result.kernel_end),
    };
    if end > mem_end {
        return Err(too_big(end));
    }
    Ok(LoadedKernel {
        entry,
        end,
        setup_header: result.setup_header,
    })
}

/// Places the initrd page-aligned at the top of low RAM (and below the kernel's limit).
pub fn load_initrd(
    mem: &GuestMemory,
    path: &Path,
    kernel: &LoadedKernel,
) -> Result<LoadedInitrd, BootError> {
    let mut file = File::open(path).map_err(|e| BootError::InitrdRead(path.into(), e))?;
    let size = file
        .metadata()
        .map_err(|e| BootError::InitrdRead(path.into(), e))?
        .len();
    let max_end = kernel
        .setup_header
        .map(|h| u64::from(h.initrd_addr_max) + 1)
        .unwrap_or(FIRST_ADDR_PAST_32BITS)
        .min(low_ram_end(mem));
    let addr = initrd_address(size, kernel.end, max_end).ok_or(BootError::InitrdTooBig {
        path: path.into(),
        size_mib: size.div_ceil(1 << 20),
    })?;
    let len = usize::try_from(size).map_err(|_| BootError::InitrdTooBig {
        path: path.into(),
        size_mib: size >> 20,
    })?;
    mem.read_exact_volatile_from(GuestAddress(addr), &mut file, len)
        .map_err(|e| match e {
            vm_memory::GuestMemoryError::IOError(io) => BootError::InitrdRead(path.into(), io),
            e => BootError::Write(e),
        })?;
    Ok(LoadedInitrd { addr, size })
}

/// The highest page-aligned address where `size` bytes end at or below `max_end` and start
/// at or above `min_start`.
pub fn initrd_address(size: u64, min_start: u64, max_end: u64) -> Option<u64> {
    let start = max_end.checked_sub(size)? & !(PAGE_SIZE - 1);
    (start >= min_start).then_some(start)
}

/// The e820 map for the RAM in `mem`: low RAM up to the EBDA, then from 1 MiB.
pub fn e820_map(mem: &GuestMemory) -> Vec<boot_e820_entry> {
    let ram = |addr: u64, size: u64| boot_e820_entry {
        addr,
        size,
        r#type: E820_RAM,
    };
    let mut map = vec![ram(0, EBDA_START)];
    for r in mem.iter() {
        let start = r.start_addr().raw_value().max(HIMEM_START);
        let end = r.start_addr().raw_value() + r.len();
        if end > start {
            map.push(ram(start, end - start));
        }
    }
    map
}

/// Writes the command line (NUL-terminated) at `CMDLINE_START`; returns its length.
pub fn write_cmdline(mem: &GuestMemory, cmdline: &str) -> Result<usize, BootError> {
    if cmdline.len() >= CMDLINE_MAX_SIZE {
        return Err(BootError::CmdlineTooLong(cmdline.len()));
    }
    if cmdline.contains('\0') {
        return Err(BootError::CmdlineNul);
    }
    let mut bytes = cmdline.as_bytes().to_vec();
    bytes.push(0);
    mem.write_slice(&bytes, GuestAddress(CMDLINE_START))
        .map_err(BootError::Write)?;
    Ok(cmdline.len())
}

/// Writes one `setup_data` entry carrying an RNG seed; returns its guest address.
pub fn write_rng_seed(mem: &GuestMemory, seed: &[u8; RNG_SEED_LEN]) -> Result<u64, BootError> {
    // struct setup_data { u64 next; u32 type; u32 len; u8 data[]; }
    let mut entry = Vec::with_capacity(16 + RNG_SEED_LEN);
    entry.extend_from_slice(&0u64.to_le_bytes());
    entry.extend_from_slice(&SETUP_RNG_SEED.to_le_bytes());
    entry.extend_from_slice(&(RNG_SEED_LEN as u32).to_le_bytes());
    entry.extend_from_slice(seed);
    mem.write_slice(&entry, GuestAddress(SETUP_DATA_START))
        .map_err(BootError::Write)?;
    Ok(SETUP_DATA_START)
}

/// Fresh random bytes from the host for the guest's RNG seed.
pub fn host_random_seed() -> Result<[u8; RNG_SEED_LEN], BootError> {
    let mut seed = [0u8; RNG_SEED_LEN];
    let mut filled = 0;
    while filled < seed.len() {
        // SAFETY: the pointer and length describe the unfilled tail of `seed`, which is
        // valid for writes of that many bytes.
        let n =
            unsafe { libc::getrandom(seed[filled..].as_mut_ptr().cast(), seed.len() - filled, 0) };
        if n < 0 {
            let err = std::io::Error::last_os_error();
            if err.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(BootError::Seed(err));
        }
        filled += n as usize;
    }
    Ok(seed)
}

/// What goes into the zero page.
pub struct BootParamsInput<'a> {
    pub kernel: &'a LoadedKernel,
    pub cmdline_len: usize,
    pub initrd: Option<LoadedInitrd>,
    pub setup_data: Option<u64>,
    pub e820: &'a [boot_e820_entry],
}

/// Builds `boot_params` (pure: tested without guest memory).
pub fn build_boot_params(input: &BootParamsInput) -> boot_params {
    let mut params = boot_params::default();
    if let Some(hdr) = input.kernel.setup_header {
        params.hdr = hdr;
    } else {
        params.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
        params.hdr.header = KERNEL_HDR_MAGIC;
        params.hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT_BYTES;
    }
    params.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    params.hdr.cmd_line_ptr = CMDLINE_START as u32;
    params.hdr.cmdline_size = input.cmdline_len as u32;
    if let Some(initrd) = input.initrd {
        params.hdr.ramdisk_image = initrd.addr as u32;
        params.hdr.ramdisk_size = initrd.size as u32;
    }
    params.hdr.setup_data = input.setup_data.unwrap_or(0);
    let n = input.e820.len().min(params.e820_table.len());
    params.e820_table[..n].copy_from_slice(&input.e820[..n]);
    params.e820_entries = n as u8;
    params
}

/// Writes the zero page.
pub fn write_boot_params(mem: &GuestMemory, params: boot_params) -> Result<(), BootError> {
    mem.write_obj(params, GuestAddress(ZERO_PAGE_START))
        .map_err(BootError::Write)
}

#[cfg(test)]
mod tests;
