//! Guest RAM to a file, and a file back as guest RAM.
//!
//! The file holds the RAM regions back to back, in guest-physical order (the layout
//! `memory::ram_ranges` gives). Pages that are all zero are not written, so the file is
//! sparse and a fresh guest's untouched RAM costs no disk. A restore maps the file
//! MAP_PRIVATE: pages are read on first touch, clones of one snapshot share them in the
//! page cache, and guest writes go to private copies, never to the file.
//!
//! A VM with vhost-user devices cannot use that mapping: its backend maps guest RAM from
//! the fd it is given, and would see the file, not the VMM's private copies. For such VMs
//! `copy_memory_file` reads the file's data extents (SEEK_DATA/SEEK_HOLE) into fresh
//! memfd-backed RAM instead: every page the template touched is read at restore, and
//! clones do not share them.
//!
//! Syscalls (for seccomp allow-lists): `save_memory_file` uses open/creat, pwrite64,
//! ftruncate, fsync; `map_memory_file` uses open and mmap(MAP_PRIVATE|MAP_NORESERVE) of
//! the file; `copy_memory_file` uses open, lseek (SEEK_DATA/SEEK_HOLE), pread64,
//! memfd_create, ftruncate and mmap(MAP_SHARED).

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;

use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{
    Address, Bytes, FileOffset, GuestMemoryBackend, GuestMemoryRegion, GuestRegionMmap,
};

use crate::memory::{ram_ranges, GuestMemory};

const PAGE: usize = 4096;
/// Guest RAM is copied out in chunks of this size.
const CHUNK: usize = 1 << 20;

/// Errors writing or mapping a memory file.
#[derive(Debug, thiserror::Error)]
pub enum MemoryFileError {
    #[error("cannot write guest memory to {path}: {err}")]
    Write {
        path: std::path::PathBuf,
        err: std::io::Error,
    },
    #[error("cannot read guest memory at {0:#x}")]
    Read(u64),
    #[error("cannot open the memory file {path}: {err}")]
    Open {
        path: std::path::PathBuf,
        err: std::io::Error,
    },
    #[error("the memory file {path} holds {found} bytes, the snapshot needs {want}")]
    Size {
        path: std::path::PathBuf,
        found: u64,
        want: u64,
    },
    #[error("cannot map the memory file: {0}")]
    Map(String),
}

/// Writes all guest RAM to `path` (sparse: zero pages are holes). Returns the bytes
/// written (non-zero pages).
pub fn save_memory_file(mem: &GuestMemory, path: &Path) -> Result<u64, MemoryFileError> {
    let werr = |err| MemoryFileError::Write {
        path: path.to_path_buf(),
        err,
    };
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .map_err(werr)?;
    let mut buf = vec![0u8; CHUNK];
    let mut file_off = 0u64;
    let mut written = 0u64;
    for region in mem.iter() {
        let len = region.len();
        let mut done = 0u64;
        while done < len {
            let n = CHUNK.min((len - done) as usize);
            let addr = region.start_addr().unchecked_add(done);
            mem.read_slice(&mut buf[..n], addr)
                .map_err(|_| MemoryFileError::Read(addr.0))?;
            for (i, page) in buf[..n].chunks(PAGE).enumerate() {
                if page.iter().any(|&b| b != 0) {
                    let at = file_off + done + (i * PAGE) as u64;
                    file.write_all_at(page, at).map_err(werr)?;
                    written += page.len() as u64;
                }
            }
            done += n as u64;
        }
        file_off += len;
    }
    file.set_len(file_off).map_err(werr)?;
    file.sync_all().map_err(werr)?;
    Ok(written)
}

/// Maps `path` as `mem_bytes` of guest RAM, copy-on-write (see the module doc).
pub fn map_memory_file(path: &Path, mem_bytes: u64) -> Result<GuestMemory, MemoryFileError> {
    let file = File::open(path).map_err(|err| MemoryFileError::Open {
        path: path.to_path_buf(),
        err,
    })?;
    let found = file
        .metadata()
        .map_err(|err| MemoryFileError::Open {
            path: path.to_path_buf(),
            err,
        })?
        .len();
    if found != mem_bytes {
        return Err(MemoryFileError::Size {
            path: path.to_path_buf(),
            found,
            want: mem_bytes,
        });
    }
    let mut regions = Vec::new();
    let mut offset = 0u64;
    for (addr, len) in ram_ranges(mem_bytes) {
        let size = usize::try_from(len).map_err(|e| MemoryFileError::Map(e.to_string()))?;
        let fd = file
            .try_clone()
            .map_err(|e| MemoryFileError::Map(e.to_string()))?;
        let mapping = MmapRegionBuilder::new(size)
            .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
            .with_mmap_flags(libc::MAP_PRIVATE | libc::MAP_NORESERVE)
            .with_file_offset(FileOffset::new(fd, offset))
            .build()
            .map_err(|e| MemoryFileError::Map(e.to_string()))?;
        let region = GuestRegionMmap::new(mapping, addr)
            .ok_or_else(|| MemoryFileError::Map(format!("region at {:#x} overflows", addr.0)))?;
        regions.push(region);
        offset += len;
    }
    GuestMemory::from_regions(regions).map_err(|e| MemoryFileError::Map(e.to_string()))
}

/// Reads the memory file at `path` into new memfd-backed guest RAM (see the module doc).
pub fn copy_memory_file(path: &Path, mem_mib: u64) -> Result<GuestMemory, MemoryFileError> {
    let open_err = |err| MemoryFileError::Open {
        path: path.to_path_buf(),
        err,
    };
    let file = File::open(path).map_err(open_err)?;
    let want = mem_mib << 20;
    let found = file.metadata().map_err(open_err)?.len();
    if found != want {
        return Err(MemoryFileError::Size {
            path: path.to_path_buf(),
            found,
            want,
        });
    }
    let mem = crate::memory::create_guest_memory(mem_mib)
        .map_err(|e| MemoryFileError::Map(e.to_string()))?;
    // Guest RAM is one memfd, laid out as the memory file is: copy file to file (pwrite
    // allocates the memfd's pages without faulting them into our mapping one by one).
    let memfd = mem
        .iter()
        .next()
        .and_then(|r| r.file_offset())
        .map(|f| f.file())
        .ok_or_else(|| MemoryFileError::Map("guest memory has no backing file".into()))?;
    let write_err = |err| MemoryFileError::Write {
        path: "the guest memory memfd".into(),
        err,
    };
    let mut buf = vec![0u8; CHUNK];
    let mut at = 0u64;
    while let Some((start, end)) = next_data_extent(&file, at, want).map_err(open_err)? {
        let mut off = start;
        while off < end {
            let n = CHUNK.min((end - off) as usize);
            file.read_exact_at(&mut buf[..n], off).map_err(open_err)?;
            memfd.write_all_at(&buf[..n], off).map_err(write_err)?;
            off += n as u64;
        }
        at = end;
    }
    Ok(mem)
}

/// The next `[start, end)` of `file` at or after `from` that holds data (not a hole),
/// clipped to `size` and to the RAM range it starts in.
fn next_data_extent(file: &File, from: u64, size: u64) -> std::io::Result<Option<(u64, u64)>> {
    use std::os::fd::AsRawFd;
    if from >= size {
        return Ok(None);
    }
    let seek = |off: u64, whence| {
        // SAFETY: lseek on an fd we own; it only moves the file offset.
        let r = unsafe { libc::lseek(file.as_raw_fd(), off as libc::off_t, whence) };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            // ENXIO: no data at or after `off`.
            return if e.raw_os_error() == Some(libc::ENXIO) {
                Ok(None)
            } else {
                Err(e)
            };
        }
        Ok(Some(r as u64))
    };
    let Some(start) = seek(from, libc::SEEK_DATA)? else {
        return Ok(None);
    };
    let end = seek(start, libc::SEEK_HOLE)?.unwrap_or(size).min(size);
    // Keep an extent within one RAM range so its guest addresses are contiguous.
    let range_end = ram_ranges(size)
        .iter()
        .scan(0u64, |off, &(_, len)| {
            *off += len;
            Some(*off)
        })
        .find(|&e| e > start)
        .unwrap_or(size);
    Ok((start < size).then_some((start, end.min(range_end))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;
    use vm_memory::GuestAddress;

    #[test]
    fn memory_round_trips_sparse_and_copy_on_write() {
        let dir = std::env::temp_dir().join(format!("vmm-memfile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("memory");
        let mem = crate::memory::create_guest_memory(16).unwrap();
        mem.write_obj(0x1122_3344u32, GuestAddress(0x5000)).unwrap();
        mem.write_obj(0x55u8, GuestAddress((16 << 20) - 1)).unwrap();
        let written = save_memory_file(&mem, &path).unwrap();
        assert_eq!(written, 2 * PAGE as u64);
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.len(), 16 << 20);
        assert!(
            meta.blocks() * 512 < 1 << 20,
            "not sparse: {}",
            meta.blocks()
        );

        let back = map_memory_file(&path, 16 << 20).unwrap();
        assert_eq!(
            back.read_obj::<u32>(GuestAddress(0x5000)).unwrap(),
            0x1122_3344
        );
        assert_eq!(
            back.read_obj::<u8>(GuestAddress((16 << 20) - 1)).unwrap(),
            0x55
        );
        back.write_obj(7u32, GuestAddress(0x5000)).unwrap();
        let again = map_memory_file(&path, 16 << 20).unwrap();
        assert_eq!(
            again.read_obj::<u32>(GuestAddress(0x5000)).unwrap(),
            0x1122_3344,
            "a guest write reached the file"
        );
        assert!(matches!(
            map_memory_file(&path, 32 << 20),
            Err(MemoryFileError::Size { .. })
        ));

        // The memfd copy holds the same data and is shareable (memfd-backed).
        let copy = copy_memory_file(&path, 16).unwrap();
        assert_eq!(
            copy.read_obj::<u32>(GuestAddress(0x5000)).unwrap(),
            0x1122_3344
        );
        assert_eq!(
            copy.read_obj::<u8>(GuestAddress((16 << 20) - 1)).unwrap(),
            0x55
        );
        assert_eq!(copy.read_obj::<u64>(GuestAddress(0x8000)).unwrap(), 0);
        assert!(copy.iter().all(|r| r.file_offset().is_some()));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
