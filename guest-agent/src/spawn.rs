//! Starting a container process without copying the agent.
//!
//! `fork` copies the agent's page tables, write-protects all its memory (each page the
//! agent or the child then writes costs a copy-on-write fault) and `execve` tears the
//! copy down again. In a guest whose kernel code is emulated that was about a second
//! per container. Here the process is made with `clone(CLONE_VM | CLONE_VFORK)`, as
//! `posix_spawn` does: it runs in the agent's memory, on a stack of its own, until it
//! execs or exits, while the thread that made it stays suspended. That thread is a pool
//! worker of its own ([`crate::pool`]), since a container's init waits for "start"
//! before it execs, and the suspended thread's TLS is the one the child runs with.
//!
//! `unshare(CLONE_NEWPID)` and `setns(CLONE_NEWPID)` only change the PID namespace of
//! the calling thread's future children, so the spawning thread does them too: the
//! agent's other threads are unaffected.

use std::convert::Infallible;
use std::io::{self, Read};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{mpsc, Arc, OnceLock};

use nix::sched::{setns, unshare, CloneFlags};

/// Why a container process could not be started.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    /// A system call failed.
    #[error("{op} failed: {cause}")]
    Sys {
        /// Operation.
        op: &'static str,
        /// Cause.
        cause: io::Error,
    },
    /// The process died before it reported that it runs.
    #[error("the container process died as it started")]
    Died,
}

fn sys(op: &'static str) -> impl FnOnce(io::Error) -> SpawnError {
    move |cause| SpawnError::Sys { op, cause }
}

/// The PID namespace of a new process.
pub enum PidNs {
    /// The agent's.
    Inherit,
    /// A new one, whose PID 1 the process is.
    New,
    /// An existing one (a container's, for an exec).
    Join(OwnedFd),
}

/// Stack size of the new process until it execs.
const CHILD_STACK: usize = 1 << 20;

/// An anonymous stack mapping with a guard page below it.
struct ChildStack {
    base: *mut libc::c_void,
    len: usize,
}

impl ChildStack {
    fn new(size: usize) -> io::Result<ChildStack> {
        let guard = 4096;
        let len = size + guard;
        // SAFETY: a fresh private anonymous mapping; nothing else refers to it.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let stack = ChildStack { base, len };
        // SAFETY: the guard page is the first page of our own mapping.
        if unsafe { libc::mprotect(base, guard, libc::PROT_NONE) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(stack)
    }

    /// The initial stack pointer (stacks grow down; the end is page-aligned).
    fn top(&self) -> *mut libc::c_void {
        // SAFETY: one past the end of our mapping, which `clone` takes as the stack top.
        unsafe { self.base.cast::<u8>().add(self.len).cast() }
    }
}

impl Drop for ChildStack {
    fn drop(&mut self) {
        // SAFETY: unmaps our own mapping; its only user (the child) has exec'd or exited.
        unsafe { libc::munmap(self.base, self.len) };
    }
}

/// What the new process reads at its start, kept alive by the suspended spawning thread.
struct Start<'a, F> {
    run: &'a F,
    sync: &'a UnixStream,
}

// `Fn() -> !` is not stable: `run` returns the uninhabited `Infallible` instead, which the
// empty match turns into the `c_int` clone wants (rustc sees the match cannot be reached).
#[expect(unreachable_code, reason = "run never returns")]
extern "C" fn child_main<F: Fn(&UnixStream) -> Infallible>(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the `Start<F>` that `clone_child::<F>` passed, which outlives
    // this process's use of the shared memory (the spawning thread is suspended until
    // we exec or exit).
    let start = unsafe { &*arg.cast::<Start<'_, F>>() };
    match (start.run)(start.sync) {}
}

/// Makes the process in the calling thread; returns once it has exec'd or exited.
fn clone_child<F: Fn(&UnixStream) -> Infallible>(
    run: &F,
    sync: &UnixStream,
    tid: &AtomicI32,
) -> io::Result<()> {
    let stack = ChildStack::new(CHILD_STACK)?;
    let start = Start { run, sync };
    let flags = libc::CLONE_VM | libc::CLONE_VFORK | libc::CLONE_PARENT_SETTID | libc::SIGCHLD;
    // SAFETY: the child runs `child_main::<F>` on its own stack, reads `start` (alive
    // until clone returns, which CLONE_VFORK delays until the child execs or exits) and
    // never returns into this frame. The kernel stores the child's pid in `tid` before
    // the child runs.
    let r = unsafe {
        libc::clone(
            child_main::<F>,
            stack.top(),
            flags,
            std::ptr::from_ref(&start).cast_mut().cast(),
            tid.as_ptr(),
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Points the calling thread's future children at the agent's own PID namespace again
/// (undoing `unshare`/`setns(CLONE_NEWPID)`).
fn restore_pid_ns() -> io::Result<()> {
    static OWN: OnceLock<Option<OwnedFd>> = OnceLock::new();
    // The active PID namespace of every agent thread is the agent's, whatever its
    // children's is.
    let own = OWN.get_or_init(|| {
        std::fs::File::open("/proc/self/ns/pid")
            .ok()
            .map(Into::into)
    });
    let fd = own
        .as_ref()
        .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOENT))?;
    setns(fd, CloneFlags::CLONE_NEWPID).map_err(io::Error::from)
}

/// Starts a process in `pid_ns` that runs `run` with `theirs`, its end of the sync
/// socket; `ours` is the agent's end. `run` never returns: it execs or exits, within the
/// limits [`crate::child`] describes. Returns the process's pid (in the agent's PID
/// namespace) as soon as it runs.
pub fn spawn<F>(
    pid_ns: PidNs,
    run: F,
    theirs: UnixStream,
    ours: &mut UnixStream,
) -> Result<i32, SpawnError>
where
    F: Fn(&UnixStream) -> Infallible + Send + 'static,
{
    let tid = Arc::new(AtomicI32::new(0));
    let (failed, failure) = mpsc::channel::<SpawnError>();
    let child_tid = tid.clone();
    let go = move || {
        let r = match &pid_ns {
            PidNs::Inherit => Ok(()),
            PidNs::New => unshare(CloneFlags::CLONE_NEWPID)
                .map_err(|e| sys("unshare(CLONE_NEWPID)")(e.into())),
            PidNs::Join(fd) => {
                setns(fd, CloneFlags::CLONE_NEWPID).map_err(|e| sys("setns(pid)")(e.into()))
            }
        };
        let r = r.and_then(|()| clone_child(&run, &theirs, &child_tid).map_err(sys("clone")));
        if let Err(e) = r {
            let _ = failed.send(e);
        }
        // Back to the agent's own PID namespace for this (pooled) thread's later children.
        if !matches!(pid_ns, PidNs::Inherit) && restore_pid_ns().is_err() {
            crate::pool::retire_this_thread();
        }
        // Dropping `run` and `theirs` here closes the agent's copies of the child's
        // ends (its stdio, its sync socket): the agent sees EOF once the child exec'd.
    };
    crate::pool::run(go).map_err(sys("start the spawning thread"))?;
    let mut b = [0u8; 1];
    match ours.read(&mut b) {
        Ok(1) if b[0] == b'P' => Ok(tid.load(Ordering::SeqCst)),
        Ok(_) => Err(failure.recv().unwrap_or(SpawnError::Died)),
        Err(e) => Err(sys("read from the container process")(e)),
    }
}
