//! Reads what this process can see of its kernel. Every probe only reads: files, `statvfs`,
//! `syslog(READ_ALL)`, an `open(O_RDONLY)` of block devices that is closed unread.

use std::collections::BTreeMap;
use std::fs;
use std::io::Read as _;
use std::os::unix::fs::FileTypeExt;

use sandbox_vm_probe::{
    fnv64, Devices, Identity, Introspection, Policy, Read, Resources, KALLSYMS_SAMPLE,
    LOG_SAMPLE_LINES,
};

fn text(path: &str) -> Read<String> {
    Read::from_io(fs::read_to_string(path).map(|s| s.trim_end().to_string()))
}

/// The value after `key` on the line of a `key: value` file that starts with `key`.
fn field<'a>(body: &'a str, key: &str) -> Option<&'a str> {
    body.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .map(str::trim)
}

fn parsed<T: std::str::FromStr>(r: Read<String>, f: impl Fn(&str) -> Option<&str>) -> Read<T> {
    match r {
        Read::Ok(s) => match f(&s).and_then(|v| v.parse().ok()) {
            Some(v) => Read::Ok(v),
            None => Read::Error("unexpected format".into()),
        },
        Read::Absent => Read::Absent,
        Read::Denied => Read::Denied,
        Read::Error(e) => Read::Error(e),
    }
}

pub fn identity() -> Identity {
    Identity {
        kernel_release: text("/proc/sys/kernel/osrelease"),
        proc_version: text("/proc/version"),
        boot_id: text("/proc/sys/kernel/random/boot_id"),
        uptime_s: parsed(text("/proc/uptime"), |s| s.split_whitespace().next()),
        btime: parsed(text("/proc/stat"), |s| {
            s.lines().find_map(|l| l.strip_prefix("btime "))
        }),
    }
}

/// The newest [`LOG_SAMPLE_LINES`] lines of the kernel log, hashed.
fn kernel_log() -> Read<Vec<String>> {
    const SYSLOG_ACTION_READ_ALL: libc::c_int = 3;
    let mut buf = vec![0u8; 16 * 1024];
    // SAFETY: the kernel writes at most `buf.len()` bytes into `buf`, which outlives the call.
    let n = unsafe {
        libc::klogctl(
            SYSLOG_ACTION_READ_ALL,
            buf.as_mut_ptr().cast(),
            buf.len() as libc::c_int,
        )
    };
    if n < 0 {
        return Read::from_io(Err(std::io::Error::last_os_error()));
    }
    let body = String::from_utf8_lossy(&buf[..n as usize]);
    let lines: Vec<&str> = body.lines().filter(|l| !l.is_empty()).collect();
    // The first line of a partial read may be cut; take whole lines from the end.
    let start = lines.len().saturating_sub(LOG_SAMPLE_LINES);
    Read::Ok(lines[start..].iter().map(|l| fnv64(l.as_bytes())).collect())
}

fn sorted_names(dir: &str) -> std::io::Result<Vec<String>> {
    let mut v: Vec<String> = fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    Ok(v)
}

fn kallsyms_names() -> std::io::Result<String> {
    let mut f = fs::File::open("/proc/kallsyms")?;
    let mut buf = vec![0u8; KALLSYMS_SAMPLE];
    let mut len = 0;
    while len < buf.len() {
        match f.read(&mut buf[len..])? {
            0 => break,
            n => len += n,
        }
    }
    let body = String::from_utf8_lossy(&buf[..len]);
    // Whole lines only; the address column is dropped (it reads as zeros without privilege).
    let whole = body.rsplit_once('\n').map_or("", |(w, _)| w);
    let names: Vec<&str> = whole
        .lines()
        .filter_map(|l| l.split_whitespace().nth(2))
        .collect();
    Ok(fnv64(names.join("\n").as_bytes()))
}

pub fn introspection() -> Introspection {
    Introspection {
        kernel_log: kernel_log(),
        proc_modules: Read::from_io(fs::read("/proc/modules").map(|b| fnv64(&b))),
        sys_module: Read::from_io(
            sorted_names("/sys/module").map(|v| fnv64(v.join("\n").as_bytes())),
        ),
        kallsyms_names: Read::from_io(kallsyms_names()),
        cmdline: text("/proc/cmdline"),
    }
}

fn cpus() -> Read<u64> {
    // SAFETY: cpu_set_t is plain data; zeroed is a valid empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: the kernel writes at most size_of::<cpu_set_t>() bytes into `set`.
    let rc = unsafe { libc::sched_getaffinity(0, std::mem::size_of_val(&set), &mut set) };
    if rc != 0 {
        return Read::from_io(Err(std::io::Error::last_os_error()));
    }
    // SAFETY: `set` is an initialised cpu_set_t.
    Read::Ok(unsafe { libc::CPU_COUNT(&set) } as u64)
}

/// `ns_dirs`: where to look for each namespace, first readable wins: `/proc/self/ns` in a
/// sandbox; on the host `/proc/1/ns`, then the probe's own (some hosts deny even root a
/// look at PID 1's namespaces; the probe's are those the runtimes start from).
pub fn resources(ns_dirs: &[&str]) -> Resources {
    let mut namespaces = BTreeMap::new();
    for n in ["cgroup", "ipc", "mnt", "net", "pid", "time", "user", "uts"] {
        let found = ns_dirs
            .iter()
            .find_map(|d| fs::metadata(format!("{d}/{n}")).ok());
        if let Some(m) = found {
            namespaces.insert(n.to_string(), std::os::unix::fs::MetadataExt::ino(&m));
        }
    }
    let mount_roots = Read::from_io(fs::read_to_string("/proc/self/mountinfo").map(|s| {
        s.lines()
            .filter_map(|l| l.split(' ').nth(3))
            .filter(|r| *r != "/")
            .map(String::from)
            .collect()
    }));
    Resources {
        mem_total_kib: parsed(text("/proc/meminfo"), |s| {
            field(s, "MemTotal").and_then(|v| v.split_whitespace().next())
        }),
        cpus: cpus(),
        namespaces,
        mount_roots,
    }
}

pub fn devices() -> Devices {
    let dev = sorted_names("/dev");
    let mut openable = Vec::new();
    for name in dev.as_deref().unwrap_or_default() {
        let path = format!("/dev/{name}");
        let is_block = fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_block_device());
        // Opened read-only and closed at once: nothing is read.
        if is_block && fs::File::open(&path).is_ok() {
            openable.push(name.clone());
        }
    }
    Devices {
        dev: Read::from_io(dev),
        sys_block: Read::from_io(sorted_names("/sys/class/block")),
        openable_block_devices: openable,
    }
}

/// Paths that a container runtime usually makes read-only.
pub const READ_ONLY_PATHS: &[&str] = &[
    "/",
    "/proc/sys",
    "/proc/sysrq-trigger",
    "/proc/irq",
    "/proc/bus",
    "/sys",
    "/sys/fs/cgroup",
];

fn mount_flag(path: &str) -> String {
    let Ok(c) = std::ffi::CString::new(path) else {
        return "absent".into();
    };
    // SAFETY: statvfs is plain data; zeroed is valid.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a NUL-terminated path and `st` is writable for the call.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return "absent".into();
    }
    if st.f_flag & libc::ST_RDONLY != 0 {
        "ro".into()
    } else {
        "rw".into()
    }
}

pub fn policy() -> Policy {
    let status = text("/proc/self/status");
    let get = |k: &str| {
        let k = k.to_string();
        parsed::<String>(status.clone(), move |s| field(s, &k))
    };
    let num = |k: &str| {
        let k = k.to_string();
        parsed::<u64>(status.clone(), move |s| field(s, &k))
    };
    let nnp = match num("NoNewPrivs") {
        Read::Ok(v) => Read::Ok(v != 0),
        Read::Absent => Read::Absent,
        Read::Denied => Read::Denied,
        Read::Error(e) => Read::Error(e),
    };
    Policy {
        cap_eff: get("CapEff"),
        cap_bnd: get("CapBnd"),
        seccomp_mode: num("Seccomp"),
        seccomp_filters: num("Seccomp_filters"),
        no_new_privs: nnp,
        syscalls: None,
        read_only: READ_ONLY_PATHS
            .iter()
            .map(|p| (p.to_string(), mount_flag(p)))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_fields() {
        let s = "Name:\tx\nSeccomp:\t2\nSeccomp_filters:\t1\nCapEff:\t00000000a80425fb\n";
        assert_eq!(field(s, "Seccomp"), Some("2"));
        assert_eq!(field(s, "CapEff"), Some("00000000a80425fb"));
        assert_eq!(
            parsed::<u64>(Read::Ok(s.into()), |b| field(b, "Seccomp_filters")),
            Read::Ok(1)
        );
        assert!(matches!(
            parsed::<u64>(Read::Ok(s.into()), |b| field(b, "Name")),
            Read::Error(_)
        ));
    }

    #[test]
    fn reads_this_process() {
        assert!(identity().kernel_release.ok().is_some());
        assert!(policy().cap_eff.ok().is_some());
        assert!(resources(&["/proc/self/ns"]).namespaces.contains_key("pid"));
    }
}
