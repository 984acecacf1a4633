//! Processes the agent started: their exit status and standard streams, and
//! the reaper that turns SIGCHLD into exit statuses.
//!
//! A process is *done* when it has exited **and** every attached output stream
//! has been copied to its connection up to EOF; only then is its exit reported
//! (Wait replies and Exit events), so no output is lost at exit.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use agent_protocol::{ExitInfo, ExitStatus, Stream, StreamKind};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::wait::WaitStatus;
use nix::unistd::Pid;

/// Errors about a process's streams.
#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    /// The stream was not requested when the process was created.
    #[error("stream {0:?} was not requested for this process")]
    NotConfigured(StreamKind),
    /// Someone already attached the stream.
    #[error("stream {0:?} is already attached")]
    AlreadyAttached(StreamKind),
}

/// The agent's ends of a process's standard streams.
#[derive(Debug, Default)]
pub struct AgentStdio {
    /// Write end of the stdin pipe (or a dup of the terminal).
    pub stdin: Option<OwnedFd>,
    /// Read end of the stdout pipe (or a dup of the terminal).
    pub stdout: Option<OwnedFd>,
    /// Read end of the stderr pipe.
    pub stderr: Option<OwnedFd>,
    /// Terminal master, for resizing.
    pub tty: Option<Arc<OwnedFd>>,
}

#[derive(Debug, Default)]
struct ProcState {
    exit: Option<ExitStatus>,
    outputs_pending: u32,
    final_exit: Option<ExitInfo>,
    stdio: AgentStdio,
    attached: [bool; 3],
    stdin_conn: Option<Stream>,
}

/// One process started by the agent.
#[derive(Debug)]
pub struct Proc {
    /// Pid in the agent's PID namespace.
    pub pid: i32,
    /// Owning container.
    pub container_id: String,
    /// `None` for the container's main process.
    pub exec_id: Option<String>,
    state: Mutex<ProcState>,
    cond: Condvar,
}

fn idx(kind: StreamKind) -> usize {
    match kind {
        StreamKind::Stdin => 0,
        StreamKind::Stdout => 1,
        StreamKind::Stderr => 2,
    }
}

impl Proc {
    /// A process whose exit is not known yet.
    pub fn new(pid: i32, container_id: &str, exec_id: Option<&str>, stdio: AgentStdio) -> Self {
        let outputs_pending = stdio.stdout.is_some() as u32 + stdio.stderr.is_some() as u32;
        Proc {
            pid,
            container_id: container_id.to_string(),
            exec_id: exec_id.map(str::to_string),
            state: Mutex::new(ProcState {
                outputs_pending,
                stdio,
                ..Default::default()
            }),
            cond: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, ProcState> {
        // A poisoned lock only means another thread panicked mid-update of
        // plain data; the data is still usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn wait_until(&self, mut done: impl FnMut(&ProcState) -> bool) -> MutexGuard<'_, ProcState> {
        let mut st = self.lock();
        while !done(&st) {
            st = self.cond.wait(st).unwrap_or_else(|e| e.into_inner());
        }
        st
    }

    /// Records the exit status (from the reaper).
    pub fn set_exit(&self, status: ExitStatus) {
        let mut st = self.lock();
        st.exit = Some(status);
        // The process can no longer read stdin: unblock the copier.
        if let Some(c) = st.stdin_conn.take() {
            let _ = c.shutdown();
        }
        self.cond.notify_all();
    }

    /// The exit status, if the process has exited.
    pub fn exit_status(&self) -> Option<ExitStatus> {
        self.lock().exit
    }

    /// Hands out the agent's end of a stream, once.
    pub fn take_stream(&self, kind: StreamKind) -> Result<OwnedFd, ProcError> {
        let mut st = self.lock();
        if st.attached[idx(kind)] {
            return Err(ProcError::AlreadyAttached(kind));
        }
        let fd = match kind {
            StreamKind::Stdin => st.stdio.stdin.take(),
            StreamKind::Stdout => st.stdio.stdout.take(),
            StreamKind::Stderr => st.stdio.stderr.take(),
        }
        .ok_or(ProcError::NotConfigured(kind))?;
        st.attached[idx(kind)] = true;
        Ok(fd)
    }

    /// Remembers the stdin connection so that it is closed at exit.
    pub fn set_stdin_conn(&self, conn: Stream) {
        let mut st = self.lock();
        if st.exit.is_some() {
            let _ = conn.shutdown();
        } else {
            st.stdin_conn = Some(conn);
        }
    }

    /// An output stream reached EOF and was fully written to its connection.
    pub fn output_done(&self) {
        let mut st = self.lock();
        st.outputs_pending = st.outputs_pending.saturating_sub(1);
        self.cond.notify_all();
    }

    /// Drops output streams nobody attached (container removal), so that
    /// waiters are not held up by them.
    pub fn abandon_unattached_outputs(&self) {
        let mut st = self.lock();
        let dropped =
            st.stdio.stdout.take().is_some() as u32 + st.stdio.stderr.take().is_some() as u32;
        st.outputs_pending = st.outputs_pending.saturating_sub(dropped);
        self.cond.notify_all();
    }

    /// Blocks until the process exited and its output was delivered.
    pub fn wait_exited_and_drained(&self) -> ExitStatus {
        let st = self.wait_until(|s| s.outputs_pending == 0 && s.exit.is_some());
        st.exit.unwrap_or(ExitStatus::Code(-1))
    }

    /// Publishes the final exit report.
    pub fn set_final(&self, info: ExitInfo) {
        let mut st = self.lock();
        st.final_exit = Some(info);
        st.stdio = AgentStdio::default();
        self.cond.notify_all();
    }

    /// Blocks until the final exit report is available.
    pub fn wait_final(&self) -> ExitInfo {
        let st = self.wait_until(|s| s.final_exit.is_some());
        st.final_exit.unwrap_or(ExitInfo {
            status: ExitStatus::Code(-1),
            oom_killed: false,
        })
    }

    /// The terminal master, if the process has a terminal.
    pub fn tty(&self) -> Option<Arc<OwnedFd>> {
        self.lock().stdio.tty.clone()
    }
}

/// Maps pids to processes and records exit statuses.
#[derive(Debug, Default)]
pub struct Reaper {
    table: Mutex<HashMap<i32, Arc<Proc>>>,
}

impl Reaper {
    /// Runs `start` (which starts a child and returns its pid) with the table
    /// locked, then registers the process built by `make`. Holding the lock
    /// across the start means the reaper cannot collect the child's exit before
    /// the child is registered.
    pub fn spawn_registered<E>(
        &self,
        start: impl FnOnce() -> Result<i32, E>,
        make: impl FnOnce(i32) -> Proc,
    ) -> Result<Arc<Proc>, E> {
        let mut table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        let pid = start()?;
        let proc = Arc::new(make(pid));
        table.insert(pid, proc.clone());
        Ok(proc)
    }

    /// Collects every exited child (registered or orphaned).
    /// Whether `pid` is a registered process that has not been reaped.
    pub fn has(&self, pid: i32) -> bool {
        self.table
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(&pid)
    }

    /// Puts `proc` in the place of the registered, unreaped `pid` (a prepared init taken
    /// over by a container); `None` if `pid` was reaped already.
    pub fn replace(&self, pid: i32, proc: Proc) -> Option<Arc<Proc>> {
        let mut table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        let slot = table.get_mut(&pid)?;
        *slot = Arc::new(proc);
        Some(slot.clone())
    }

    pub fn reap(&self) {
        loop {
            let (pid, status) = match wait_any() {
                Ok(WaitStatus::Exited(pid, code)) => (pid, ExitStatus::Code(code)),
                Ok(WaitStatus::Signaled(pid, sig, _)) => (pid, ExitStatus::Signal(sig as i32)),
                Ok(WaitStatus::StillAlive) | Err(nix::errno::Errno::ECHILD) => return,
                Ok(_) => continue,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(_) => return,
            };
            let proc = self
                .table
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&pid.as_raw());
            if let Some(p) = proc {
                p.set_exit(status);
            }
        }
    }
}

/// `waitpid(-1, WNOHANG)`, marking each reaped child's own page faults and kernel time
/// when tracing (the child's rusage, from `wait4`).
fn wait_any() -> nix::Result<WaitStatus> {
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value of this plain C struct.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: wait4 writes the status and rusage we own.
    let pid = unsafe { libc::wait4(-1, &mut status, libc::WNOHANG, &mut ru) };
    if pid < 0 {
        return Err(nix::errno::Errno::last());
    }
    if pid == 0 {
        return Ok(WaitStatus::StillAlive);
    }
    if crate::trace::enabled() {
        let stime_ms = ru.ru_stime.tv_sec * 1000 + ru.ru_stime.tv_usec / 1000;
        let utime_ms = ru.ru_utime.tv_sec * 1000 + ru.ru_utime.tv_usec / 1000;
        crate::trace::mark(&format!(
            "reaped {pid}: its pf={} majflt={} sys={stime_ms} ms user={utime_ms} ms",
            ru.ru_minflt, ru.ru_majflt
        ));
    }
    WaitStatus::from_raw(Pid::from_raw(pid), status)
}

/// The signals the agent handles synchronously in [`signal_loop`]. Block them
/// in the main thread before any other thread starts, so that every thread
/// inherits the mask (children unblock them before exec).
pub fn handled_signals() -> SigSet {
    let mut set = SigSet::empty();
    set.add(Signal::SIGCHLD);
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGINT);
    set
}

/// Waits for signals forever: SIGCHLD reaps, SIGTERM/SIGINT call `on_term`.
pub fn signal_loop(reaper: Arc<Reaper>, on_term: impl Fn()) -> ! {
    let set = handled_signals();
    loop {
        match set.wait() {
            Ok(Signal::SIGCHLD) => reaper.reap(),
            Ok(_) => on_term(),
            Err(_) => {}
        }
    }
}
