//! The host side of virtio-net: a TAP device, behind the [`NetBackend`] trait so tests can
//! use a fake.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

use super::VNET_HDR_LEN;

/// Where frames go to and come from. Each frame starts with a [`VNET_HDR_LEN`]-byte
/// virtio-net header. The fd is polled for readability by the event loop.
pub trait NetBackend: AsRawFd + Send {
    /// Reads one frame into `buf`; `WouldBlock` when there is none.
    fn read_frame(&mut self, buf: &mut [u8]) -> io::Result<usize>;
    /// Writes one frame.
    fn write_frame(&mut self, frame: &[u8]) -> io::Result<()>;
    /// The offloads (`TUN_F_*`) the backend can deliver frames with: partial checksums
    /// (`TUN_F_CSUM`) and TCP segments up to 64 KiB (`TUN_F_TSO4`/`6`/`_ECN`). Frames the
    /// guest sends may always carry offloads (the kernel checks their headers).
    fn offload_capability(&self) -> u32;
    /// Asks for frames with `flags` (a subset of [`NetBackend::offload_capability`]) from
    /// now on.
    fn set_offload(&mut self, flags: u32) -> io::Result<()>;
}

/// Every receive offload we can use.
pub const ALL_OFFLOADS: u32 =
    libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6 | libc::TUN_F_TSO_ECN;

/// Errors opening a TAP device.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    #[error("invalid TAP interface name {0:?} (1-15 bytes, no NUL)")]
    InvalidName(String),
    #[error("cannot open /dev/net/tun: {0}")]
    OpenTun(io::Error),
    #[error("cannot attach to TAP interface {0} (does it exist, and may we use it?): {1}")]
    SetIff(String, io::Error),
    #[error("cannot configure TAP interface {0}: {1}")]
    Configure(String, io::Error),
}

/// An open TAP interface (IFF_TAP | IFF_NO_PI | IFF_VNET_HDR, non-blocking; receive
/// offloads off until the guest's driver accepts them).
pub struct Tap {
    file: File,
    name: String,
    offloads: u32,
}

fn tun_set_offload(file: &File, flags: u32) -> io::Result<()> {
    // SAFETY: TUNSETOFFLOAD takes its flags by value; no memory is passed.
    let r = unsafe {
        libc::ioctl(
            file.as_raw_fd(),
            libc::TUNSETOFFLOAD,
            flags as libc::c_ulong,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

impl Tap {
    /// Attaches to (or creates, with CAP_NET_ADMIN) the TAP interface `name`.
    pub fn open(name: &str) -> Result<Self, TapError> {
        let bytes = name.as_bytes();
        if bytes.is_empty() || bytes.len() >= libc::IFNAMSIZ || bytes.contains(&0) {
            return Err(TapError::InvalidName(name.into()));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(TapError::OpenTun)?;

        // SAFETY: ifreq is plain old data (a name array and a union of integers); all-zero
        // is a valid value.
        let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
        for (dst, &src) in ifr.ifr_name.iter_mut().zip(bytes) {
            *dst = src as libc::c_char;
        }
        ifr.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as _;
        // SAFETY: TUNSETIFF reads and writes one `struct ifreq`, which `ifr` is; the fd is a
        // tun fd we own.
        let r = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut ifr) };
        if r < 0 {
            return Err(TapError::SetIff(name.into(), io::Error::last_os_error()));
        }
        let configure = |e| TapError::Configure(name.into(), e);
        let hdr_len = VNET_HDR_LEN as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads one int through the pointer, which is valid.
        let r = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETVNETHDRSZ, &hdr_len) };
        if r < 0 {
            return Err(configure(io::Error::last_os_error()));
        }
        // What the tap can do: all of it, or checksums only, or nothing. Off until the
        // guest's driver says what it takes.
        let offloads = [ALL_OFFLOADS, libc::TUN_F_CSUM]
            .into_iter()
            .find(|&f| tun_set_offload(&file, f).is_ok())
            .unwrap_or(0);
        tun_set_offload(&file, 0).map_err(configure)?;
        Ok(Self {
            file,
            name: name.into(),
            offloads,
        })
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

impl NetBackend for Tap {
    fn read_frame(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.file.read(buf)
    }

    fn write_frame(&mut self, frame: &[u8]) -> io::Result<()> {
        let n = self.file.write(frame)?;
        if n != frame.len() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "short write to TAP",
            ));
        }
        Ok(())
    }

    fn offload_capability(&self) -> u32 {
        self.offloads
    }

    fn set_offload(&mut self, flags: u32) -> io::Result<()> {
        tun_set_offload(&self.file, flags & self.offloads)
    }
}

#[cfg(test)]
#[path = "tap_tests.rs"]
mod tests;
