//! What a new container process does before `execve`: join its cgroup and
//! namespaces, (container init only) build the root filesystem and wait for
//! "start", then set up stdio and identity and exec the OCI process.
//!
//! The process runs in the agent's memory until it execs (see [`crate::spawn`]), with
//! the agent's spawning thread suspended. Everything is prepared by the agent in a
//! [`ChildPlan`] and an [`ExecTarget`]; the child makes system calls and only
//! allocations it frees again before `execve` or `_exit` (anything still held then
//! would stay allocated in the agent). Identity changes are raw system calls: glibc's
//! wrappers would apply them to the agent's threads.
//!
//! Parent/child sync runs over a socketpair: the child first sends `P` (it runs; the
//! agent takes its pid), the init child sends `R` when its filesystem is ready and
//! waits for `S`; any child sends `E<message>` on failure and exits. A successful
//! `execve` closes the (close-on-exec) socket, which the agent sees as EOF.

use std::convert::Infallible;
use std::ffi::{CString, OsStr};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;

use nix::mount::MsFlags;
use nix::sched::{setns, unshare, CloneFlags};
use nix::sys::signal::{signal, sigprocmask, SigHandler, SigSet, SigmaskHow, Signal};
use nix::unistd::{chdir, sethostname, setsid};

use crate::mounts::{self, DeviceOp, MountError, MountOp};
use crate::seccomp::{Filter, SeccompError};
use crate::security::{self, Identity, SecurityError};
use crate::stdio::ChildStdio;

/// Why a child could not exec its process.
#[derive(Debug, thiserror::Error)]
pub enum ChildError {
    /// Filesystem setup failed.
    #[error(transparent)]
    Mount(#[from] MountError),
    /// Identity setup failed.
    #[error(transparent)]
    Security(#[from] SecurityError),
    /// The seccomp filter could not be installed.
    #[error(transparent)]
    Seccomp(#[from] SeccompError),
    /// The container's user namespace could not be made.
    #[error(transparent)]
    Userns(#[from] crate::userns::UsernsError),
    /// A system call failed.
    #[error("{op} failed: {cause}")]
    Sys {
        /// Operation.
        op: &'static str,
        /// Cause.
        cause: io::Error,
    },
    /// The program could not be executed.
    #[error("cannot execute {program:?}: {cause}")]
    Exec {
        /// argv\[0\].
        program: String,
        /// Cause.
        cause: io::Error,
    },
}

fn sys(op: &'static str) -> impl FnOnce(nix::Error) -> ChildError {
    move |e| ChildError::Sys {
        op,
        cause: e.into(),
    }
}

/// The process to exec.
#[derive(Debug)]
pub struct ProcessPlan {
    /// argv.
    pub args: Vec<CString>,
    /// Environment.
    pub env: Vec<CString>,
    /// Directories to search for a bare argv\[0\].
    pub path: Vec<PathBuf>,
    /// Working directory (in the container).
    pub cwd: PathBuf,
    /// Who to run as.
    pub identity: Identity,
    /// Standard streams.
    pub stdio: ChildStdio,
    /// The container's seccomp filter.
    pub seccomp: Option<Filter>,
    /// `process.oomScoreAdj`.
    pub oom_score_adj: Option<i32>,
}

/// The container's root filesystem and hostname (init only).
#[derive(Debug)]
pub struct RootPlan {
    /// Rootfs directory in the agent's view.
    pub rootfs: PathBuf,
    /// The spec's `rootfsPropagation` for `/`, applied once the init is in its root (until
    /// then the whole mount namespace is private, so that the rootfs can be made the root).
    pub propagation: Option<MsFlags>,
    /// Mounts.
    pub mounts: Vec<MountOp>,
    /// Device nodes.
    pub devices: Vec<DeviceOp>,
    /// Masked paths.
    pub masked: Vec<String>,
    /// Read-only paths.
    pub readonly: Vec<String>,
    /// Remount the root read-only at the end.
    pub root_readonly: bool,
    /// Skip pivot_root (MS_MOVE + chroot).
    pub no_pivot: bool,
    /// Hostname (needs a UTS namespace).
    pub hostname: Option<String>,
    /// sysctl key/values.
    pub sysctl: Vec<(String, String)>,
}

/// Everything a child does, prepared by the agent.
#[derive(Debug)]
pub struct ChildPlan {
    /// `cgroup.procs` files to join.
    pub cgroup_procs: Vec<File>,
    /// Namespaces to join, in order.
    pub join: Vec<(OwnedFd, CloneFlags)>,
    /// Namespaces to create (the PID namespace is set up by the spawning thread).
    pub unshare: CloneFlags,
    /// Root filesystem, for a container's init.
    pub root: Option<RootPlan>,
    /// Make a new user namespace once the root is built (container init; see
    /// [`crate::userns`]).
    pub new_userns: bool,
    /// Wait for `S` before exec (container init).
    pub wait_for_start: bool,
    /// The process.
    pub process: ProcessPlan,
}

/// What `execve` gets, built before the child starts (the child must not leave
/// allocations behind in the agent's memory): the paths to try, in order, and the
/// NULL-terminated argv and envp arrays, pointing into the target's own copies of the
/// plan's strings (their heap buffers stay put when the target moves).
pub struct ExecTarget {
    candidates: Vec<CString>,
    searched: bool,
    argv: Vec<*const libc::c_char>,
    envp: Vec<*const libc::c_char>,
    _args: Vec<CString>,
    _env: Vec<CString>,
}

impl std::fmt::Debug for ExecTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExecTarget")
            .field("candidates", &self.candidates)
            .finish_non_exhaustive()
    }
}

// SAFETY: the raw pointers point only into the target's own strings, which are never
// changed or freed while it exists; sharing or moving it between threads is as safe as
// sharing those strings.
unsafe impl Send for ExecTarget {}
// SAFETY: as above; the target is never mutated after `new`.
unsafe impl Sync for ExecTarget {}

impl ExecTarget {
    /// The target of `p`: argv\[0\] itself if it holds a `/`, else argv\[0\] in each
    /// directory of `p.path`.
    pub fn new(p: &ProcessPlan) -> ExecTarget {
        let prog = p.args.first().map(|a| a.as_bytes()).unwrap_or_default();
        let searched = !prog.contains(&b'/');
        let candidates = if searched {
            p.path
                .iter()
                .filter_map(|dir| {
                    let mut cand = dir.as_os_str().as_bytes().to_vec();
                    cand.push(b'/');
                    cand.extend_from_slice(prog);
                    CString::new(cand).ok()
                })
                .collect()
        } else {
            p.args.first().cloned().into_iter().collect()
        };
        let pointers = |v: &[CString]| -> Vec<*const libc::c_char> {
            v.iter()
                .map(|s| s.as_ptr())
                .chain(std::iter::once(std::ptr::null()))
                .collect()
        };
        let (args, env) = (p.args.clone(), p.env.clone());
        ExecTarget {
            candidates,
            searched,
            argv: pointers(&args),
            envp: pointers(&env),
            _args: args,
            _env: env,
        }
    }

    /// Tries each candidate; returns only if none could be executed, with the most
    /// telling error (a search keeps going past ENOENT/ENOTDIR).
    fn exec(&self) -> io::Error {
        let mut err = io::Error::from_raw_os_error(libc::ENOENT);
        for cand in &self.candidates {
            // SAFETY: a NUL-terminated path and NULL-terminated arrays of NUL-terminated
            // strings, all owned by this target, which outlives the call.
            unsafe { libc::execve(cand.as_ptr(), self.argv.as_ptr(), self.envp.as_ptr()) };
            let e = io::Error::last_os_error();
            if !self.searched || !matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ENOTDIR)) {
                err = e;
            }
        }
        err
    }
}

/// What a process spawned for `plan` runs (see [`crate::spawn`]); its exec target is
/// built here, before the process starts.
pub fn runner(plan: ChildPlan) -> impl Fn(&UnixStream) -> Infallible + Send + 'static {
    let target = ExecTarget::new(&plan.process);
    move |sync| run(&plan, &target, sync)
}

/// Runs in the new process; never returns. Everything it allocated is freed again
/// before it exits.
fn run(plan: &ChildPlan, target: &ExecTarget, sync: &UnixStream) -> ! {
    run_with(sync, |sync| setup(plan, target, sync))
}

/// Sends `P`, runs `setup`, which execs or fails, and reports its failure as
/// `E<message>`; never returns.
pub(crate) fn run_with(
    sync: &UnixStream,
    setup: impl FnOnce(&mut &UnixStream) -> Result<Infallible, ChildError>,
) -> ! {
    let mut sync = sync;
    if sync.write_all(b"P").is_ok() {
        let Err(e) = setup(&mut sync);
        let mut msg = b"E".to_vec();
        msg.extend_from_slice(e.to_string().as_bytes());
        let _ = sync.write_all(&msg);
        drop(msg);
        drop(e);
    }
    // SAFETY: _exit is async-signal-safe and skips the parent's atexit
    // handlers and stdio buffers, which belong to the agent.
    unsafe { libc::_exit(1) }
}

/// Closes every fd except 0-2 and `keep`, so that fds another thread opened
/// for another child do not leak into this one.
pub(crate) fn close_other_fds(mut keep: Vec<RawFd>) {
    keep.retain(|&fd| fd > 2);
    keep.sort_unstable();
    keep.dedup();
    let mut first: libc::c_uint = 3;
    for fd in keep {
        let fd = fd as libc::c_uint;
        if fd > first {
            close_range(first, fd - 1);
        }
        first = fd + 1;
    }
    close_range(first, libc::c_uint::MAX);
}

fn close_range(first: libc::c_uint, last: libc::c_uint) {
    // SAFETY: closes fds in the range; nothing in this single-threaded child
    // refers to them afterwards (the kept fds are outside the range).
    unsafe { libc::syscall(libc::SYS_close_range, first, last, 0 as libc::c_uint) };
}

fn setup(
    plan: &ChildPlan,
    target: &ExecTarget,
    sync: &mut &UnixStream,
) -> Result<Infallible, ChildError> {
    let mut keep: Vec<RawFd> = plan.process.stdio.fds.to_vec();
    keep.push(sync.as_raw_fd());
    keep.extend(plan.cgroup_procs.iter().map(|f| f.as_raw_fd()));
    keep.extend(plan.join.iter().map(|(fd, _)| fd.as_raw_fd()));
    keep.extend(crate::trace::fd());
    close_other_fds(keep);
    crate::trace::mark("child: running");

    for mut f in plan.cgroup_procs.iter() {
        f.write_all(b"0").map_err(|cause| ChildError::Sys {
            op: "join cgroup",
            cause,
        })?;
    }
    set_oom_score_adj(plan.process.oom_score_adj)?;
    for (fd, kind) in &plan.join {
        setns(fd, *kind).map_err(sys("setns"))?;
    }
    if !plan.unshare.is_empty() {
        unshare(plan.unshare).map_err(sys("unshare"))?;
        crate::trace::mark("child: namespaces made");
    }
    if let Some(root) = &plan.root {
        build_root(root)?;
    }
    if plan.new_userns {
        crate::userns::enter_new(sync)?;
    }
    if plan.wait_for_start {
        wait_for_start(sync)?;
    }
    exec_process(
        &plan.process,
        target,
        plan.process.stdio.fds,
        sync.as_raw_fd(),
    )
}

/// Writes `adj` to `/proc/self/oom_score_adj` (the agent's `/proc`: call it before the
/// container's root is entered, while the process still has `CAP_SYS_RESOURCE`, which
/// lowering it takes). Formats on the stack: the child allocates nothing it keeps.
pub(crate) fn set_oom_score_adj(adj: Option<i32>) -> Result<(), ChildError> {
    let Some(adj) = adj else {
        return Ok(());
    };
    let mut buf = [0u8; 12];
    let err = |cause| ChildError::Sys {
        op: "write /proc/self/oom_score_adj",
        cause,
    };
    let len = {
        let mut rest = &mut buf[..];
        write!(rest, "{adj}").map_err(err)?;
        12 - rest.len()
    };
    std::fs::OpenOptions::new()
        .write(true)
        .open("/proc/self/oom_score_adj")
        .and_then(|mut f| f.write_all(&buf[..len]))
        .map_err(err)
}

/// A container's init: reports `R` (its filesystem is ready) and waits for `S`; exits
/// quietly if the agent drops the container instead.
pub(crate) fn wait_for_start(sync: &mut &UnixStream) -> Result<(), ChildError> {
    sync.write_all(b"R").map_err(|cause| ChildError::Sys {
        op: "report ready",
        cause,
    })?;
    let mut b = [0u8; 1];
    match sync.read(&mut b) {
        Ok(1) if b[0] == b'S' => {
            crate::trace::mark("child: started");
            Ok(())
        }
        // The agent dropped the container before starting it.
        // SAFETY: see `run`.
        _ => unsafe { libc::_exit(0) },
    }
}

fn build_root(r: &RootPlan) -> Result<(), ChildError> {
    mounts::set_root_propagation(MsFlags::MS_PRIVATE | MsFlags::MS_REC)?;
    mounts::bind_rootfs(&r.rootfs)?;
    for m in &r.mounts {
        mounts::do_mount(m)?;
    }
    crate::trace::mark("child: mounts made");
    mounts::create_devices(&r.rootfs, &r.devices)?;
    crate::trace::mark("child: devices made");
    mounts::enter_rootfs(&r.rootfs, r.no_pivot)?;
    crate::trace::mark("child: root entered");
    for (k, v) in &r.sysctl {
        let p = PathBuf::from("/proc/sys").join(k.replace('.', "/"));
        std::fs::write(&p, v).map_err(|cause| ChildError::Sys {
            op: "write sysctl",
            cause,
        })?;
    }
    let root = std::path::Path::new("/");
    mounts::mask_paths(root, &r.masked)?;
    crate::trace::mark("child: paths masked");
    mounts::readonly_paths(root, &r.readonly)?;
    crate::trace::mark("child: paths read-only");
    finish_root(r.root_readonly, r.propagation, r.hostname.as_deref())
}

/// The last steps in the container's root: `/` read-only if asked, its propagation (after
/// the masked and read-only paths: binds from an unbindable `/` would fail), the hostname.
pub(crate) fn finish_root(
    root_readonly: bool,
    propagation: Option<MsFlags>,
    hostname: Option<&str>,
) -> Result<(), ChildError> {
    let root = std::path::Path::new("/");
    if root_readonly {
        mounts::remount_ro(root)?;
    }
    if let Some(flags) = propagation {
        mounts::set_propagation(root, flags)?;
    }
    if let Some(h) = hostname {
        sethostname(h).map_err(sys("sethostname"))?;
    }
    crate::trace::mark("child: root built (masked, read-only paths)");
    Ok(())
}

/// Makes `stdio` (fds of this process) its 0, 1 and 2, drops everything else, takes the
/// process's identity and execs it.
pub(crate) fn exec_process(
    p: &ProcessPlan,
    target: &ExecTarget,
    stdio: [RawFd; 3],
    sync_fd: RawFd,
) -> Result<Infallible, ChildError> {
    crate::trace::mark("child: stdio, identity");
    for (target, &fd) in stdio.iter().enumerate() {
        // SAFETY: dup2 on fds this child owns; `fd` was kept open by
        // `close_other_fds` and `target` is 0, 1 or 2.
        if unsafe { libc::dup2(fd, target as RawFd) } < 0 {
            return Err(ChildError::Sys {
                op: "dup2 stdio",
                cause: io::Error::last_os_error(),
            });
        }
    }
    // Only 0-2 and the (close-on-exec) sync socket and trace fd go past this point.
    close_other_fds([sync_fd].into_iter().chain(crate::trace::fd()).collect());

    setsid().map_err(sys("setsid"))?;
    if p.stdio.tty {
        // SAFETY: TIOCSCTTY takes an integer argument; fd 0 is the terminal.
        if unsafe { libc::ioctl(0, libc::TIOCSCTTY, 0) } < 0 {
            return Err(ChildError::Sys {
                op: "set controlling terminal",
                cause: io::Error::last_os_error(),
            });
        }
    }
    // Before dropping privileges (the directory may be root-only) and again
    // after (it may be on a root-squashed mount).
    let early_cd = chdir(&p.cwd).is_ok();
    // Without no_new_privileges, installing a filter needs CAP_SYS_ADMIN: do it while the
    // process still has its privileges (as runc does); the identity changes that follow
    // then run under the filter.
    let nnp = p.identity.no_new_privileges;
    if let (Some(f), false) = (&p.seccomp, nnp) {
        f.install()?;
    }
    security::apply_identity(&p.identity)?;
    if !early_cd {
        chdir(&p.cwd).map_err(sys("chdir to the process cwd"))?;
    }
    // The agent blocks the signals it handles and Rust ignores SIGPIPE;
    // both would be inherited through execve.
    sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None)
        .map_err(sys("sigprocmask"))?;
    // SAFETY: restoring the default disposition installs no handler.
    unsafe { signal(Signal::SIGPIPE, SigHandler::SigDfl) }.map_err(sys("reset SIGPIPE"))?;
    // With no_new_privileges set (apply_identity did), the filter goes on last, so that as
    // few calls as possible run under it before execve.
    if let (Some(f), true) = (&p.seccomp, nnp) {
        f.install()?;
    }

    crate::trace::mark("child: execve");
    let err = target.exec();
    let bytes = p.args.first().map(|a| a.as_bytes()).unwrap_or_default();
    Err(ChildError::Exec {
        program: OsStr::from_bytes(bytes).to_string_lossy().into_owned(),
        cause: err,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oom_score_adj_is_written_to_proc() {
        // Raising it needs no privilege; the test process keeps 500.
        set_oom_score_adj(Some(500)).unwrap();
        let now = std::fs::read_to_string("/proc/self/oom_score_adj").unwrap();
        assert_eq!(now.trim(), "500");
        set_oom_score_adj(None).unwrap();
        let still = std::fs::read_to_string("/proc/self/oom_score_adj").unwrap();
        assert_eq!(still.trim(), "500", "None leaves it alone");
    }
}
