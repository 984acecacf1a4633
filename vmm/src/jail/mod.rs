//! The VMM's jail (`sandbox-vm-vmm --jail DIR`), in the spirit of Firecracker's jailer:
//!
//! 1. **cgroup**: the process joins `sandbox-vm/<name>` of the memory controller (v1:
//!    `memory.limit_in_bytes`, v2: `memory.max`) limited to guest RAM +
//!    [`VMM_OVERHEAD_MIB`], below the hierarchy's root or, with a pod's cgroup
//!    ([`Jail::cgroup_parent`]), below that: the pod's cgroup then counts the VMM (and
//!    its limits apply too), while the jail's limit holds for the VMM alone;
//! 2. **pid namespace**: it forks; the child is PID 1 of a new pid namespace and runs the
//!    VMM, the parent only forwards SIGTERM/SIGINT, waits, removes the cgroup and ends as
//!    the child did (same exit code, or killed by the same signal);
//! 3. **mount and IPC namespaces** (the child): a tmpfs on DIR holding only what the VMM
//!    opens (kernel, initrd, disks, `/dev/kvm`, `/dev/net/tun` for a TAP, `/proc/cpuinfo`,
//!    the serial file, and the directories of its sockets), each bind-mounted at its own
//!    path so the VM config is valid unchanged — except the vsock directory, see below;
//!    then `pivot_root` into it and the old root detached;
//! 4. **rlimits** (`RLIMIT_FSIZE`, `RLIMIT_NOFILE`; SIGXFSZ ignored so an over-long write
//!    fails instead of killing) and `PR_SET_NO_NEW_PRIVS`. `RLIMIT_FSIZE` counts every
//!    file the process grows, the memfd of guest RAM included, so it is at least the
//!    guest's RAM and its largest writable disk ([`Jail::for_vm`]); the console log is
//!    bounded by the VMM itself (`crate::devices::legacy::serial::MAX_LOG_BYTES`);
//! 5. **an unprivileged uid/gid** ([`drop_privileges`]) once the VM is built: every file,
//!    `/dev/kvm` and socket is open by then, so the running VMM needs no access of its own.
//!
//! Nothing of the jail is visible on the host: the mounts live in the VMM's private mount
//! namespace, and DIR stays an empty directory.
//!
//! What the host side shares with the jail — the uid, where the vsock directory appears
//! inside ([`VSOCK_DIR`]), the cgroup's name, the vsock directory's ownership — is in
//! `vmm_api::jail`, with why the vsock sockets live in a directory of their own.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, Ordering};

use crate::config::{SerialOutput, VmConfig};
use vmm_api::jail::{cgroup_dir, CGROUP_ROOT, VMM_OVERHEAD_MIB};
pub use vmm_api::jail::{give_vsock_dir, GID, UID, VSOCK_DIR};

/// `RLIMIT_NOFILE` in the jail: 1023 vsock streams, their host sockets and the devices'.
pub const NOFILE: u64 = 2048;
/// Smallest `RLIMIT_FSIZE` in the jail.
pub const MIN_FSIZE: u64 = 256 << 20;
/// Errors setting up the jail; one line each.
#[derive(Debug, thiserror::Error)]
pub enum JailError {
    #[error("jail: {what} {path}: {err}")]
    Path {
        what: &'static str,
        path: PathBuf,
        err: io::Error,
    },
    #[error("jail: {what}: {err}")]
    Sys { what: &'static str, err: io::Error },
    #[error(transparent)]
    Shared(#[from] vmm_api::jail::JailError),
}

/// One path the VMM needs inside its jail.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JailPath {
    pub path: PathBuf,
    pub writable: bool,
}

/// What the jail holds and how it is limited.
#[derive(Clone, Debug)]
pub struct Jail {
    /// An empty directory (created if missing); the jail's root.
    pub dir: PathBuf,
    pub uid: u32,
    pub gid: u32,
    /// The cgroup's memory limit.
    pub memory_limit: u64,
    pub fsize: u64,
    pub paths: Vec<JailPath>,
    /// The directory of the VM's vsock socket, mounted at [`VSOCK_DIR`].
    pub vsock_dir: Option<PathBuf>,
    /// The pod's cgroup (a path below the hierarchy's root) that the jail's cgroup is
    /// made in (`--jail-cgroup-parent`); else the root.
    pub cgroup_parent: Option<PathBuf>,
}

impl Jail {
    /// The jail of a VM: what `vm` opens, plus the directory of the API socket.
    pub fn for_vm(vm: &VmConfig, api_sock: &Path, dir: PathBuf, uid: u32, gid: u32) -> Jail {
        let ro = |p: &Path| JailPath {
            path: p.to_path_buf(),
            writable: false,
        };
        let rw = |p: &Path| JailPath {
            path: p.to_path_buf(),
            writable: true,
        };
        let parent = |p: &Path| {
            p.parent()
                .map_or_else(|| PathBuf::from("/"), Path::to_path_buf)
        };
        let mut paths = vec![
            ro(&vm.kernel),
            rw(Path::new("/dev/kvm")),
            ro(Path::new("/proc/cpuinfo")),
        ];
        paths.extend(vm.initrd.as_deref().map(ro));
        // The VMM sizes the memfd that holds guest RAM with ftruncate, which RLIMIT_FSIZE
        // limits as it does any file (EFBIG past it).
        let mut fsize = MIN_FSIZE.max(vm.mem_mib.saturating_mul(1 << 20));
        for d in &vm.disks {
            if d.read_only {
                paths.push(ro(&d.path));
            } else {
                paths.push(rw(&d.path));
                let len = std::fs::metadata(&d.path).map_or(0, |m| m.len());
                fsize = fsize.max(len);
            }
        }
        if let SerialOutput::File(f) = &vm.serial {
            paths.push(rw(f));
        }
        if !vm.net.is_empty() {
            paths.push(rw(Path::new("/dev/net/tun")));
        }
        let mut dirs: Vec<PathBuf> = vm.fs.iter().map(|f| parent(&f.socket)).collect();
        dirs.push(parent(api_sock));
        dirs.sort();
        dirs.dedup();
        paths.extend(dirs.iter().map(|d| rw(d)));
        Jail {
            dir,
            uid,
            gid,
            memory_limit: (vm.mem_mib + VMM_OVERHEAD_MIB) << 20,
            fsize,
            paths,
            vsock_dir: vm.vsock.as_ref().map(|v| parent(&v.uds_path)),
            cgroup_parent: None,
        }
    }

    /// `vm` as the VMM must see it inside this jail: its vsock socket under [`VSOCK_DIR`].
    pub fn vm_config_inside(&self, vm: &mut VmConfig) {
        if let Some(v) = vm.vsock.as_mut() {
            let name = v.uds_path.file_name().unwrap_or_default();
            v.uds_path = Path::new(VSOCK_DIR).join(name);
        }
    }
}

fn sys(what: &'static str) -> impl FnOnce(io::Error) -> JailError {
    move |err| JailError::Sys { what, err }
}

fn at<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> JailError + 'a {
    move |err| JailError::Path {
        what,
        path: path.to_path_buf(),
        err,
    }
}

fn cstr(p: &Path) -> CString {
    // Paths come from the config and the command line, which cannot hold NUL bytes.
    CString::new(p.as_os_str().as_bytes()).unwrap_or_default()
}

fn check(r: libc::c_int) -> io::Result<()> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Where `/proc/self/cgroup` says this process is in the memory hierarchy (`v2`: the
/// unified one) whose root is `root`.
fn own_cgroup(root: &Path, v2: bool) -> Option<PathBuf> {
    let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    own.lines().find_map(|l| {
        let mut f = l.splitn(3, ':');
        let (_, ctrls, path) = (f.next()?, f.next()?, f.next()?);
        let hit = if v2 {
            ctrls.is_empty()
        } else {
            ctrls.split(',').any(|c| c == "memory")
        };
        hit.then(|| root.join(path.trim_start_matches('/')))
    })
}

/// cgroup v2: enables the memory controller in every cgroup from `root` down to `parent`
/// that does not have it yet (a pod's cgroups usually have it already).
fn enable_memory_down_to(root: &Path, parent: &Path) -> Result<(), JailError> {
    std::fs::create_dir_all(parent).map_err(at("create cgroup", parent))?;
    let rel = parent.strip_prefix(root).unwrap_or(Path::new(""));
    let mut dir = root.to_path_buf();
    for c in std::iter::once(None).chain(rel.components().map(Some)) {
        if let Some(c) = c {
            dir.push(c);
        }
        let ctl = dir.join("cgroup.subtree_control");
        let on = std::fs::read_to_string(&ctl).map_err(at("read", &ctl))?;
        if !on.split_whitespace().any(|c| c == "memory") {
            std::fs::write(&ctl, "+memory").map_err(at("enable memory in", &ctl))?;
        }
    }
    Ok(())
}

/// Creates the cgroup, sets its limit and moves the calling process into it; returns it
/// and the memory cgroup the process was in.
fn join_cgroup(root: &Path, jail: &Jail) -> Result<(PathBuf, Option<PathBuf>), JailError> {
    let (cg, v2) = cgroup_dir(root, &jail.dir, jail.cgroup_parent.as_deref())?;
    let hierarchy = if v2 {
        root.to_path_buf()
    } else {
        root.join("memory")
    };
    let came_from = own_cgroup(&hierarchy, v2);
    if v2 {
        // The memory controller must be enabled on the way down.
        enable_memory_down_to(root, cg.parent().unwrap_or(root))?;
    }
    std::fs::create_dir_all(&cg).map_err(at("create cgroup", &cg))?;
    let limit = cg.join(if v2 {
        "memory.max"
    } else {
        "memory.limit_in_bytes"
    });
    std::fs::write(&limit, jail.memory_limit.to_string()).map_err(at("write", &limit))?;
    let procs = cg.join("cgroup.procs");
    std::fs::write(&procs, std::process::id().to_string()).map_err(at("join", &procs))?;
    Ok((cg, came_from))
}

/// The read end of a pipe whose write end only the parent holds: it reports a hang-up
/// once the parent is gone.
static PARENT_ALIVE: AtomicI32 = AtomicI32::new(-1);

/// Makes the jailed VMM get SIGKILL when its parent ends (a SIGKILL of the outer process
/// must not leave the VMM running). A credential change clears this, so it is set again
/// after [`drop_privileges`]; the pipe covers a parent that died before.
fn die_with_parent() -> Result<(), JailError> {
    // SAFETY: prctl with these arguments only sets this process's parent-death signal.
    check(unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) })
        .map_err(sys("PR_SET_PDEATHSIG"))?;
    let mut pfd = libc::pollfd {
        fd: PARENT_ALIVE.load(Ordering::SeqCst),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: `pfd` is one valid pollfd; a zero timeout only looks.
    let r = unsafe { libc::poll(&mut pfd, 1, 0) };
    if r > 0 && pfd.revents & (libc::POLLHUP | libc::POLLERR) != 0 {
        // SAFETY: the parent is gone: end at once, as the death signal would have.
        unsafe { libc::_exit(137) };
    }
    Ok(())
}

/// The child's pid, for the parent's signal forwarding.
static CHILD: AtomicI32 = AtomicI32::new(0);

extern "C" fn forward(sig: libc::c_int) {
    let pid = CHILD.load(Ordering::SeqCst);
    if pid > 0 {
        // SAFETY: kill(2) is async-signal-safe.
        unsafe { libc::kill(pid, sig) };
    }
}

/// Steps 1 and 2: joins the cgroup and forks into a new pid namespace. Returns in the
/// child (PID 1 there); the parent never returns: it waits for the child, removes the
/// cgroup and ends the way the child did. Call it before any thread starts.
pub fn fork_into_pid_namespace(jail: &Jail) -> Result<(), JailError> {
    let (cg, came_from) = join_cgroup(Path::new(CGROUP_ROOT), jail)?;
    let mut alive = [0; 2];
    // SAFETY: `alive` holds two ints for the pipe's ends.
    check(unsafe { libc::pipe2(alive.as_mut_ptr(), libc::O_CLOEXEC) })
        .map_err(sys("create the liveness pipe"))?;
    // SAFETY: unshare only changes the namespace of the children we create next.
    check(unsafe { libc::unshare(libc::CLONE_NEWPID) }).map_err(sys("new pid namespace"))?;
    // SAFETY: no other thread runs yet (the caller's contract), so the child may go on
    // running Rust code.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(sys("fork")(io::Error::last_os_error()));
    }
    if pid == 0 {
        // SAFETY: closes our copy of the write end; the read end reports the parent's end.
        unsafe { libc::close(alive[1]) };
        PARENT_ALIVE.store(alive[0], Ordering::SeqCst);
        return die_with_parent();
    }
    // SAFETY: the parent keeps only the write end, open until it exits.
    unsafe { libc::close(alive[0]) };
    CHILD.store(pid, Ordering::SeqCst);
    for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
        // SAFETY: the handler only calls kill(2).
        unsafe { libc::signal(sig, forward as *const () as libc::sighandler_t) };
    }
    let mut status = 0;
    loop {
        // SAFETY: waits for our own child; `status` is a valid int.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        if r == pid || (r < 0 && io::Error::last_os_error().raw_os_error() != Some(libc::EINTR)) {
            break;
        }
    }
    leave_cgroup(&cg, came_from.as_deref());
    if libc::WIFSIGNALED(status) {
        let sig = libc::WTERMSIG(status);
        // SAFETY: restores the default action and raises the child's signal on ourselves
        // (no core dump: the limit is set to 0 first).
        unsafe {
            let none = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            libc::setrlimit(libc::RLIMIT_CORE, &none);
            libc::signal(sig, libc::SIG_DFL);
            libc::raise(sig);
        }
    }
    std::process::exit(if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        1
    });
}

/// Moves the calling process back to the cgroup it came from (else the one above the
/// jail's `sandbox-vm/<name>`) and removes `cg`.
fn leave_cgroup(cg: &Path, came_from: Option<&Path>) {
    let me = std::process::id().to_string();
    let back = came_from.is_some_and(|d| std::fs::write(d.join("cgroup.procs"), &me).is_ok());
    if !back {
        let mut above = cg.to_path_buf();
        above.pop();
        above.pop();
        let _ = std::fs::write(above.join("cgroup.procs"), &me);
    }
    let _ = std::fs::remove_dir(cg);
}

/// Step 3 and 4, in the child: the jail's mounts, `pivot_root`, rlimits, no new privileges.
pub fn enter(jail: &Jail) -> Result<(), JailError> {
    // SAFETY: unshare only affects this process; no other thread runs yet.
    check(unsafe { libc::unshare(libc::CLONE_NEWNS | libc::CLONE_NEWIPC) })
        .map_err(sys("new mount and IPC namespaces"))?;
    mount(None, Path::new("/"), None, libc::MS_REC | libc::MS_PRIVATE)
        .map_err(sys("make / private"))?;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&jail.dir)
        .map_err(at("create", &jail.dir))?;
    mount(Some("tmpfs"), &jail.dir, Some("tmpfs"), libc::MS_NOSUID)
        .map_err(at("mount tmpfs on", &jail.dir))?;
    for p in &jail.paths {
        bind_into(&jail.dir, p)?;
    }
    if let Some(d) = &jail.vsock_dir {
        bind_at(&jail.dir, d, Path::new(VSOCK_DIR))?;
    }
    pivot(&jail.dir)?;
    limits(jail)
}

fn mount(
    src: Option<&str>,
    target: &Path,
    fstype: Option<&str>,
    flags: libc::c_ulong,
) -> io::Result<()> {
    let src = src.map(|s| CString::new(s).unwrap_or_default());
    let fstype = fstype.map(|s| CString::new(s).unwrap_or_default());
    let target = cstr(target);
    let ptr = |c: &Option<CString>| c.as_ref().map_or(std::ptr::null(), |c| c.as_ptr());
    // SAFETY: every pointer is a valid NUL-terminated string or null, as mount(2) allows.
    check(unsafe {
        libc::mount(
            ptr(&src),
            target.as_ptr(),
            ptr(&fstype),
            flags,
            std::ptr::null(),
        )
    })
}

/// Bind-mounts directory `dir` (writable) at `inside` under `root`.
fn bind_at(root: &Path, dir: &Path, inside: &Path) -> Result<(), JailError> {
    let target = root.join(inside.strip_prefix("/").unwrap_or(inside));
    std::fs::create_dir_all(&target).map_err(at("create", &target))?;
    bind(dir, &target).map_err(at("bind", dir))
}

/// A plain (non-recursive) bind mount of one file or directory.
fn bind(source: &Path, target: &Path) -> io::Result<()> {
    let (source, dest) = (cstr(source), cstr(target));
    // SAFETY: both are valid NUL-terminated paths; no data argument.
    check(unsafe {
        libc::mount(
            source.as_ptr(),
            dest.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND,
            std::ptr::null(),
        )
    })
}

/// Bind-mounts `p` at the same path under `root` (read-only unless writable).
fn bind_into(root: &Path, p: &JailPath) -> Result<(), JailError> {
    let rel = p.path.strip_prefix("/").unwrap_or(&p.path);
    let target = root.join(rel);
    if p.writable && !p.path.exists() {
        // The serial log: created as the VMM would create it.
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&p.path)
            .map_err(at("create", &p.path))?;
    }
    let is_dir = p.path.is_dir();
    let parent = if is_dir {
        target.as_path()
    } else {
        target.parent().unwrap_or(root)
    };
    std::fs::create_dir_all(parent).map_err(at("create", parent))?;
    if !is_dir {
        std::fs::write(&target, b"").map_err(at("create", &target))?;
    }
    bind(&p.path, &target).map_err(at("bind", &p.path))?;
    if !p.writable {
        let flags = libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | libc::MS_NOSUID;
        mount(None, &target, None, flags).map_err(at("make read-only", &p.path))?;
    }
    Ok(())
}

/// `pivot_root` into `dir`, the old root detached.
fn pivot(dir: &Path) -> Result<(), JailError> {
    let old = dir.join(".old-root");
    std::fs::create_dir_all(&old).map_err(at("create", &old))?;
    let (new_c, old_c) = (cstr(dir), cstr(&old));
    // SAFETY: both are valid paths; pivot_root has no libc wrapper.
    check(unsafe { libc::syscall(libc::SYS_pivot_root, new_c.as_ptr(), old_c.as_ptr()) } as i32)
        .map_err(sys("pivot_root"))?;
    std::env::set_current_dir("/").map_err(sys("chdir /"))?;
    let old_in = c"/.old-root";
    // SAFETY: a valid path; detaching the old root, as pivot_root(2) suggests.
    check(unsafe { libc::umount2(old_in.as_ptr(), libc::MNT_DETACH) })
        .map_err(sys("detach the old root"))?;
    std::fs::remove_dir("/.old-root").map_err(sys("remove the old root's mount point"))
}

fn set_limit(res: libc::__rlimit_resource_t, v: u64, what: &'static str) -> Result<(), JailError> {
    let lim = libc::rlimit {
        rlim_cur: v,
        rlim_max: v,
    };
    // SAFETY: `lim` is a valid rlimit.
    check(unsafe { libc::setrlimit(res, &lim) }).map_err(sys(what))
}

fn limits(jail: &Jail) -> Result<(), JailError> {
    set_limit(libc::RLIMIT_FSIZE, jail.fsize, "RLIMIT_FSIZE")?;
    set_limit(libc::RLIMIT_NOFILE, NOFILE, "RLIMIT_NOFILE")?;
    // SAFETY: ignoring SIGXFSZ makes a write past RLIMIT_FSIZE fail with EFBIG.
    unsafe { libc::signal(libc::SIGXFSZ, libc::SIG_IGN) };
    // SAFETY: prctl with these arguments only sets a flag of this process.
    check(unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) })
        .map_err(sys("PR_SET_NO_NEW_PRIVS"))
}

/// Step 5: the unprivileged uid/gid, for every thread (glibc's set*id broadcast), with no
/// supplementary groups. Saved ids go too: there is no way back.
pub fn drop_privileges(uid: u32, gid: u32) -> Result<(), JailError> {
    // SAFETY: plain credential calls with valid arguments.
    unsafe {
        check(libc::setgroups(0, std::ptr::null())).map_err(sys("setgroups"))?;
        check(libc::setresgid(gid, gid, gid)).map_err(sys("setresgid"))?;
        check(libc::setresuid(uid, uid, uid)).map_err(sys("setresuid"))?;
    }
    if PARENT_ALIVE.load(Ordering::SeqCst) >= 0 {
        die_with_parent()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
