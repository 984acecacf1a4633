//! What the isolation probe reports: one [`Report`], printed as one JSON object on stdout.
//! The probe binary fills it inside a sandbox (and once on the host, for the host's own
//! values); `sandbox-vm bench isolation` parses it and compares sandbox against host.
//!
//! Long or sensitive values (module lists, symbol names, log lines) travel as FNV-1a hashes:
//! equality with the host's hash is all the comparison needs.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Bumped when a field changes meaning; the bench refuses other versions.
pub const FORMAT_VERSION: u32 = 1;

/// The line the probe writes to stderr first thing, so the host can time "start to first
/// output" without reading the JSON.
pub const STARTED_LINE: &str = "sandbox-vm-probe: started";

/// A value read from the kernel: the value, or why there is none.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum Read<T> {
    Ok(T),
    /// The file or interface does not exist here.
    Absent,
    /// EPERM or EACCES.
    Denied,
    Error(String),
}

impl<T> Read<T> {
    pub fn ok(&self) -> Option<&T> {
        match self {
            Read::Ok(v) => Some(v),
            _ => None,
        }
    }

    pub fn from_io(r: std::io::Result<T>) -> Self {
        match r {
            Ok(v) => Read::Ok(v),
            Err(e) => match e.kind() {
                std::io::ErrorKind::NotFound => Read::Absent,
                std::io::ErrorKind::PermissionDenied => Read::Denied,
                _ => Read::Error(e.to_string()),
            },
        }
    }
}

/// Which kernel is this: the host's, or the sandbox's own.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Identity {
    pub kernel_release: Read<String>,
    pub proc_version: Read<String>,
    pub boot_id: Read<String>,
    /// Seconds since that kernel booted (`/proc/uptime`).
    pub uptime_s: Read<f64>,
    /// Boot time, seconds since the epoch (`btime` of `/proc/stat`).
    pub btime: Read<u64>,
}

/// What the kernel tells about itself.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Introspection {
    /// Hashes of up to [`LOG_SAMPLE_LINES`] lines of the kernel log (`syslog(2)`
    /// READ_ALL), or why it cannot be read.
    pub kernel_log: Read<Vec<String>>,
    /// Hash of `/proc/modules`.
    pub proc_modules: Read<String>,
    /// Hash of the sorted names under `/sys/module` (built-in modules with parameters
    /// appear there even in kernels without loadable modules).
    pub sys_module: Read<String>,
    /// Hash of the symbol names on the first [`KALLSYMS_SAMPLE`] bytes of `/proc/kallsyms`.
    pub kallsyms_names: Read<String>,
    pub cmdline: Read<String>,
}

/// How many kernel log lines the probe hashes (the newest ones).
pub const LOG_SAMPLE_LINES: usize = 8;
/// How much of `/proc/kallsyms` the probe reads: formatting it is kernel work, which some
/// hosts emulate instruction by instruction.
pub const KALLSYMS_SAMPLE: usize = 4096;

/// Resources and paths.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Resources {
    pub mem_total_kib: Read<u64>,
    /// CPUs this process may run on (`sched_getaffinity`).
    pub cpus: Read<u64>,
    /// Inode of each `/proc/self/ns/*` link (on the host run: `/proc/1/ns/*`).
    pub namespaces: BTreeMap<String, u64>,
    /// The `root` field (4th) of every mountinfo line that is not `/`: for bind mounts it
    /// names the directory on the mount's filesystem, which can be a host path.
    pub mount_roots: Read<Vec<String>>,
}

/// Devices.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Devices {
    /// Names in `/dev` (top level).
    pub dev: Read<Vec<String>>,
    /// Names in `/sys/class/block`.
    pub sys_block: Read<Vec<String>>,
    /// Block devices under `/dev` that open read-only (nothing is read).
    pub openable_block_devices: Vec<String>,
}

/// The sandbox's own policy: capabilities, seccomp, read-only paths.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Policy {
    pub cap_eff: Read<String>,
    pub cap_bnd: Read<String>,
    /// 0 off, 1 strict, 2 filter (`Seccomp:` of `/proc/self/status`).
    pub seccomp_mode: Read<u64>,
    /// Number of attached filters (`Seccomp_filters:`).
    pub seccomp_filters: Read<u64>,
    pub no_new_privs: Read<bool>,
    /// `None` when the run skipped the scan (the host run does).
    pub syscalls: Option<SyscallScan>,
    /// Path → "ro", "rw" or "absent" (from `statvfs`, nothing is written).
    pub read_only: BTreeMap<String, String>,
}

/// Each syscall number called once with invalid arguments.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
pub struct SyscallScan {
    pub tried: u32,
    /// Numbers that failed with EPERM or EACCES.
    pub denied: Vec<u32>,
    /// ENOSYS: not in this kernel (or a filter answering ENOSYS).
    pub enosys: u32,
    /// Any other result: the call reached the kernel's argument checks.
    pub other: u32,
    /// Numbers not called because they block, exit, fork or change the probe's state.
    pub skipped: u32,
}

/// A timed loop: `ops` operations took `total_ns`.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq)]
pub struct Timed {
    pub ops: u64,
    pub total_ns: u64,
}

impl Timed {
    pub fn ns_per_op(&self) -> Option<f64> {
        (self.ops > 0).then(|| self.total_ns as f64 / self.ops as f64)
    }
}

/// The in-sandbox cost loops.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Cost {
    /// One op = one `getppid` system call.
    pub getppid: Read<Timed>,
    /// One op = create+write 4 KiB+close, open+read 4 KiB+close, unlink, in `/tmp`.
    pub file_4k: Read<Timed>,
    /// One op = one 4 KiB page of anonymous memory mapped, touched and unmapped.
    pub anon_page: Read<Timed>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Report {
    pub version: u32,
    pub identity: Identity,
    pub introspection: Introspection,
    pub resources: Resources,
    pub devices: Devices,
    pub policy: Policy,
    pub cost: Cost,
    /// Wall time of each section, milliseconds.
    pub section_ms: BTreeMap<String, u64>,
}

/// 64-bit FNV-1a, as 16 hex digits.
pub fn fnv64(bytes: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv64_known_values() {
        assert_eq!(fnv64(b""), "cbf29ce484222325");
        assert_eq!(fnv64(b"a"), "af63dc4c8601ec8c");
    }

    #[test]
    fn read_from_io_errors() {
        use std::io::{Error, ErrorKind};
        assert_eq!(
            Read::<u8>::from_io(Err(Error::from(ErrorKind::NotFound))),
            Read::Absent
        );
        assert_eq!(
            Read::<u8>::from_io(Err(Error::from_raw_os_error(libc::EPERM))),
            Read::Denied
        );
        assert_eq!(Read::from_io(Ok(3u8)).ok(), Some(&3));
        let j = serde_json::to_string(&Read::<u8>::Denied).unwrap();
        assert_eq!(j, "\"denied\"");
    }
}
