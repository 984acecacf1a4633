//! Checks a spec before anything is created for it, at least what runc's libcontainer
//! validator checks, so a malformed bundle fails at once with one line instead of booting a
//! VM first.
//!
//! Two passes: [`raw_names`] looks at the JSON itself for the names a typed parse would only
//! reject with a long serde message (rlimit and capability names); [`spec`] checks the
//! parsed spec. Both are pure.

use std::collections::HashSet;
use std::path::{Component, Path};

use oci_spec::runtime::{LinuxIdMapping, LinuxNamespaceType, Spec};
use serde_json::Value;

/// The kernel's limit for a host or domain name (`__NEW_UTS_LEN`, `HOST_NAME_MAX`).
pub const UTS_NAME_MAX: usize = 64;

/// The IPC-namespaced sysctls besides `fs.mqueue.*` (runc's list, from ipc/ipc_sysctl.c).
const IPC_SYSCTLS: &[&str] = &[
    "kernel.msgmax",
    "kernel.msgmnb",
    "kernel.msgmni",
    "kernel.sem",
    "kernel.shmall",
    "kernel.shmmax",
    "kernel.shmmni",
    "kernel.shm_rmid_forced",
];

/// Every `RLIMIT_*` name the OCI spec allows (getrlimit(2)).
const RLIMITS: &[&str] = &[
    "RLIMIT_AS",
    "RLIMIT_CORE",
    "RLIMIT_CPU",
    "RLIMIT_DATA",
    "RLIMIT_FSIZE",
    "RLIMIT_LOCKS",
    "RLIMIT_MEMLOCK",
    "RLIMIT_MSGQUEUE",
    "RLIMIT_NICE",
    "RLIMIT_NOFILE",
    "RLIMIT_NPROC",
    "RLIMIT_RSS",
    "RLIMIT_RTPRIO",
    "RLIMIT_RTTIME",
    "RLIMIT_SIGPENDING",
    "RLIMIT_STACK",
];

/// Every capability of Linux 6.x (capability.h), without the `CAP_` prefix.
const CAPABILITIES: &[&str] = &[
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

/// What is wrong with a spec; one line each, naming the field.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ValidateError {
    #[error("process.args must not be empty")]
    NoArgs,
    #[error("process.args[0] must not be empty")]
    EmptyArg0,
    #[error("{0} contains a NUL byte")]
    Nul(String),
    #[error("process.cwd {0:?} is not an absolute path")]
    RelativeCwd(String),
    #[error("process.env entry {0:?} is not KEY=VALUE")]
    BadEnv(String),
    #[error("{field} is {len} bytes long: the kernel allows at most {UTS_NAME_MAX}")]
    NameTooLong { field: &'static str, len: usize },
    #[error("{0} needs a private UTS namespace (add one to linux.namespaces)")]
    NeedsUts(&'static str),
    #[error("mount destination {0:?} is not an absolute path")]
    RelativeMount(String),
    #[error("mount destination {0:?} contains '..'")]
    DotDotMount(String),
    #[error("root.path must not be empty")]
    EmptyRoot,
    #[error("sysctl {name:?} needs a private {ns} namespace")]
    SysctlNeedsNs { name: String, ns: &'static str },
    #[error(
        "sysctl {0:?} is not in a separate kernel namespace: it cannot be set for a container"
    )]
    SysctlNotNamespaced(String),
    #[error("unknown rlimit {0:?} (names are RLIMIT_CPU, RLIMIT_NOFILE, ...)")]
    BadRlimit(String),
    #[error("rlimit {0} appears more than once")]
    DuplicateRlimit(String),
    #[error("rlimit {name}: soft limit {soft} is above the hard limit {hard}")]
    RlimitSoftAboveHard { name: String, soft: u64, hard: u64 },
    #[error("unknown capability {0:?} (names are CAP_CHOWN, CAP_NET_ADMIN, ...)")]
    BadCapability(String),
    #[error("{0} must be a list of strings")]
    NotStrings(String),
    #[error("namespace {0} appears more than once in linux.namespaces")]
    DuplicateNamespace(String),
    #[error("linux.{0} needs a user namespace (add one to linux.namespaces)")]
    MappingWithoutUserNs(&'static str),
    #[error("a user namespace needs linux.{0}")]
    UserNsWithoutMapping(&'static str),
    #[error("linux.{field}: a mapping of size 0")]
    EmptyMapping { field: &'static str },
    #[error("linux.{field}: the range {start}+{size} goes past 2^32")]
    MappingOverflow {
        field: &'static str,
        start: u32,
        size: u32,
    },
    #[error("linux.{0}: ranges overlap")]
    MappingOverlap(&'static str),
    #[error("process.oomScoreAdj {0} is outside -1000..=1000")]
    OomScoreAdj(i32),
    #[error(
        "linux.namespaces has no mount namespace, which asks to share the runtime's: a container in a VM cannot share the host's (add {{\"type\": \"mount\"}})"
    )]
    NoMountNamespace,
}

/// The spec's settings for a host LSM, which a VM cannot apply (the guest kernel has no
/// AppArmor or SELinux, and the host's policy does not reach inside the guest): one line
/// each, for a warning, since runc would apply them and the container runs without.
pub fn ignored_lsm_settings(spec: &Spec) -> Vec<String> {
    let p = spec.process().as_ref();
    let linux = spec.linux().as_ref();
    [
        ("process.apparmorProfile", p.and_then(|p| p.apparmor_profile().clone())),
        ("process.selinuxLabel", p.and_then(|p| p.selinux_label().clone())),
        ("linux.mountLabel", linux.and_then(|l| l.mount_label().clone())),
    ]
    .into_iter()
    .filter_map(|(field, v)| {
        let v = v.filter(|v| !v.is_empty())?;
        Some(format!(
            "{field} {v:?} is ignored: a container in a VM runs under the guest kernel, which has no AppArmor or SELinux"
        ))
    })
    .collect()
}

/// The names in the raw JSON (before a typed parse, whose errors would be long and vague):
/// `process.rlimits[].type` and every `process.capabilities` set.
pub fn raw_names(config: &Value) -> Result<(), ValidateError> {
    let Some(process) = config.get("process") else {
        return Ok(());
    };
    if let Some(rlimits) = process.get("rlimits").and_then(Value::as_array) {
        let mut seen = HashSet::new();
        for r in rlimits {
            let Some(name) = r.get("type").and_then(Value::as_str) else {
                continue;
            };
            if !RLIMITS.contains(&name) {
                return Err(ValidateError::BadRlimit(name.into()));
            }
            if !seen.insert(name) {
                return Err(ValidateError::DuplicateRlimit(name.into()));
            }
        }
    }
    if let Some(caps) = process.get("capabilities").and_then(Value::as_object) {
        for (set, names) in caps {
            let field = format!("process.capabilities.{set}");
            let names = names
                .as_array()
                .ok_or_else(|| ValidateError::NotStrings(field.clone()))?;
            for n in names {
                let n = n
                    .as_str()
                    .ok_or_else(|| ValidateError::NotStrings(field.clone()))?;
                let known = n
                    .strip_prefix("CAP_")
                    .is_some_and(|c| CAPABILITIES.contains(&c));
                if !known {
                    return Err(ValidateError::BadCapability(n.into()));
                }
            }
        }
    }
    Ok(())
}

/// Checks the parsed spec; the first problem found is the error.
pub fn spec(spec: &Spec) -> Result<(), ValidateError> {
    if let Some(root) = spec.root() {
        if root.path().as_os_str().is_empty() {
            return Err(ValidateError::EmptyRoot);
        }
    }
    process(spec)?;
    let namespaces = namespaces(spec)?;
    uts_names(spec, &namespaces)?;
    mounts(spec)?;
    sysctls(spec, &namespaces)?;
    id_mappings(spec, &namespaces)?;
    // The guest agent refuses it too; saying so here fails before a VM boots.
    if !namespaces.contains(&LinuxNamespaceType::Mount) {
        return Err(ValidateError::NoMountNamespace);
    }
    Ok(())
}

fn has_nul(s: &str) -> bool {
    s.contains('\0')
}

fn process(spec: &Spec) -> Result<(), ValidateError> {
    let Some(p) = spec.process() else {
        return Ok(());
    };
    let args = p.args().as_deref().unwrap_or_default();
    match args.first() {
        None => return Err(ValidateError::NoArgs),
        Some(a) if a.is_empty() => return Err(ValidateError::EmptyArg0),
        Some(_) => {}
    }
    if args.iter().any(|a| has_nul(a)) {
        return Err(ValidateError::Nul("process.args".into()));
    }
    let cwd = p.cwd().to_string_lossy();
    if has_nul(&cwd) {
        return Err(ValidateError::Nul("process.cwd".into()));
    }
    if !p.cwd().is_absolute() {
        return Err(ValidateError::RelativeCwd(cwd.into_owned()));
    }
    for e in p.env().as_deref().unwrap_or_default() {
        if has_nul(e) {
            return Err(ValidateError::Nul("process.env".into()));
        }
        match e.split_once('=') {
            Some((key, _)) if !key.is_empty() => {}
            _ => return Err(ValidateError::BadEnv(e.clone())),
        }
    }
    for r in p.rlimits().as_deref().unwrap_or_default() {
        if r.soft() > r.hard() {
            return Err(ValidateError::RlimitSoftAboveHard {
                name: r.typ().to_string(),
                soft: r.soft(),
                hard: r.hard(),
            });
        }
    }
    if let Some(adj) = p.oom_score_adj() {
        if !(-1000..=1000).contains(&adj) {
            return Err(ValidateError::OomScoreAdj(adj));
        }
    }
    Ok(())
}

/// The spec's namespace types (duplicates are an error).
fn namespaces(spec: &Spec) -> Result<HashSet<LinuxNamespaceType>, ValidateError> {
    let mut set = HashSet::new();
    let list = spec.linux().as_ref().and_then(|l| l.namespaces().as_ref());
    for ns in list.into_iter().flatten() {
        if !set.insert(ns.typ()) {
            return Err(ValidateError::DuplicateNamespace(ns.typ().to_string()));
        }
    }
    Ok(set)
}

fn uts_names(spec: &Spec, ns: &HashSet<LinuxNamespaceType>) -> Result<(), ValidateError> {
    for (field, value) in [
        ("hostname", spec.hostname()),
        ("domainname", spec.domainname()),
    ] {
        let Some(v) = value.as_deref().filter(|v| !v.is_empty()) else {
            continue;
        };
        if has_nul(v) {
            return Err(ValidateError::Nul(field.into()));
        }
        if v.len() > UTS_NAME_MAX {
            return Err(ValidateError::NameTooLong {
                field,
                len: v.len(),
            });
        }
        if !ns.contains(&LinuxNamespaceType::Uts) {
            return Err(ValidateError::NeedsUts(field));
        }
    }
    Ok(())
}

fn mounts(spec: &Spec) -> Result<(), ValidateError> {
    for m in spec.mounts().as_deref().unwrap_or_default() {
        let dest: &Path = m.destination();
        let shown = || dest.to_string_lossy().into_owned();
        if has_nul(&dest.to_string_lossy()) {
            return Err(ValidateError::Nul("mount destination".into()));
        }
        if !dest.is_absolute() {
            return Err(ValidateError::RelativeMount(shown()));
        }
        if dest.components().any(|c| c == Component::ParentDir) {
            return Err(ValidateError::DotDotMount(shown()));
        }
    }
    Ok(())
}

/// runc's rule: a sysctl can be set only if it lives in a namespace the container has.
fn sysctls(spec: &Spec, ns: &HashSet<LinuxNamespaceType>) -> Result<(), ValidateError> {
    let Some(map) = spec.linux().as_ref().and_then(|l| l.sysctl().as_ref()) else {
        return Ok(());
    };
    let mut names: Vec<&String> = map.keys().collect();
    names.sort();
    for name in names {
        // sysctl(8) accepts both separators.
        let dotted = name.replace('/', ".");
        let needs = if IPC_SYSCTLS.contains(&dotted.as_str()) || dotted.starts_with("fs.mqueue.") {
            (LinuxNamespaceType::Ipc, "IPC")
        } else if dotted.starts_with("net.") {
            (LinuxNamespaceType::Network, "network")
        } else if dotted == "kernel.hostname" || dotted == "kernel.domainname" {
            (LinuxNamespaceType::Uts, "UTS")
        } else {
            return Err(ValidateError::SysctlNotNamespaced(name.clone()));
        };
        if !ns.contains(&needs.0) {
            return Err(ValidateError::SysctlNeedsNs {
                name: name.clone(),
                ns: needs.1,
            });
        }
    }
    Ok(())
}

fn id_mappings(spec: &Spec, ns: &HashSet<LinuxNamespaceType>) -> Result<(), ValidateError> {
    let Some(linux) = spec.linux() else {
        return Ok(());
    };
    for (field, maps) in [
        ("uidMappings", linux.uid_mappings()),
        ("gidMappings", linux.gid_mappings()),
    ] {
        let Some(maps) = maps.as_deref().filter(|m| !m.is_empty()) else {
            if ns.contains(&LinuxNamespaceType::User) {
                return Err(ValidateError::UserNsWithoutMapping(field));
            }
            continue;
        };
        if !ns.contains(&LinuxNamespaceType::User) {
            return Err(ValidateError::MappingWithoutUserNs(field));
        }
        check_ranges(field, maps)?;
    }
    Ok(())
}

/// Each mapping non-empty and inside u32, and no two overlapping on either side.
fn check_ranges(field: &'static str, maps: &[LinuxIdMapping]) -> Result<(), ValidateError> {
    let mut inside = Vec::new();
    let mut outside = Vec::new();
    for m in maps {
        if m.size() == 0 {
            return Err(ValidateError::EmptyMapping { field });
        }
        for start in [m.container_id(), m.host_id()] {
            if u64::from(start) + u64::from(m.size()) > 1 << 32 {
                return Err(ValidateError::MappingOverflow {
                    field,
                    start,
                    size: m.size(),
                });
            }
        }
        inside.push((m.container_id(), m.size()));
        outside.push((m.host_id(), m.size()));
    }
    for ranges in [&mut inside, &mut outside] {
        ranges.sort_unstable();
        if ranges
            .windows(2)
            .any(|w| u64::from(w[0].0) + u64::from(w[0].1) > u64::from(w[1].0))
        {
            return Err(ValidateError::MappingOverlap(field));
        }
    }
    Ok(())
}

#[cfg(test)]
#[path = "validate_tests.rs"]
mod tests;
