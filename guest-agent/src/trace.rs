//! Phase marks on the console, to measure where a container's time goes in the guest.
//!
//! Off unless the kernel command line holds `sandbox_vm.trace` (the annotation
//! `io.sandbox-vm.kernel_params` puts it there; a template is then built with it too).
//! A mark is one `write(2)` on the agent's stderr, the console:
//! `agent-trace <ms since boot> <label>`. It neither locks nor allocates, so a forked
//! child may mark too (only before its stdio is set up: fd 2 is the container's after).
//! Each mark costs console output, which is why tracing is off by default.

use std::sync::atomic::{AtomicBool, Ordering};

static ON: AtomicBool = AtomicBool::new(false);

/// The command-line word that turns tracing on.
const PARAM: &str = "sandbox_vm.trace";

/// Turns tracing on if `cmdline` (the kernel's) asks for it.
pub fn init(cmdline: &str) {
    ON.store(wants_trace(cmdline), Ordering::Relaxed);
}

fn wants_trace(cmdline: &str) -> bool {
    cmdline.split_whitespace().any(|w| w == PARAM)
}

/// Writes `agent-trace <ms> <label>` if tracing is on.
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
    let mut buf = [0u8; 160];
    let n = format_mark(&mut buf, ms, label);
    // SAFETY: writes `n` initialised bytes of our buffer to fd 2.
    unsafe { libc::write(2, buf.as_ptr().cast(), n) };
}

/// Formats a mark into `buf` without allocating (labels are cut to fit); returns its
/// length.
fn format_mark(buf: &mut [u8], ms: u64, label: &str) -> usize {
    let mut digits = [0u8; 20];
    let mut d = digits.len();
    let mut v = ms;
    loop {
        d -= 1;
        digits[d] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    let parts: [&[u8]; 5] = [b"agent-trace ", &digits[d..], b" ", label.as_bytes(), b"\n"];
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
        let n = format_mark(&mut buf, 1234, "create: forked");
        assert_eq!(&buf[..n], b"agent-trace 1234 create: forked\n");
        let n = format_mark(&mut buf, 0, &"x".repeat(300));
        assert_eq!(n, 160);
        assert!(buf[..n].starts_with(b"agent-trace 0 xxx"));
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
