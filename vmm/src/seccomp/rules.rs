//! The allow-list of each VMM thread kind (x86_64). Found by running the VMM under
//! `strace -f` booting the real guest with every device (blk, vsock, rng, net, virtio-fs
//! with virtiofsd) and driving the API, and by reading the code paths; see the table in
//! vmm/README.md. Each list holds only what its thread does after it is confined:
//! everything done while building the VM (opening files and /dev/kvm, creating the VM and
//! vCPUs, opening TAPs, binding sockets, spawning threads) happens before.

use std::collections::BTreeMap;

use seccompiler::{BackendError, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompRule};

use super::ThreadKind;

const KVMIO: u32 = 0xAE;

vmm_sys_util::ioctl_io_nr!(KVM_RUN, KVMIO, 0x80);
vmm_sys_util::ioctl_ior_nr!(KVM_GET_REGS, KVMIO, 0x81, kvm_bindings::kvm_regs);
vmm_sys_util::ioctl_ior_nr!(KVM_GET_SREGS, KVMIO, 0x83, kvm_bindings::kvm_sregs);
vmm_sys_util::ioctl_iowr_nr!(KVM_TRANSLATE, KVMIO, 0x85, kvm_bindings::kvm_translation);
// Snapshots (`persist`): a parked vCPU saves itself; the API thread saves the VM.
vmm_sys_util::ioctl_iowr_nr!(KVM_GET_CPUID2, KVMIO, 0x91, kvm_bindings::kvm_cpuid2);
vmm_sys_util::ioctl_ior_nr!(KVM_GET_MP_STATE, KVMIO, 0x98, kvm_bindings::kvm_mp_state);
vmm_sys_util::ioctl_ior_nr!(KVM_GET_XSAVE, KVMIO, 0xa4, kvm_bindings::kvm_xsave);
vmm_sys_util::ioctl_ior_nr!(KVM_GET_XCRS, KVMIO, 0xa6, kvm_bindings::kvm_xcrs);
vmm_sys_util::ioctl_ior_nr!(KVM_GET_DEBUGREGS, KVMIO, 0xa1, kvm_bindings::kvm_debugregs);
vmm_sys_util::ioctl_ior_nr!(KVM_GET_LAPIC, KVMIO, 0x8e, kvm_bindings::kvm_lapic_state);
vmm_sys_util::ioctl_iowr_nr!(KVM_GET_MSRS, KVMIO, 0x88, kvm_bindings::kvm_msrs);
vmm_sys_util::ioctl_ior_nr!(
    KVM_GET_VCPU_EVENTS,
    KVMIO,
    0x9f,
    kvm_bindings::kvm_vcpu_events
);
vmm_sys_util::ioctl_iowr_nr!(KVM_GET_IRQCHIP, KVMIO, 0x62, kvm_bindings::kvm_irqchip);
vmm_sys_util::ioctl_ior_nr!(KVM_GET_PIT2, KVMIO, 0x9f, kvm_bindings::kvm_pit_state2);
vmm_sys_util::ioctl_ior_nr!(KVM_GET_CLOCK, KVMIO, 0x7c, kvm_bindings::kvm_clock_data);

/// A system call and the rules one of which its arguments must match (none: any).
type Entry = (i64, Vec<SeccompRule>);

fn cond(arg: u8, op: SeccompCmpOp, value: u64) -> Result<SeccompCondition, BackendError> {
    SeccompCondition::new(arg, SeccompCmpArgLen::Qword, op, value)
}

/// `nr` with any arguments.
fn any(nr: libc::c_long) -> Result<Entry, BackendError> {
    Ok((nr, Vec::new()))
}

/// `nr` only when argument `arg` is one of `values`.
fn one_of(nr: libc::c_long, arg: u8, values: &[u64]) -> Result<Entry, BackendError> {
    let rules = values
        .iter()
        .map(|v| SeccompRule::new(vec![cond(arg, SeccompCmpOp::Eq, *v)?]))
        .collect::<Result<_, _>>()?;
    Ok((nr, rules))
}

/// `nr` only when argument `arg` has none of the bits of `mask`.
fn without_bits(nr: libc::c_long, arg: u8, mask: u64) -> Result<Entry, BackendError> {
    let rule = SeccompRule::new(vec![cond(arg, SeccompCmpOp::MaskedEq(mask), 0)?])?;
    Ok((nr, vec![rule]))
}

/// What every thread needs: memory (never executable), locks, time, signals, logging to
/// stderr, exiting.
fn common() -> Result<Vec<Entry>, BackendError> {
    let exec = libc::PROT_EXEC as u64;
    Ok(vec![
        any(libc::SYS_brk)?,
        without_bits(libc::SYS_mmap, 2, exec)?,
        without_bits(libc::SYS_mprotect, 2, exec)?,
        any(libc::SYS_munmap)?,
        any(libc::SYS_mremap)?,
        any(libc::SYS_madvise)?,
        any(libc::SYS_futex)?,
        any(libc::SYS_sched_yield)?,
        any(libc::SYS_clock_gettime)?,
        any(libc::SYS_clock_nanosleep)?,
        any(libc::SYS_nanosleep)?,
        any(libc::SYS_rt_sigreturn)?,
        any(libc::SYS_rt_sigprocmask)?,
        any(libc::SYS_sigaltstack)?,
        any(libc::SYS_getrandom)?,
        any(libc::SYS_getpid)?,
        any(libc::SYS_gettid)?,
        any(libc::SYS_read)?,
        any(libc::SYS_write)?,
        any(libc::SYS_writev)?,
        any(libc::SYS_close)?,
        // F_GETFD: Rust's debug builds check an fd is open before closing it; the flags:
        // std's set_nonblocking on some types; F_DUPFD_CLOEXEC: try_clone of an eventfd
        // (virtio-fs activation hands the backend clones of the queue eventfds).
        one_of(
            libc::SYS_fcntl,
            1,
            &[
                libc::F_GETFD,
                libc::F_GETFL,
                libc::F_SETFL,
                libc::F_DUPFD_CLOEXEC,
            ]
            .map(|c| c as u64),
        )?,
        any(libc::SYS_exit)?,
        any(libc::SYS_exit_group)?,
    ])
}

/// vCPU: KVM_RUN and the reads a crash diagnosis makes; guest I/O to the buses (serial
/// output to its file, eventfd kicks); a vhost-user device's requests at activation; the
/// reads of its own state a snapshot makes (`persist::vcpu::save`).
fn vcpu() -> Result<Vec<Entry>, BackendError> {
    Ok(vec![
        one_of(
            libc::SYS_ioctl,
            1,
            &[
                KVM_RUN(),
                KVM_GET_REGS(),
                KVM_GET_SREGS(),
                KVM_TRANSLATE(),
                KVM_GET_CPUID2(),
                KVM_GET_MP_STATE(),
                KVM_GET_XSAVE(),
                KVM_GET_XCRS(),
                KVM_GET_DEBUGREGS(),
                KVM_GET_LAPIC(),
                KVM_GET_MSRS(),
                KVM_GET_VCPU_EVENTS(),
            ]
            .map(u64::from)
            .into_iter()
            // A virtio-net driver's DRIVER_OK: the TAP gets the offloads it accepted.
            .chain([libc::TUNSETOFFLOAD])
            .collect::<Vec<_>>(),
        )?,
        any(libc::SYS_poll)?,
        any(libc::SYS_ppoll)?,
        // A driver's reset (a status write) resets the device on this thread: vsock's
        // muxer closes its streams and rearms its timer.
        any(libc::SYS_epoll_ctl)?,
        any(libc::SYS_shutdown)?,
        any(libc::SYS_timerfd_settime)?,
        any(libc::SYS_timerfd_gettime)?,
        // virtio-fs activation: the backend's call eventfds, then its vhost-user requests.
        any(libc::SYS_eventfd2)?,
        any(libc::SYS_sendmsg)?,
        any(libc::SYS_recvmsg)?,
        any(libc::SYS_recvfrom)?,
        any(libc::SYS_fsync)?,
    ])
}

/// The device event loop: epoll; block I/O; vsock's Unix sockets (accepting host
/// connections, connecting to `<uds>_<port>` for the guest: AF_UNIX only); TAP frames;
/// vhost-user replies.
fn devices() -> Result<Vec<Entry>, BackendError> {
    Ok(vec![
        any(libc::SYS_epoll_wait)?,
        any(libc::SYS_epoll_pwait)?,
        any(libc::SYS_epoll_ctl)?,
        // vsock: the handshake/credit timer.
        any(libc::SYS_timerfd_settime)?,
        any(libc::SYS_timerfd_gettime)?,
        any(libc::SYS_pread64)?,
        any(libc::SYS_pwrite64)?,
        any(libc::SYS_preadv)?,
        any(libc::SYS_pwritev)?,
        any(libc::SYS_readv)?,
        any(libc::SYS_lseek)?,
        any(libc::SYS_fsync)?,
        any(libc::SYS_fdatasync)?,
        one_of(libc::SYS_socket, 0, &[libc::AF_UNIX as u64])?,
        any(libc::SYS_connect)?,
        any(libc::SYS_accept4)?,
        any(libc::SYS_sendto)?,
        any(libc::SYS_recvfrom)?,
        any(libc::SYS_sendmsg)?,
        any(libc::SYS_recvmsg)?,
        any(libc::SYS_shutdown)?,
        any(libc::SYS_getsockopt)?,
        one_of(libc::SYS_ioctl, 1, &[libc::FIONBIO])?,
    ]
    .into_iter()
    .chain(privilege_drop()?)
    .collect())
}

/// A jailed VMM drops to an unprivileged uid/gid after the device and API threads
/// started; glibc makes every thread do the same calls (its set*id broadcast). Once
/// dropped, they cannot gain anything back.
fn privilege_drop() -> Result<Vec<Entry>, BackendError> {
    Ok(vec![
        any(libc::SYS_setgroups)?,
        any(libc::SYS_setresgid)?,
        any(libc::SYS_setresuid)?,
    ])
}

/// The API thread: its socket and connections, and kicking vCPU threads for a pause; a
/// snapshot (`persist::SnapshotSource::write`): the VM-wide KVM state, the snapshot
/// directory and files, the guest memory file's extents, the kernel file's hash.
fn api() -> Result<Vec<Entry>, BackendError> {
    Ok(vec![
        any(libc::SYS_poll)?,
        any(libc::SYS_ppoll)?,
        any(libc::SYS_accept4)?,
        any(libc::SYS_recvfrom)?,
        any(libc::SYS_sendto)?,
        any(libc::SYS_setsockopt)?,
        one_of(
            libc::SYS_ioctl,
            1,
            &[
                libc::FIONBIO,
                KVM_GET_IRQCHIP(),
                KVM_GET_PIT2(),
                KVM_GET_CLOCK(),
            ],
        )?,
        any(libc::SYS_tgkill)?,
        any(libc::SYS_mkdir)?,
        any(libc::SYS_mkdirat)?,
        any(libc::SYS_openat)?,
        any(libc::SYS_statx)?,
        any(libc::SYS_newfstatat)?,
        any(libc::SYS_fstat)?,
        any(libc::SYS_lseek)?,
        any(libc::SYS_pread64)?,
        any(libc::SYS_pwrite64)?,
        any(libc::SYS_ftruncate)?,
        any(libc::SYS_fsync)?,
        any(libc::SYS_rename)?,
        any(libc::SYS_renameat)?,
        any(libc::SYS_renameat2)?,
        any(libc::SYS_unlink)?,
        any(libc::SYS_unlinkat)?,
    ]
    .into_iter()
    .chain(privilege_drop()?)
    .collect())
}

/// Main, once every thread runs: wait for the stop, kick and join the vCPUs, stop the
/// event loop and the API thread, remove the API socket file.
fn main_thread() -> Result<Vec<Entry>, BackendError> {
    Ok(vec![
        any(libc::SYS_poll)?,
        any(libc::SYS_ppoll)?,
        any(libc::SYS_tgkill)?,
        any(libc::SYS_unlink)?,
        any(libc::SYS_unlinkat)?,
        // The devices, dropped after the run, end their streams: vsock's muxer closes its
        // connections (epoll_ctl, shutdown) and rearms its timer (found by a guest panic at
        // boot in e2e_faults).
        any(libc::SYS_epoll_ctl)?,
        any(libc::SYS_shutdown)?,
        any(libc::SYS_timerfd_settime)?,
        any(libc::SYS_timerfd_gettime)?,
    ])
}

/// The rules of `kind`, merged with the common list.
pub(super) fn rules(kind: ThreadKind) -> Result<BTreeMap<i64, Vec<SeccompRule>>, BackendError> {
    let own = match kind {
        ThreadKind::Main => main_thread()?,
        ThreadKind::Vcpu => vcpu()?,
        ThreadKind::Devices => devices()?,
        ThreadKind::Api => api()?,
    };
    let mut map: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for (nr, rules) in common()?.into_iter().chain(own) {
        // The same call twice (common and own): unconditional wins.
        match map.get_mut(&nr) {
            Some(existing) if existing.is_empty() || rules.is_empty() => existing.clear(),
            Some(existing) => existing.extend(rules),
            None => {
                map.insert(nr, rules);
            }
        }
    }
    Ok(map)
}

/// How many distinct system calls some VMM thread may make (what a guest escape into the
/// VMM process could reach at best).
pub fn allowed_by_any_thread() -> usize {
    let kinds = [
        ThreadKind::Main,
        ThreadKind::Vcpu,
        ThreadKind::Devices,
        ThreadKind::Api,
    ];
    let mut all = std::collections::BTreeSet::new();
    for k in kinds {
        all.extend(
            rules(k)
                .map(|r| r.into_keys().collect::<Vec<_>>())
                .unwrap_or_default(),
        );
    }
    all.len()
}

/// How many system calls `kind` may make (the table in vmm/README.md).
pub fn allowed_syscalls(kind: ThreadKind) -> usize {
    rules(kind).map_or(0, |r| r.len())
}
