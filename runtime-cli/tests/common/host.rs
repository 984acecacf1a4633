//! What a runtime root leaves on the host: processes, mounts, state directories, jail
//! cgroups. The fault and soak tests compare it before and after.

use std::path::Path;

#[derive(Debug, PartialEq, Eq)]
pub struct Footprint {
    /// Processes whose command line mentions the root.
    pub processes: Vec<String>,
    /// Mounts under the root.
    pub mounts: usize,
    /// Entries in the root (state directories).
    pub state_dirs: usize,
    /// Memory cgroups of jails (`sandbox-vm/*`), host-wide.
    pub cgroups: usize,
    /// Unix sockets under the root (their paths, from /proc/net/unix).
    pub sockets: Vec<String>,
}

fn count_dirs(p: &Path) -> usize {
    std::fs::read_dir(p).map_or(0, |d| {
        d.flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .count()
    })
}

pub fn footprint(root: &Path) -> Footprint {
    let needle = root.to_string_lossy().into_owned();
    let mut processes = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(cmd) = std::fs::read(e.path().join("cmdline")) {
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.contains(&needle) {
                processes.push(cmd);
            }
        }
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.contains(&needle))
        .count();
    let sockets = std::fs::read_to_string("/proc/net/unix")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(7).filter(|p| p.contains(&needle)))
        .map(str::to_string)
        .collect();
    Footprint {
        processes,
        mounts,
        state_dirs: std::fs::read_dir(root).map_or(0, |d| d.count()),
        cgroups: count_dirs(Path::new("/sys/fs/cgroup/memory/sandbox-vm"))
            + count_dirs(Path::new("/sys/fs/cgroup/sandbox-vm")),
        sockets,
    }
}

/// Open file descriptors of this process.
#[allow(dead_code)] // the soak test's only
pub fn own_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// Runs `cmd` with its stdout and stderr in files and returns them as `Output`: `create`
/// hands its stdio to the monitor, which outlives it, so pipes would never reach EOF.
pub fn output_via_files(cmd: &mut std::process::Command) -> std::process::Output {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    let n = N.fetch_add(1, Ordering::SeqCst);
    let base = std::env::temp_dir().join(format!("svm-out-{}-{n}", std::process::id()));
    let (out, err) = (base.with_extension("out"), base.with_extension("err"));
    let status = cmd
        .stdin(std::process::Stdio::null())
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        .status()
        .unwrap();
    let output = std::process::Output {
        status,
        stdout: std::fs::read(&out).unwrap_or_default(),
        stderr: std::fs::read(&err).unwrap_or_default(),
    };
    let _ = std::fs::remove_file(out);
    let _ = std::fs::remove_file(err);
    output
}

/// Tries to connect to the Unix socket `sock` from a child process running as `uid` (and
/// the same gid, no supplementary groups); returns connect's errno (0: connected).
#[allow(dead_code)] // not every test file checks who may connect
pub fn connect_as(uid: u32, sock: &Path) -> i32 {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(sock.as_os_str().as_bytes()).unwrap();
    // SAFETY: the child only makes raw system calls on prepared memory, then _exits.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        // SAFETY: as above; `addr` is a zeroed sockaddr_un filled within its bounds.
        unsafe {
            if libc::setgroups(0, std::ptr::null()) != 0
                || libc::setgid(uid) != 0
                || libc::setuid(uid) != 0
            {
                libc::_exit(200);
            }
            let fd = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0);
            let mut addr: libc::sockaddr_un = std::mem::zeroed();
            addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
            let bytes = path.as_bytes();
            for (i, b) in bytes.iter().enumerate().take(addr.sun_path.len() - 1) {
                addr.sun_path[i] = *b as libc::c_char;
            }
            let len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
            let r = libc::connect(fd, (&addr as *const libc::sockaddr_un).cast(), len);
            let errno = *libc::__errno_location();
            libc::_exit(if r == 0 { 0 } else { errno.min(199) });
        }
    }
    let mut status = 0;
    // SAFETY: waits for our own child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    assert!(libc::WIFEXITED(status));
    let code = libc::WEXITSTATUS(status);
    assert_ne!(code, 200, "cannot become uid {uid}");
    code
}
