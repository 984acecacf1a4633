//! virtio-blk requests: parse a descriptor chain, do the I/O on the disk file, report status.
//!
//! Pure request logic, no event-loop plumbing. Everything in the chain comes from the guest:
//! every descriptor is checked against guest RAM before use, directions are enforced, sector
//! ranges are checked against the disk, and all guest accesses go through vm-memory's checked
//! accessors. A malformed request completes with `VIRTIO_BLK_S_IOERR` when its status byte can
//! be located, with nothing written otherwise; it never fails the VMM.
//!
//! Layout (virtio 1.x, 5.2.6): a 16-byte device-readable header `{type: le32, reserved: le32,
//! sector: le64}`, data descriptors (device-writable for IN and GET_ID, readable for OUT), and a
//! final device-writable status byte. We require the header and the status byte in their own
//! descriptors, as Linux and every other driver we know lay them out.

use std::fs::File;
use std::io::{Seek, SeekFrom};

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_ID_BYTES, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP,
    VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use virtio_queue::desc::split::Descriptor;
use vm_memory::{Bytes, GuestAddress, GuestMemory, Permissions};

/// Bytes per sector in the virtio-blk protocol (independent of the host's block size).
pub const SECTOR_SIZE: u64 = 512;
/// Size of the request header.
pub const HEADER_SIZE: u32 = 16;

/// What a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestType {
    /// Read sectors into the guest.
    In,
    /// Write guest data to sectors.
    Out,
    /// Make earlier writes durable (fsync).
    Flush,
    /// Return the device ID string.
    GetId,
    /// Anything else: completes with `VIRTIO_BLK_S_UNSUPP`.
    Unsupported(u32),
}

impl From<u32> for RequestType {
    fn from(t: u32) -> Self {
        match t {
            VIRTIO_BLK_T_IN => Self::In,
            VIRTIO_BLK_T_OUT => Self::Out,
            VIRTIO_BLK_T_FLUSH => Self::Flush,
            VIRTIO_BLK_T_GET_ID => Self::GetId,
            other => Self::Unsupported(other),
        }
    }
}

/// Why a chain is not a valid request.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum RequestError {
    #[error("descriptor chain has {0} descriptors; a request needs a header and a status")]
    TooShort(usize),
    #[error("request header descriptor is device-writable or shorter than 16 bytes")]
    BadHeader,
    #[error("status descriptor is not device-writable or is empty")]
    BadStatus,
    #[error("a data descriptor has the wrong direction for a {0:?} request")]
    DataDirection(RequestType),
    #[error("descriptor {addr:#x}+{len:#x} is outside guest memory")]
    OutsideMemory { addr: u64, len: u32 },
    #[error("data length {0} is not a whole number of sectors")]
    PartialSector(u64),
    #[error("sectors {sector}+{count} are beyond the end of the disk")]
    OutOfRange { sector: u64, count: u64 },
    #[error("write to a read-only disk")]
    ReadOnly,
    #[error("disk I/O failed: {0}")]
    Io(String),
}

/// A validated request: every address in it lies in guest RAM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The operation.
    pub request_type: RequestType,
    /// First sector (IN/OUT).
    pub sector: u64,
    /// Data buffers in chain order: (guest address, length).
    pub data: Vec<(GuestAddress, u32)>,
    /// Where the status byte goes.
    pub status: GuestAddress,
}

/// The disk behind a virtio-blk device.
pub struct Disk {
    file: File,
    sectors: u64,
    read_only: bool,
    id: [u8; VIRTIO_BLK_ID_BYTES as usize],
}

impl Disk {
    /// A disk backed by `file` (its length rounded down to whole sectors). `id` is what
    /// GET_ID returns (truncated to 20 bytes).
    pub fn new(file: File, read_only: bool, id: &str) -> std::io::Result<Self> {
        let sectors = file.metadata()?.len() / SECTOR_SIZE;
        let mut id_bytes = [0u8; VIRTIO_BLK_ID_BYTES as usize];
        let n = id.len().min(id_bytes.len());
        id_bytes[..n].copy_from_slice(&id.as_bytes()[..n]);
        Ok(Self {
            file,
            sectors,
            read_only,
            id: id_bytes,
        })
    }

    /// Capacity in 512-byte sectors.
    pub fn sectors(&self) -> u64 {
        self.sectors
    }

    /// Whether writes are refused.
    pub fn read_only(&self) -> bool {
        self.read_only
    }
}

fn check_range<M: GuestMemory>(
    mem: &M,
    d: &Descriptor,
    access: Permissions,
) -> Result<(), RequestError> {
    let outside = RequestError::OutsideMemory {
        addr: d.addr().0,
        len: d.len(),
    };
    let len = usize::try_from(d.len()).map_err(|_| outside.clone())?;
    if mem.check_range(d.addr(), len, access) {
        Ok(())
    } else {
        Err(outside)
    }
}

/// Locates the status byte of a chain, if its last descriptor can hold it.
pub fn status_address<M: GuestMemory>(mem: &M, descs: &[Descriptor]) -> Option<GuestAddress> {
    let last = descs.last()?;
    (last.is_write_only() && last.len() >= 1 && mem.check_range(last.addr(), 1, Permissions::Write))
        .then(|| last.addr())
}

/// Parses and validates the descriptors of one chain (as yielded by `DescriptorChain`).
pub fn parse<M: GuestMemory>(mem: &M, descs: &[Descriptor]) -> Result<Request, RequestError> {
    let [header, data @ .., _status] = descs else {
        return Err(RequestError::TooShort(descs.len()));
    };
    let status = status_address(mem, descs).ok_or(RequestError::BadStatus)?;
    if header.is_write_only() || header.len() < HEADER_SIZE {
        return Err(RequestError::BadHeader);
    }
    check_range(mem, header, Permissions::Read)?;
    let mut raw = [0u8; HEADER_SIZE as usize];
    mem.read_slice(&mut raw, header.addr())
        .map_err(|_| RequestError::BadHeader)?;
    let (t, rest) = raw.split_at(4);
    let request_type = RequestType::from(u32::from_le_bytes(t.try_into().unwrap_or_default()));
    let sector = u64::from_le_bytes(rest[4..12].try_into().unwrap_or_default());

    let device_writes = match request_type {
        RequestType::In | RequestType::GetId => Some(true),
        RequestType::Out => Some(false),
        // No data expected; any data descriptors are ignored.
        RequestType::Flush | RequestType::Unsupported(_) => None,
    };
    let mut buffers = Vec::new();
    if let Some(writable) = device_writes {
        for d in data {
            if d.is_write_only() != writable {
                return Err(RequestError::DataDirection(request_type));
            }
            let access = if writable {
                Permissions::Write
            } else {
                Permissions::Read
            };
            check_range(mem, d, access)?;
            buffers.push((d.addr(), d.len()));
        }
    }
    Ok(Request {
        request_type,
        sector,
        data: buffers,
        status,
    })
}

impl Request {
    fn data_len(&self) -> u64 {
        self.data.iter().map(|&(_, len)| u64::from(len)).sum()
    }

    /// Checks the sector range of an IN/OUT request and positions the file at its start.
    fn seek(&self, disk: &mut Disk) -> Result<(), RequestError> {
        let len = self.data_len();
        if !len.is_multiple_of(SECTOR_SIZE) {
            return Err(RequestError::PartialSector(len));
        }
        let count = len / SECTOR_SIZE;
        let out_of_range = RequestError::OutOfRange {
            sector: self.sector,
            count,
        };
        let end = self.sector.checked_add(count).ok_or(out_of_range.clone())?;
        if end > disk.sectors {
            return Err(out_of_range);
        }
        disk.file
            .seek(SeekFrom::Start(self.sector * SECTOR_SIZE))
            .map_err(|e| RequestError::Io(e.to_string()))?;
        Ok(())
    }

    /// Performs the request. Returns the number of bytes written into guest buffers.
    pub fn execute<M: GuestMemory>(&self, mem: &M, disk: &mut Disk) -> Result<u32, RequestError> {
        let io = |e: vm_memory::GuestMemoryError| RequestError::Io(e.to_string());
        match self.request_type {
            RequestType::In => {
                self.seek(disk)?;
                for &(addr, len) in &self.data {
                    mem.read_exact_volatile_from(addr, &mut disk.file, len as usize)
                        .map_err(io)?;
                }
                // Fits: data_len() was checked against the disk, and chains are < 4 GiB.
                Ok(u32::try_from(self.data_len()).unwrap_or(u32::MAX))
            }
            RequestType::Out => {
                if disk.read_only {
                    return Err(RequestError::ReadOnly);
                }
                self.seek(disk)?;
                for &(addr, len) in &self.data {
                    mem.write_all_volatile_to(addr, &mut disk.file, len as usize)
                        .map_err(io)?;
                }
                Ok(0)
            }
            RequestType::Flush => {
                if !disk.read_only {
                    disk.file
                        .sync_all()
                        .map_err(|e| RequestError::Io(e.to_string()))?;
                }
                Ok(0)
            }
            RequestType::GetId => {
                let mut id = &disk.id[..];
                let mut written = 0u32;
                for &(addr, len) in &self.data {
                    let n = id.len().min(len as usize);
                    mem.write_slice(&id[..n], addr).map_err(io)?;
                    id = &id[n..];
                    written += n as u32;
                }
                Ok(written)
            }
            RequestType::Unsupported(_) => Ok(0),
        }
    }
}

/// Handles one chain end to end: parse, execute, write the status byte. Returns the length
/// for the used ring (bytes written to guest buffers, status byte included).
pub fn handle<M: GuestMemory>(mem: &M, descs: &[Descriptor], disk: &mut Disk) -> u32 {
    let (status, status_addr, written) = match parse(mem, descs) {
        Ok(req) => match (req.request_type, req.execute(mem, disk)) {
            (RequestType::Unsupported(t), _) => {
                log::debug!("virtio-blk: unsupported request type {t}");
                (VIRTIO_BLK_S_UNSUPP, Some(req.status), 0)
            }
            (_, Ok(n)) => (VIRTIO_BLK_S_OK, Some(req.status), n),
            (_, Err(e)) => {
                log::debug!("virtio-blk: request failed: {e}");
                (VIRTIO_BLK_S_IOERR, Some(req.status), 0)
            }
        },
        Err(e) => {
            log::debug!("virtio-blk: malformed request: {e}");
            (VIRTIO_BLK_S_IOERR, status_address(mem, descs), 0)
        }
    };
    match status_addr {
        Some(addr) if mem.write_obj(status as u8, addr).is_ok() => written.saturating_add(1),
        _ => 0,
    }
}

#[cfg(test)]
#[path = "request_tests.rs"]
mod tests;
