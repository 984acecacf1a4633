//! Which system calls the sandbox's policy denies: each x86-64 syscall number is called once
//! with every argument -1 (an invalid fd, a bad pointer, unknown flags), so a call that gets
//! past the policy fails the kernel's own argument checks and changes nothing. EPERM/EACCES
//! counts as denied (by seccomp or a missing capability), anything else as reached.
//!
//! Not called: calls that block, exit, fork or exec, and the few that succeed with these
//! arguments in a way that changes the probe (umask, alarm, set_tid_address) or leave an
//! object behind (msgget creates a queue for key -1).

use sandbox_vm_probe::SyscallScan;

/// The x86-64 syscall numbers: 0..=334 and 424..=462 (Linux 6.12); 335..423 are unused.
pub fn numbers() -> impl Iterator<Item = u32> {
    (0..=334).chain(424..=462)
}

/// Numbers that are never called (x86-64).
pub const SKIPPED: &[u32] = &[
    7,   // poll
    15,  // rt_sigreturn
    23,  // select
    34,  // pause
    35,  // nanosleep
    37,  // alarm
    43,  // accept
    56,  // clone
    57,  // fork
    58,  // vfork
    59,  // execve
    60,  // exit
    61,  // wait4
    65,  // semop
    68,  // msgget
    69,  // msgsnd
    70,  // msgrcv
    95,  // umask
    128, // rt_sigtimedwait
    130, // rt_sigsuspend
    153, // vhangup
    202, // futex
    208, // io_getevents
    218, // set_tid_address
    220, // semtimedop
    230, // clock_nanosleep
    231, // exit_group
    232, // epoll_wait
    242, // mq_timedsend
    243, // mq_timedreceive
    247, // waitid
    270, // pselect6
    271, // ppoll
    281, // epoll_pwait
    288, // accept4
    322, // execveat
    333, // io_pgetevents
    426, // io_uring_enter
    435, // clone3
    441, // epoll_pwait2
    449, // futex_waitv
    454, // futex_wake
    455, // futex_wait
    456, // futex_requeue
];

/// What one call's result counts as.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Denied,
    NoSys,
    Reached,
}

pub fn classify(ret: i64, errno: i32) -> Outcome {
    if ret != -1 {
        return Outcome::Reached;
    }
    match errno {
        libc::EPERM | libc::EACCES => Outcome::Denied,
        libc::ENOSYS => Outcome::NoSys,
        _ => Outcome::Reached,
    }
}

fn call_invalid(nr: u32) -> Outcome {
    let bad: libc::c_long = -1;
    // SAFETY: `nr` is not in SKIPPED; with every argument -1 the remaining calls fail their
    // argument checks (EBADF, EFAULT, EINVAL, ...) or are queries that change no state of
    // this process that it relies on (the bad pointers are never dereferenced by us).
    let ret = unsafe { libc::syscall(libc::c_long::from(nr), bad, bad, bad, bad, bad, bad) };
    let errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
    classify(ret, errno)
}

pub fn scan() -> SyscallScan {
    let mut s = SyscallScan::default();
    for nr in numbers() {
        if SKIPPED.contains(&nr) {
            s.skipped += 1;
            continue;
        }
        s.tried += 1;
        match call_invalid(nr) {
            Outcome::Denied => s.denied.push(nr),
            Outcome::NoSys => s.enosys += 1,
            Outcome::Reached => s.other += 1,
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_results() {
        assert_eq!(classify(0, 0), Outcome::Reached);
        assert_eq!(classify(-1, libc::EPERM), Outcome::Denied);
        assert_eq!(classify(-1, libc::EACCES), Outcome::Denied);
        assert_eq!(classify(-1, libc::ENOSYS), Outcome::NoSys);
        assert_eq!(classify(-1, libc::EBADF), Outcome::Reached);
    }

    #[test]
    fn skip_list_is_sorted_and_in_range() {
        assert!(SKIPPED.windows(2).all(|w| w[0] < w[1]));
        assert!(SKIPPED.iter().all(|n| numbers().any(|m| m == *n)));
        assert_eq!(numbers().count(), 335 + 39);
        for (nr, name) in [
            (libc::SYS_exit, "exit"),
            (libc::SYS_exit_group, "exit_group"),
            (libc::SYS_fork, "fork"),
            (libc::SYS_clone3, "clone3"),
            (libc::SYS_futex, "futex"),
            (libc::SYS_pause, "pause"),
            (libc::SYS_msgget, "msgget"),
        ] {
            assert!(SKIPPED.contains(&(nr as u32)), "{name} must be skipped");
        }
    }
}
