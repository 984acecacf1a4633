//! Per-thread seccomp filters for the VMM process, the way Firecracker confines its threads.
//!
//! Each thread kind (main, vCPU, device event loop, API) gets its own allow-list
//! (`rules.rs`), installed by the thread itself once it starts its loop, after the setup
//! that needs more system calls (building the VM, binding sockets, spawning threads).
//! A call outside the list kills the whole process with SIGSYS.
//!
//! Nothing is confined unless the process asked for it with [`enable`] (only
//! `sandbox-vm-vmm` does): `boot`, the tests and other library users run unconfined.
//! Filters stack, and a thread inherits its creator's: so the main thread installs its
//! own only after it has spawned every other thread (in `Vm::run`).
//!
//! The self-test (`enable(.., Some(kind))`) makes the first thread of `kind` call a system
//! call outside every list right after installing its filter; it is a command-line switch
//! of the VMM process, which the guest cannot reach, and exists so tests can show that each
//! filter is really in force.

mod rules;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, TargetArch};

pub use rules::{allowed_by_any_thread, allowed_syscalls};

/// The kinds of threads in the VMM process; each has its own filter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ThreadKind {
    /// Builds the VM, then waits for the stop signal and tears the VM down.
    Main,
    /// Runs KVM_RUN and dispatches guest I/O.
    Vcpu,
    /// The device event loop (`event_loop.rs`).
    Devices,
    /// The control API (`api::server`).
    Api,
}

impl ThreadKind {
    pub const ALL: [ThreadKind; 4] = [Self::Main, Self::Vcpu, Self::Devices, Self::Api];

    pub fn name(self) -> &'static str {
        match self {
            Self::Main => "main",
            Self::Vcpu => "vcpu",
            Self::Devices => "devices",
            Self::Api => "api",
        }
    }
}

impl std::str::FromStr for ThreadKind {
    type Err = SeccompError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| SeccompError::UnknownThread(s.into()))
    }
}

/// What a call outside a thread's list does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Kill the process with SIGSYS (the default).
    Kill,
    /// Allow it and have the kernel log it (audit), to find what a host needs.
    Log,
}

/// Errors compiling or installing the filters.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("cannot compile the {0} thread's seccomp filter: {1}")]
    Compile(&'static str, String),
    #[error("the seccomp filters are already enabled")]
    AlreadyEnabled,
    #[error("unknown thread kind {0:?} (main, vcpu, devices or api)")]
    UnknownThread(String),
}

struct Confinement {
    filters: HashMap<ThreadKind, BpfProgram>,
    selftest: Option<ThreadKind>,
}

static CONFINEMENT: OnceLock<Confinement> = OnceLock::new();
/// Whether the self-test call was made already (only the first thread of its kind makes it).
static SELFTEST_DONE: AtomicBool = AtomicBool::new(false);

/// Compiles one thread kind's filter.
pub fn compile(kind: ThreadKind, mode: Mode) -> Result<BpfProgram, SeccompError> {
    let err = |e: seccompiler::BackendError| SeccompError::Compile(kind.name(), e.to_string());
    let rules = rules::rules(kind).map_err(err)?;
    let mismatch = match mode {
        Mode::Kill => SeccompAction::KillProcess,
        Mode::Log => SeccompAction::Log,
    };
    let filter = SeccompFilter::new(rules, mismatch, SeccompAction::Allow, TargetArch::x86_64)
        .map_err(err)?;
    filter.try_into().map_err(err)
}

/// Turns confinement on for this process: compiles every thread kind's filter now, so
/// each thread only has to install its own. `selftest` names a thread kind that then
/// makes a forbidden call (tests only).
pub fn enable(mode: Mode, selftest: Option<ThreadKind>) -> Result<(), SeccompError> {
    let mut filters = HashMap::new();
    for kind in ThreadKind::ALL {
        filters.insert(kind, compile(kind, mode)?);
    }
    CONFINEMENT
        .set(Confinement { filters, selftest })
        .map_err(|_| SeccompError::AlreadyEnabled)
}

/// Whether [`enable`] was called.
pub fn enabled() -> bool {
    CONFINEMENT.get().is_some()
}

/// Installs `kind`'s filter on the calling thread, if confinement is on. A thread that
/// cannot be confined must not run: the process exits with status 1 and one line.
pub fn confine_current(kind: ThreadKind) {
    let Some(c) = CONFINEMENT.get() else {
        return;
    };
    let Some(prog) = c.filters.get(&kind) else {
        return;
    };
    if let Err(e) = seccompiler::apply_filter(prog) {
        eprintln!(
            "sandbox-vm-vmm: cannot install the seccomp filter of a {} thread: {e}",
            kind.name()
        );
        // SAFETY: _exit ends the process at once; nothing is left half-done that matters
        // more than running unconfined would.
        unsafe { libc::_exit(1) };
    }
    if c.selftest == Some(kind) && !SELFTEST_DONE.swap(true, Ordering::SeqCst) {
        forbidden_call();
    }
}

/// A harmless system call that no thread's list allows.
fn forbidden_call() {
    let mut info = std::mem::MaybeUninit::<libc::sysinfo>::uninit();
    // SAFETY: sysinfo(2) only writes a `struct sysinfo` to the pointer, which is valid and
    // large enough.
    unsafe { libc::sysinfo(info.as_mut_ptr()) };
}

#[cfg(test)]
mod tests;
