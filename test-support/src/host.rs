//! What the host has: root, processes, mounts, and what a runtime root leaves on it.

use std::path::Path;

/// Whether this process runs as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Fails (never skips) unless this process runs as root; `why` says what needs it.
pub fn require_root(why: &str) {
    assert!(is_root(), "{why}: run the tests as root (CI does)");
}

/// The host kernel's release (`uname -r`), to tell a guest kernel from it.
pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap()
        .trim()
        .to_string()
}

/// Every process's pid and command line (arguments joined by spaces).
pub fn processes() -> Vec<(u32, String)> {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if let Ok(cmd) = std::fs::read(e.path().join("cmdline")) {
            found.push((pid, String::from_utf8_lossy(&cmd).replace('\0', " ")));
        }
    }
    found
}

/// Command lines of the processes that mention `needle`.
pub fn processes_mentioning(needle: &str) -> Vec<String> {
    processes()
        .into_iter()
        .map(|(_, cmd)| cmd)
        .filter(|cmd| cmd.contains(needle))
        .collect()
}

/// The real uids of the VMM processes (`sandbox-vm-vmm`) whose command line mentions
/// `needle` (a sandbox's API socket): a jailed VMM shows the jail's uid (65534) in its
/// pid-namespace child beside root in the parent that waits for it.
pub fn vmm_uids(needle: &str) -> Vec<u32> {
    processes()
        .into_iter()
        .filter(|(_, cmd)| cmd.contains("sandbox-vm-vmm") && cmd.contains(needle))
        .filter_map(|(pid, _)| {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
            let uid = status.lines().find_map(|l| l.strip_prefix("Uid:"))?;
            uid.split_whitespace().next()?.parse().ok()
        })
        .collect()
}

/// The guest's `MemTotal` in KiB, from the text of its `/proc/meminfo`.
pub fn mem_total_kib(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find_map(|l| l.strip_prefix("MemTotal:"))?;
    line.split_whitespace().next()?.parse().ok()
}

/// The lines of this process's mountinfo that mention `needle` (a mount under a path).
pub fn mounts_mentioning(needle: &str) -> Vec<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.contains(needle))
        .map(String::from)
        .collect()
}

/// What a runtime root leaves on the host; the fault and soak tests compare it before
/// and after.
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

/// The [`Footprint`] of the runtime root `root`.
pub fn footprint(root: &Path) -> Footprint {
    let needle = root.to_string_lossy().into_owned();
    let sockets = std::fs::read_to_string("/proc/net/unix")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(7).filter(|p| p.contains(&needle)))
        .map(str::to_string)
        .collect();
    Footprint {
        processes: processes_mentioning(&needle),
        mounts: mounts_mentioning(&needle).len(),
        state_dirs: std::fs::read_dir(root).map_or(0, |d| d.count()),
        cgroups: count_dirs(Path::new("/sys/fs/cgroup/memory/sandbox-vm"))
            + count_dirs(Path::new("/sys/fs/cgroup/sandbox-vm")),
        sockets,
    }
}

/// Open file descriptors of this process.
pub fn own_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// Tries to connect to the Unix socket `sock` from a child process running as `uid` (and
/// the same gid, no supplementary groups); returns connect's errno (0: connected).
pub fn connect_as(uid: u32, sock: &Path) -> i32 {
    connect_as_in(uid, sock, None)
}

/// [`connect_as`], the child first doing what the VMM's jail does when `view` is given: a
/// private mount namespace in which directory `view.0` is also mounted at `view.1`.
pub fn connect_as_in(uid: u32, sock: &Path, view: Option<(&Path, &Path)>) -> i32 {
    use std::os::unix::ffi::OsStrExt;
    let cstr = |p: &Path| std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap();
    let path = cstr(sock);
    let view = view.map(|(from, to)| (cstr(from), cstr(to)));
    // SAFETY: the child only makes raw system calls on memory prepared before the fork,
    // then _exits.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        // SAFETY: as above; `addr` is a zeroed sockaddr_un filled within its bounds.
        unsafe {
            if let Some((from, to)) = &view {
                let slash = c"/";
                let private = libc::MS_REC | libc::MS_PRIVATE;
                let null = std::ptr::null();
                if libc::unshare(libc::CLONE_NEWNS) != 0
                    || libc::mount(null, slash.as_ptr(), null, private, null.cast()) != 0
                    || libc::mount(from.as_ptr(), to.as_ptr(), null, libc::MS_BIND, null.cast())
                        != 0
                {
                    libc::_exit(201);
                }
            }
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
    assert_ne!(code, 201, "cannot set up the jail's mount view");
    code
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mem_total_is_read_from_meminfo() {
        let m = "MemTotal:        1115204 kB\nMemFree:          900000 kB\n";
        assert_eq!(mem_total_kib(m), Some(1115204));
        assert_eq!(mem_total_kib("MemFree: 1 kB"), None);
    }
    use crate::TempDir;

    #[test]
    fn an_empty_root_has_an_empty_footprint() {
        let d = TempDir::new("ts-footprint");
        let f = footprint(&d);
        assert_eq!((f.processes.len(), f.mounts, f.state_dirs), (0, 0, 0));
        assert!(f.sockets.is_empty());
        std::fs::create_dir(d.join("c1")).unwrap();
        assert_eq!(footprint(&d).state_dirs, 1);
    }

    #[test]
    fn this_process_is_among_the_processes() {
        let me = std::process::id();
        assert!(processes().iter().any(|(pid, _)| *pid == me));
        assert!(own_fds() >= 3);
        let uname = std::process::Command::new("uname")
            .arg("-r")
            .output()
            .unwrap();
        assert_eq!(
            kernel_release(),
            String::from_utf8_lossy(&uname.stdout).trim()
        );
    }

    #[test]
    fn connect_as_reports_the_errno() {
        let d = TempDir::new("ts-connect");
        let sock = d.join("s");
        let _l = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        require_root("connect_as changes its child's uid");
        assert_eq!(connect_as(0, &sock), 0);
        assert_eq!(connect_as(0, &d.join("none")), libc::ENOENT);
    }
}
