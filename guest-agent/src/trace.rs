//! Phase marks on the console, to measure where a container's time goes in the guest.
//!
//! Off unless the kernel command line holds `sandbox_vm.trace` (the annotation
//! `io.sandbox-vm.kernel_params` puts it there; a template is then built with it too).
//! A mark is one `write(2)` on a copy of the agent's stderr, the console:
//! `agent-trace <ms since boot> pf=<page faults of the process so far> <label>`.
//! It neither locks nor allocates, so a new container process may mark too, up to its
//! `execve` (it keeps [`fd`] open until then). Each mark costs console output, which is
//! why tracing is off by default.

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

static ON: AtomicBool = AtomicBool::new(false);
/// The console, duplicated away from 0-2 (close-on-exec).
static FD: AtomicI32 = AtomicI32::new(-1);

/// The command-line word that turns tracing on.
const PARAM: &str = "sandbox_vm.trace";

/// Turns tracing on if `cmdline` (the kernel's) asks for it.
pub fn init(cmdline: &str) {
    if !wants_trace(cmdline) {
        return;
    }
    // SAFETY: duplicates fd 2 to a new close-on-exec fd at 100 or above, which this
    // module then owns.
    let fd = unsafe { libc::fcntl(2, libc::F_DUPFD_CLOEXEC, 100) };
    FD.store(if fd < 0 { 2 } else { fd }, Ordering::Relaxed);
    ON.store(true, Ordering::Relaxed);
}

/// The fd marks go to while tracing is on, for a new process to keep open.
pub fn fd() -> Option<RawFd> {
    Some(FD.load(Ordering::Relaxed)).filter(|&fd| fd >= 0 && enabled())
}

fn wants_trace(cmdline: &str) -> bool {
    cmdline.split_whitespace().any(|w| w == PARAM)
}

/// Whether tracing is on (to skip building a label nobody will see).
pub fn enabled() -> bool {
    ON.load(Ordering::Relaxed)
}

/// Writes `agent-trace <ms> pf=<faults> <label>` if tracing is on.
pub fn mark(label: &str) {
    if !ON.load(Ordering::Relaxed) {
        return;
    }
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    let ms = ts.tv_sec as u64 * 1000 + ts.tv_nsec as u64 / 1_000_000;
    // SAFETY: an all-zero rusage is a valid value of this plain C struct.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes the rusage we own.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let mut buf = [0u8; 160];
    let n = format_mark(&mut buf, ms, ru.ru_minflt as u64, label);
    // SAFETY: writes `n` initialised bytes of our buffer to the console fd.
    unsafe { libc::write(FD.load(Ordering::Relaxed), buf.as_ptr().cast(), n) };
}

/// Writes `v` in decimal at the end of `digits`; returns where it starts.
fn decimal(digits: &mut [u8; 20], mut v: u64) -> usize {
    let mut d = digits.len();
    loop {
        d -= 1;
        digits[d] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            return d;
        }
    }
}

/// Formats a mark into `buf` without allocating (labels are cut to fit); returns its
/// length. `faults` is the process's page-fault count so far (each fault is emulated
/// kernel work here, so it is the count that explains a phase's time).
fn format_mark(buf: &mut [u8], ms: u64, faults: u64, label: &str) -> usize {
    let (mut ms_digits, mut pf_digits) = ([0u8; 20], [0u8; 20]);
    let m = decimal(&mut ms_digits, ms);
    let f = decimal(&mut pf_digits, faults);
    let parts: [&[u8]; 7] = [
        b"agent-trace ",
        &ms_digits[m..],
        b" pf=",
        &pf_digits[f..],
        b" ",
        label.as_bytes(),
        b"\n",
    ];
    let mut n = 0;
    for p in parts {
        let room = buf.len() - 1 - n;
        let take = p.len().min(room);
        buf[n..n + take].copy_from_slice(&p[..take]);
        n += take;
    }
    if buf[n - 1] != b'\n' {
        buf[n] = b'\n';
        n += 1;
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_are_one_line_and_long_labels_are_cut() {
        let mut buf = [0u8; 160];
        let n = format_mark(&mut buf, 1234, 56, "create: forked");
        assert_eq!(&buf[..n], b"agent-trace 1234 pf=56 create: forked\n");
        let n = format_mark(&mut buf, 0, 0, &"x".repeat(300));
        assert_eq!(n, 160);
        assert!(buf[..n].starts_with(b"agent-trace 0 pf=0 xxx"));
        assert_eq!(buf[n - 1], b'\n');
        assert_eq!(buf[..n].iter().filter(|&&b| b == b'\n').count(), 1);
    }

    #[test]
    fn only_the_exact_word_turns_tracing_on() {
        assert!(wants_trace("console=ttyS0 sandbox_vm.trace quiet"));
        assert!(!wants_trace("sandbox_vm.tracex"));
        assert!(!wants_trace("console=ttyS0"));
    }
}
