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
}

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

/// An open TAP interface (IFF_TAP | IFF_NO_PI | IFF_VNET_HDR, offloads off, non-blocking).
pub struct Tap {
    file: File,
    name: String,
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
        // No checksum/TSO offloads: the guest is offered none, so the tap must hand us only
        // complete, checksummed frames.
        // SAFETY: TUNSETOFFLOAD takes its flags by value; no memory is passed.
        let r = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETOFFLOAD, 0 as libc::c_ulong) };
        if r < 0 {
            return Err(configure(io::Error::last_os_error()));
        }
        Ok(Self {
            file,
            name: name.into(),
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
}

#[cfg(test)]
#[path = "tap_tests.rs"]
mod tests;
