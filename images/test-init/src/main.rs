//! PID 1 of the sandbox-vm boot-test initramfs.
//!
//! Prints exactly one line on /dev/console,
//! `SANDBOX-VM-INIT-OK uptime_ms=<CLOCK_BOOTTIME in ms>`, then restarts the
//! machine (the VMM treats the i8042 reset that `reboot=k` produces as a
//! clean exit). On any failure it prints `SANDBOX-VM-INIT-FAIL <what>` and
//! still restarts.
//!
//! No libc: system calls are made with the `syscall` instruction directly.
//! On the no-VT development hosts that instruction only reaches the guest
//! kernel through its page-fault re-dispatch patch (see
//! guest-kernel-config/patches/), so this binary is also the smallest test
//! of that patch.

#![no_std]
#![no_main]

use core::arch::{asm, global_asm};

const SYS_WRITE: usize = 1;
const SYS_OPEN: usize = 2;
const SYS_CLOCK_GETTIME: usize = 228;
const SYS_REBOOT: usize = 169;
const SYS_EXIT_GROUP: usize = 231;

const O_WRONLY: usize = 0o1;
const O_NOCTTY: usize = 0o400;
const O_CLOEXEC: usize = 0o2000000;
const CLOCK_BOOTTIME: usize = 7;
const LINUX_REBOOT_MAGIC1: usize = 0xfee1_dead;
const LINUX_REBOOT_MAGIC2: usize = 0x2812_1969;
const LINUX_REBOOT_CMD_RESTART: usize = 0x0123_4567;

/// Descriptor the kernel opens for init on /dev/console (stdout).
const STDOUT: usize = 1;

// The kernel enters with RSP pointing at argc; give `main` a stack aligned
// the way the SysV ABI expects at a call site, and no return address.
global_asm!(
    ".globl _start",
    "_start:",
    "xor ebp, ebp",
    "and rsp, -16",
    "call {main}",
    "ud2",
    main = sym main,
);

/// A raw system call with up to four arguments.
///
/// # Safety
/// The caller must pass arguments that are valid for system call `nr`
/// (pointers into live memory of the right size and mutability).
unsafe fn syscall4(nr: usize, a0: usize, a1: usize, a2: usize, a3: usize) -> isize {
    let ret: isize;
    // SAFETY: `syscall` clobbers only RCX and R11 (declared) and the result
    // register RAX; memory effects are the caller's contract above.
    unsafe {
        asm!(
            "syscall",
            inlateout("rax") nr as isize => ret,
            in("rdi") a0,
            in("rsi") a1,
            in("rdx") a2,
            in("r10") a3,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    ret
}

fn write_all(fd: usize, mut buf: &[u8]) -> bool {
    while !buf.is_empty() {
        // SAFETY: `buf` is a live, readable slice of `buf.len()` bytes.
        let n = unsafe { syscall4(SYS_WRITE, fd, buf.as_ptr() as usize, buf.len(), 0) };
        if n <= 0 {
            return false;
        }
        buf = &buf[n as usize..];
    }
    true
}

fn open_console() -> Option<usize> {
    // SAFETY: the path is a NUL-terminated static string.
    let fd = unsafe {
        syscall4(
            SYS_OPEN,
            b"/dev/console\0".as_ptr() as usize,
            O_WRONLY | O_NOCTTY | O_CLOEXEC,
            0,
            0,
        )
    };
    (fd >= 0).then_some(fd as usize)
}

/// CLOCK_BOOTTIME in milliseconds.
fn uptime_ms() -> Option<u64> {
    let mut ts = [0i64; 2]; // struct timespec { tv_sec, tv_nsec }
    // SAFETY: `ts` is a writable timespec-sized buffer that outlives the call.
    let r = unsafe { syscall4(SYS_CLOCK_GETTIME, CLOCK_BOOTTIME, ts.as_mut_ptr() as usize, 0, 0) };
    (r == 0).then(|| ts[0] as u64 * 1000 + ts[1] as u64 / 1_000_000)
}

/// Appends `bytes` to `line` at `*len`; the buffer is large enough for every
/// line this program builds.
fn push(line: &mut [u8; 64], len: &mut usize, bytes: &[u8]) {
    for &b in bytes {
        if *len < line.len() {
            line[*len] = b;
            *len += 1;
        }
    }
}

fn push_u64(line: &mut [u8; 64], len: &mut usize, mut v: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    push(line, len, &digits[i..]);
}

fn fail(fd: usize, what: &[u8]) {
    let mut line = [0u8; 64];
    let mut len = 0;
    push(&mut line, &mut len, b"SANDBOX-VM-INIT-FAIL ");
    push(&mut line, &mut len, what);
    push(&mut line, &mut len, b"\n");
    write_all(fd, &line[..len]);
}

fn restart(fd: usize) -> ! {
    // SAFETY: reboot(2) takes no pointers for LINUX_REBOOT_CMD_RESTART.
    unsafe {
        syscall4(
            SYS_REBOOT,
            LINUX_REBOOT_MAGIC1,
            LINUX_REBOOT_MAGIC2,
            LINUX_REBOOT_CMD_RESTART,
            0,
        );
    }
    // Still here: say so, then let the kernel panic on init's exit (the
    // guest runs with panic=-1, which also restarts the machine).
    fail(fd, b"reboot");
    loop {
        // SAFETY: exit_group takes no pointers and does not return.
        unsafe { syscall4(SYS_EXIT_GROUP, 1, 0, 0, 0) };
    }
}

extern "C" fn main() -> ! {
    let Some(fd) = open_console() else {
        // The kernel may still have given us /dev/console as fd 1.
        fail(STDOUT, b"open /dev/console");
        restart(STDOUT);
    };
    match uptime_ms() {
        Some(ms) => {
            let mut line = [0u8; 64];
            let mut len = 0;
            push(&mut line, &mut len, b"SANDBOX-VM-INIT-OK uptime_ms=");
            push_u64(&mut line, &mut len, ms);
            push(&mut line, &mut len, b"\n");
            if !write_all(fd, &line[..len]) {
                fail(STDOUT, b"write /dev/console");
            }
        }
        None => fail(fd, b"clock_gettime CLOCK_BOOTTIME"),
    }
    restart(fd)
}

#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    fail(STDOUT, b"panic");
    restart(STDOUT)
}
