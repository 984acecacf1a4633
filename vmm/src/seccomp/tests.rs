use super::*;

/// Runs `body` in a forked child confined by `prog`; returns the signal that ended it, or
/// None if it exited normally (with status 0).
fn in_confined_child(prog: &BpfProgram, body: impl FnOnce()) -> Option<i32> {
    // SAFETY: the child only installs the filter (prctl + seccomp, no allocation), runs
    // `body` (raw system calls) and _exits.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        if seccompiler::apply_filter(prog).is_err() {
            // SAFETY: ends the child at once.
            unsafe { libc::_exit(99) };
        }
        body();
        // SAFETY: as above.
        unsafe { libc::_exit(0) };
    }
    let mut status = 0;
    // SAFETY: waits for our own child; `status` is a valid int.
    let r = unsafe { libc::waitpid(pid, &mut status, 0) };
    assert_eq!(r, pid);
    if libc::WIFSIGNALED(status) {
        Some(libc::WTERMSIG(status))
    } else {
        assert_eq!(libc::WEXITSTATUS(status), 0, "child failed");
        None
    }
}

fn prog(kind: ThreadKind) -> BpfProgram {
    compile(kind, Mode::Kill).unwrap()
}

#[test]
fn every_filter_compiles_and_has_a_list_of_its_own() {
    let sizes: Vec<usize> = ThreadKind::ALL.map(allowed_syscalls).to_vec();
    assert!(sizes.iter().all(|&n| n > 20 && n < 60), "{sizes:?}");
    for kind in ThreadKind::ALL {
        assert_eq!(kind.name().parse::<ThreadKind>().unwrap(), kind);
        compile(kind, Mode::Log).unwrap();
    }
    assert!("gpu".parse::<ThreadKind>().is_err());
}

#[test]
fn a_call_outside_each_list_kills_with_sigsys() {
    for kind in ThreadKind::ALL {
        let got = in_confined_child(&prog(kind), forbidden_call);
        assert_eq!(got, Some(libc::SIGSYS), "{kind:?}");
    }
}

#[test]
fn allowed_calls_pass() {
    for kind in ThreadKind::ALL {
        let got = in_confined_child(&prog(kind), || {
            let mut fds = [0; 2];
            // SAFETY: plain system calls on our own pipe; `fds` holds two ints.
            unsafe {
                libc::syscall(libc::SYS_pipe2, fds.as_mut_ptr(), 0);
                libc::write(fds[1], b"x".as_ptr().cast(), 1);
                libc::close(fds[0]);
                libc::close(fds[1]);
            }
        });
        // pipe2 is not in any list: allowed calls before it ran, then SIGSYS.
        assert_eq!(got, Some(libc::SIGSYS), "{kind:?}");
        let got = in_confined_child(&prog(kind), || {
            // SAFETY: writing 0 bytes to stderr and reading the time are harmless.
            unsafe {
                libc::write(2, b"".as_ptr().cast(), 0);
                let mut ts = std::mem::zeroed::<libc::timespec>();
                libc::syscall(libc::SYS_clock_gettime, libc::CLOCK_MONOTONIC, &mut ts);
            }
        });
        assert_eq!(got, None, "{kind:?}");
    }
}

#[test]
fn arguments_are_filtered() {
    let exec_map = || {
        // SAFETY: maps one anonymous page (or is killed trying); unmapped if it succeeds.
        unsafe {
            let p = libc::mmap(
                std::ptr::null_mut(),
                4096,
                libc::PROT_READ | libc::PROT_EXEC,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            );
            libc::munmap(p, 4096);
        }
    };
    let inet_socket = || {
        // SAFETY: creates (or is killed trying) a socket that is closed right away.
        unsafe { libc::close(libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0)) };
    };
    let unix_socket = || {
        // SAFETY: as above.
        unsafe { libc::close(libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0)) };
    };
    let tty_ioctl = || {
        let mut t = std::mem::MaybeUninit::<libc::termios>::uninit();
        // SAFETY: TCGETS on stdin writes at most a termios to valid memory.
        unsafe { libc::ioctl(0, libc::TCGETS, t.as_mut_ptr()) };
    };
    for kind in ThreadKind::ALL {
        assert_eq!(
            in_confined_child(&prog(kind), exec_map),
            Some(libc::SIGSYS),
            "{kind:?}"
        );
        assert_eq!(
            in_confined_child(&prog(kind), tty_ioctl),
            Some(libc::SIGSYS),
            "{kind:?}"
        );
        assert_eq!(
            in_confined_child(&prog(kind), inet_socket),
            Some(libc::SIGSYS),
            "{kind:?}"
        );
    }
    assert_eq!(
        in_confined_child(&prog(ThreadKind::Devices), unix_socket),
        None
    );
    assert_eq!(
        in_confined_child(&prog(ThreadKind::Api), unix_socket),
        Some(libc::SIGSYS)
    );
}

#[test]
fn the_readme_table_gives_each_threads_list_size() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    for kind in ThreadKind::ALL {
        let row = format!("| {} | {} |", kind.name(), allowed_syscalls(kind));
        assert!(readme.contains(&row), "vmm/README.md lacks the row {row:?}");
    }
}
