//! Process identity and privileges: uid/gid/groups, capabilities, rlimits and
//! no_new_privileges. Plans are built in the agent; `apply_*` run in the child.

use std::io;

use agent_protocol::oci_spec::runtime::{
    Capability, Linux, LinuxCapabilities, PosixRlimit, PosixRlimitType, Process,
};
use nix::sys::resource::{setrlimit, Resource};

/// Privilege changes that failed.
#[derive(Debug, thiserror::Error)]
pub enum SecurityError {
    /// A system call failed.
    #[error("{op} failed: {cause}")]
    Sys {
        /// Operation.
        op: &'static str,
        /// Cause.
        cause: io::Error,
    },
}

fn sys(op: &'static str) -> impl FnOnce(nix::Error) -> SecurityError {
    move |e| SecurityError::Sys {
        op,
        cause: e.into(),
    }
}

/// Linux capability number of an OCI capability.
pub fn cap_number(c: &Capability) -> u32 {
    use Capability::*;
    match c {
        Chown => 0,
        DacOverride => 1,
        DacReadSearch => 2,
        Fowner => 3,
        Fsetid => 4,
        Kill => 5,
        Setgid => 6,
        Setuid => 7,
        Setpcap => 8,
        LinuxImmutable => 9,
        NetBindService => 10,
        NetBroadcast => 11,
        NetAdmin => 12,
        NetRaw => 13,
        IpcLock => 14,
        IpcOwner => 15,
        SysModule => 16,
        SysRawio => 17,
        SysChroot => 18,
        SysPtrace => 19,
        SysPacct => 20,
        SysAdmin => 21,
        SysBoot => 22,
        SysNice => 23,
        SysResource => 24,
        SysTime => 25,
        SysTtyConfig => 26,
        Mknod => 27,
        Lease => 28,
        AuditWrite => 29,
        AuditControl => 30,
        Setfcap => 31,
        MacOverride => 32,
        MacAdmin => 33,
        Syslog => 34,
        WakeAlarm => 35,
        BlockSuspend => 36,
        AuditRead => 37,
        Perfmon => 38,
        Bpf => 39,
        CheckpointRestore => 40,
    }
}

/// Capability sets as bit masks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CapSets {
    /// Bounding set.
    pub bounding: u64,
    /// Effective set.
    pub effective: u64,
    /// Permitted set.
    pub permitted: u64,
    /// Inheritable set.
    pub inheritable: u64,
    /// Ambient set.
    pub ambient: u64,
}

/// Converts the OCI capability lists to masks.
pub fn plan_caps(c: &LinuxCapabilities) -> CapSets {
    let mask = |s: &Option<std::collections::HashSet<Capability>>| {
        s.iter()
            .flatten()
            .fold(0u64, |m, c| m | 1u64 << cap_number(c))
    };
    CapSets {
        bounding: mask(c.bounding()),
        effective: mask(c.effective()),
        permitted: mask(c.permitted()),
        inheritable: mask(c.inheritable()),
        ambient: mask(c.ambient()),
    }
}

fn resource(t: PosixRlimitType) -> Resource {
    use PosixRlimitType::*;
    match t {
        RlimitCpu => Resource::RLIMIT_CPU,
        RlimitFsize => Resource::RLIMIT_FSIZE,
        RlimitData => Resource::RLIMIT_DATA,
        RlimitStack => Resource::RLIMIT_STACK,
        RlimitCore => Resource::RLIMIT_CORE,
        RlimitRss => Resource::RLIMIT_RSS,
        RlimitNproc => Resource::RLIMIT_NPROC,
        RlimitNofile => Resource::RLIMIT_NOFILE,
        RlimitMemlock => Resource::RLIMIT_MEMLOCK,
        RlimitAs => Resource::RLIMIT_AS,
        RlimitLocks => Resource::RLIMIT_LOCKS,
        RlimitSigpending => Resource::RLIMIT_SIGPENDING,
        RlimitMsgqueue => Resource::RLIMIT_MSGQUEUE,
        RlimitNice => Resource::RLIMIT_NICE,
        RlimitRtprio => Resource::RLIMIT_RTPRIO,
        RlimitRttime => Resource::RLIMIT_RTTIME,
    }
}

/// Everything about who the process runs as.
#[derive(Clone, Debug, Default)]
pub struct Identity {
    /// uid.
    pub uid: u32,
    /// gid.
    pub gid: u32,
    /// Supplementary groups.
    pub groups: Vec<u32>,
    /// umask.
    pub umask: Option<u32>,
    /// Capabilities (`None`: leave as they are).
    pub caps: Option<CapSets>,
    /// Resource limits.
    pub rlimits: Vec<(Resource, u64, u64)>,
    /// Set PR_SET_NO_NEW_PRIVS.
    pub no_new_privileges: bool,
    /// The bounding set is `caps.bounding` already (a prepared init dropped the rest
    /// ahead; see `crate::prepared`).
    pub bounding_applied: bool,
}

/// Maps the spec's rlimits.
pub fn plan_rlimits(r: &[PosixRlimit]) -> Vec<(Resource, u64, u64)> {
    r.iter()
        .map(|l| (resource(l.typ()), l.soft(), l.hard()))
        .collect()
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

fn prctl(op: libc::c_int, arg: libc::c_ulong, arg2: libc::c_ulong) -> nix::Result<()> {
    // SAFETY: the prctl operations used here take integer arguments only.
    let r = unsafe { libc::prctl(op, arg, arg2, 0 as libc::c_ulong, 0 as libc::c_ulong) };
    nix::errno::Errno::result(r).map(drop)
}

fn capset(c: &CapSets) -> nix::Result<()> {
    let hdr = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let lo = |m: u64| m as u32;
    let hi = |m: u64| (m >> 32) as u32;
    let data = [
        CapData {
            effective: lo(c.effective),
            permitted: lo(c.permitted),
            inheritable: lo(c.inheritable),
        },
        CapData {
            effective: hi(c.effective),
            permitted: hi(c.permitted),
            inheritable: hi(c.inheritable),
        },
    ];
    // SAFETY: capset reads one v3 header and two data structs, both valid
    // for the duration of the call and laid out as the kernel expects.
    let r = unsafe { libc::syscall(libc::SYS_capset, &hdr as *const CapHeader, data.as_ptr()) };
    nix::errno::Errno::result(r).map(drop)
}

/// Drops every capability outside `bounding` from the calling thread's bounding set (one
/// system call each, which is emulated kernel work here).
pub fn drop_bounding(bounding: u64) -> Result<(), SecurityError> {
    for cap in 0..64u64 {
        if bounding & (1 << cap) == 0 {
            match prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0) {
                Ok(()) => {}
                // Past the kernel's last capability.
                Err(nix::errno::Errno::EINVAL) => break,
                Err(e) => return Err(sys("drop bounding capability")(e)),
            }
        }
    }
    Ok(())
}

/// Applies rlimits, the bounding set, uid/gid/groups, capabilities, umask and
/// no_new_privileges, in the order the kernel allows.
pub fn apply_identity(id: &Identity) -> Result<(), SecurityError> {
    for &(res, soft, hard) in &id.rlimits {
        setrlimit(res, soft, hard).map_err(sys("setrlimit"))?;
    }
    if let Some(caps) = &id.caps {
        if !id.bounding_applied {
            drop_bounding(caps.bounding)?;
        }
        prctl(libc::PR_SET_KEEPCAPS, 1, 0).map_err(sys("PR_SET_KEEPCAPS"))?;
    }
    // Raw system calls, not glibc's wrappers: the process runs in the agent's memory
    // until it execs (see `spawn`), and glibc would apply an id change to every thread
    // it knows of, which are the agent's.
    let groups: &[libc::gid_t] = &id.groups;
    // SAFETY: setgroups reads `groups.len()` gids from the slice, which outlives the call.
    let r = unsafe { libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr()) };
    nix::errno::Errno::result(r).map_err(sys("setgroups"))?;
    // SAFETY: setresgid and setresuid take plain integers.
    let r = unsafe { libc::syscall(libc::SYS_setresgid, id.gid, id.gid, id.gid) };
    nix::errno::Errno::result(r).map_err(sys("setgid"))?;
    // SAFETY: as above.
    let r = unsafe { libc::syscall(libc::SYS_setresuid, id.uid, id.uid, id.uid) };
    nix::errno::Errno::result(r).map_err(sys("setuid"))?;
    if let Some(caps) = &id.caps {
        capset(caps).map_err(sys("capset"))?;
        for cap in 0..64u64 {
            if caps.ambient & (1 << cap) != 0 {
                // Older kernels lack ambient capabilities: not fatal.
                let _ = prctl(
                    libc::PR_CAP_AMBIENT,
                    libc::PR_CAP_AMBIENT_RAISE as libc::c_ulong,
                    cap as libc::c_ulong,
                );
            }
        }
    }
    if let Some(m) = id.umask {
        nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(m));
    }
    if id.no_new_privileges {
        prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0).map_err(sys("PR_SET_NO_NEW_PRIVS"))?;
    }
    Ok(())
}

/// The LSM settings of a spec that the guest cannot apply: the guest kernel has neither
/// AppArmor nor SELinux, so they are ignored with one warning line each.
pub fn ignored_labels(process: &Process, linux: Option<&Linux>) -> Vec<String> {
    let mut out = vec![];
    if let Some(p) = process
        .apparmor_profile()
        .as_deref()
        .filter(|p| !p.is_empty())
    {
        out.push(format!("process.apparmorProfile {p:?}"));
    }
    if let Some(l) = process.selinux_label().as_deref().filter(|l| !l.is_empty()) {
        out.push(format!("process.selinuxLabel {l:?}"));
    }
    if let Some(l) = linux
        .and_then(|l| l.mount_label().as_deref())
        .filter(|l| !l.is_empty())
    {
        out.push(format!("linux.mountLabel {l:?}"));
    }
    out
}

/// Logs [`ignored_labels`] on the agent's stderr (the guest console); `linux` is `None`
/// for an exec'd process.
pub fn warn_ignored_labels(container_id: &str, process: &Process, linux: Option<&Linux>) {
    for what in ignored_labels(process, linux) {
        eprintln!(
            "guest-agent: warning: container {container_id}: ignoring {what}: the guest kernel has no LSM"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsm_labels_are_listed_for_the_warning() {
        let mut p = Process::default();
        let mut l = Linux::default();
        assert!(ignored_labels(&p, Some(&l)).is_empty());
        p.set_apparmor_profile(Some("containers-default-0.50".into()));
        p.set_selinux_label(Some("system_u:system_r:container_t:s0".into()));
        l.set_mount_label(Some("system_u:object_r:container_file_t:s0".into()));
        assert_eq!(ignored_labels(&p, None).len(), 2);
        let w = ignored_labels(&p, Some(&l));
        assert_eq!(w.len(), 3);
        assert!(w[0].starts_with("process.apparmorProfile \"containers-default"));
        assert!(w[1].starts_with("process.selinuxLabel "));
        assert!(w[2].starts_with("linux.mountLabel "));
    }

    #[test]
    fn default_caps() {
        let c = plan_caps(&LinuxCapabilities::default());
        assert_ne!(c.bounding, 0);
        assert_eq!(c.bounding & (1 << 21), 0, "no CAP_SYS_ADMIN by default");
        assert_ne!(c.bounding & (1 << 5), 0, "CAP_KILL by default");
    }
}
