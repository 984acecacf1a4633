//! Applying a [`CloneIdentity`] after the VM was restored from a template (see
//! `agent_protocol::clone`): entropy into the kernel pool and a CRNG reseed, the wall
//! clock, the hostname. Only the agent running as PID 1 acts on it (a host-test agent on
//! a Unix socket must not reseed or re-clock its host).

use std::fs::OpenOptions;
use std::os::fd::AsRawFd;

use agent_protocol::clone::{CloneApplied, CloneError, CloneIdentity};

/// `RNDADDENTROPY = _IOW('R', 0x03, int[2])`: add bytes to the input pool and credit them.
const RNDADDENTROPY: libc::c_ulong = 0x4008_5203;
/// `RNDRESEEDCRNG = _IO('R', 0x07)`: reseed the CRNG from the pool now.
const RNDRESEEDCRNG: libc::c_ulong = 0x5207;

/// Errors applying a clone identity; each names the step.
#[derive(Debug, thiserror::Error)]
pub enum CloneApplyError {
    #[error(transparent)]
    Invalid(#[from] CloneError),
    #[error("cannot {op}: {err}")]
    Sys {
        op: &'static str,
        err: std::io::Error,
    },
}

fn sys(op: &'static str) -> impl FnOnce(std::io::Error) -> CloneApplyError {
    move |err| CloneApplyError::Sys { op, err }
}

/// `struct rand_pool_info { int entropy_count; int buf_size; __u32 buf[]; }` for `bytes`,
/// crediting 8 bits per byte (host getrandom output is full entropy), as u32 words.
fn rand_pool_info(bytes: &[u8]) -> Vec<u32> {
    let words = bytes.len().div_ceil(4);
    let mut v = Vec::with_capacity(2 + words);
    v.push((bytes.len() * 8) as u32);
    v.push(bytes.len() as u32);
    for chunk in bytes.chunks(4) {
        let mut w = [0u8; 4];
        w[..chunk.len()].copy_from_slice(chunk);
        v.push(u32::from_ne_bytes(w));
    }
    v
}

/// Mixes `bytes` into the kernel's pool, credited, then forces a CRNG reseed. Returns the
/// bits credited.
pub fn add_entropy_and_reseed(bytes: &[u8]) -> Result<u32, CloneApplyError> {
    let dev = OpenOptions::new()
        .write(true)
        .open("/dev/urandom")
        .map_err(sys("open /dev/urandom"))?;
    let info = rand_pool_info(bytes);
    // SAFETY: `info` is a valid rand_pool_info (two ints, then buf_size bytes of buffer)
    // that lives across the call; the kernel only reads it.
    if unsafe { libc::ioctl(dev.as_raw_fd(), RNDADDENTROPY, info.as_ptr()) } != 0 {
        return Err(sys("add entropy (RNDADDENTROPY)")(
            std::io::Error::last_os_error(),
        ));
    }
    // SAFETY: RNDRESEEDCRNG takes no argument.
    if unsafe { libc::ioctl(dev.as_raw_fd(), RNDRESEEDCRNG) } != 0 {
        return Err(sys("reseed the CRNG (RNDRESEEDCRNG)")(
            std::io::Error::last_os_error(),
        ));
    }
    Ok(info[0])
}

fn realtime_ns() -> Result<i128, CloneApplyError> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec passed by pointer.
    if unsafe { libc::clock_gettime(libc::CLOCK_REALTIME, &mut ts) } != 0 {
        return Err(sys("read the clock")(std::io::Error::last_os_error()));
    }
    Ok(i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec))
}

/// Sets CLOCK_REALTIME to `ns` since the epoch; returns the step (new - old).
pub fn set_wall_clock(ns: u64) -> Result<i64, CloneApplyError> {
    let before = realtime_ns()?;
    let ts = libc::timespec {
        tv_sec: (ns / 1_000_000_000) as libc::time_t,
        tv_nsec: (ns % 1_000_000_000) as libc::c_long,
    };
    // SAFETY: clock_settime reads the timespec passed by pointer.
    if unsafe { libc::clock_settime(libc::CLOCK_REALTIME, &ts) } != 0 {
        return Err(sys("set the clock")(std::io::Error::last_os_error()));
    }
    let step = i128::from(ns) - before;
    Ok(step.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64)
}

/// Applies `id` (after validating it): entropy and reseed first, so nothing random is drawn
/// from the template's state after this point; then the clock and the hostname.
pub fn apply(id: &CloneIdentity) -> Result<CloneApplied, CloneApplyError> {
    id.validate()?;
    let entropy_bits = add_entropy_and_reseed(&id.entropy)?;
    let clock_step_ns = set_wall_clock(id.realtime_ns)?;
    nix::unistd::sethostname(&id.hostname)
        .map_err(|e| sys("set the hostname")(std::io::Error::from(e)))?;
    Ok(CloneApplied {
        clock_step_ns,
        entropy_bits,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_info_layout() {
        let v = rand_pool_info(&[1, 2, 3, 4, 5]);
        assert_eq!(v[0], 40, "bits credited");
        assert_eq!(v[1], 5, "buffer bytes");
        assert_eq!(v[2], u32::from_ne_bytes([1, 2, 3, 4]));
        assert_eq!(v[3], u32::from_ne_bytes([5, 0, 0, 0]));
        assert_eq!(v.len(), 4);
    }

    /// The ioctl numbers and layout are right: the kernel takes them (needs root; mixing
    /// 64 random bytes into the host's pool and reseeding is harmless).
    #[test]
    fn the_kernel_takes_the_entropy_and_reseeds() {
        let mut bytes = [0u8; 64];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
            .unwrap();
        assert_eq!(add_entropy_and_reseed(&bytes).unwrap(), 512);
    }

    #[test]
    fn invalid_identities_change_nothing() {
        let id = CloneIdentity {
            entropy: vec![1; 8],
            realtime_ns: 0,
            hostname: "h".into(),
        };
        assert!(matches!(apply(&id), Err(CloneApplyError::Invalid(_))));
    }
}
