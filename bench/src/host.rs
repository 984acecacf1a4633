//! Host-side facts the bench reads itself: uptime, the kernel log, the memory of a
//! sandbox's process tree, the cgroup layout, and the `env` block of the report.

use std::collections::{BTreeMap, BTreeSet};

use sandbox_vm_probe::fnv64;

/// Seconds since the host booted (0 if unreadable).
pub fn uptime() -> f64 {
    std::fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(0.0)
}

/// Hashes of every line of the host's kernel log (empty if it cannot be read).
pub fn kernel_log_lines() -> BTreeSet<String> {
    const READ_ALL: libc::c_int = 3;
    const SIZE_BUFFER: libc::c_int = 10;
    // SAFETY: SIZE_BUFFER takes no buffer.
    let size = unsafe { libc::klogctl(SIZE_BUFFER, std::ptr::null_mut(), 0) };
    if size <= 0 {
        return BTreeSet::new();
    }
    let mut buf = vec![0u8; size as usize];
    // SAFETY: the kernel writes at most `buf.len()` bytes into `buf`.
    let n = unsafe { libc::klogctl(READ_ALL, buf.as_mut_ptr().cast(), buf.len() as libc::c_int) };
    if n <= 0 {
        return BTreeSet::new();
    }
    String::from_utf8_lossy(&buf[..n as usize])
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| fnv64(l.as_bytes()))
        .collect()
}

/// (pid, ppid, session) of a process from its `/proc/PID/stat` text.
pub fn parse_stat(text: &str) -> Option<(i32, i32, i32)> {
    let pid = text.split_whitespace().next()?.parse().ok()?;
    // The command name is in parentheses and may contain spaces: fields resume after the
    // last ')'. They are: state ppid pgrp session ...
    let rest = &text[text.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some((pid, f.get(1)?.parse().ok()?, f.get(3)?.parse().ok()?))
}

/// The processes a sandbox owns on the host: `root` (its pid-file process), every
/// descendant, and every process of the session `root` leads.
pub fn owned(root: i32, procs: &[(i32, i32, i32)]) -> Vec<i32> {
    let mut set = BTreeSet::from([root]);
    loop {
        let before = set.len();
        for (pid, ppid, sid) in procs {
            if set.contains(ppid) || *sid == root {
                set.insert(*pid);
            }
        }
        if set.len() == before {
            return set.into_iter().collect();
        }
    }
}

fn all_processes() -> Vec<(i32, i32, i32)> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
        .filter_map(|s| parse_stat(&s))
        .collect()
}

/// `Pss:` of a `smaps_rollup`, KiB.
pub fn parse_pss(rollup: &str) -> Option<u64> {
    rollup
        .lines()
        .find_map(|l| l.strip_prefix("Pss:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// Summed PSS (KiB) of the processes `root` owns, and how many there are.
pub fn tree_pss_kib(root: i32) -> (u64, usize) {
    let pids = owned(root, &all_processes());
    let kib = pids
        .iter()
        .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/smaps_rollup")).ok())
        .filter_map(|s| parse_pss(&s))
        .sum();
    (kib, pids.len())
}

/// PSS (KiB) of the largest mapping in a `/proc/PID/smaps` text: for a VMM, its guest RAM.
pub fn largest_mapping_pss(smaps: &str) -> Option<u64> {
    let mut best: Option<(u64, u64)> = None;
    let mut size = None;
    for line in smaps.lines() {
        let kib = |rest: &str| {
            rest.split_whitespace()
                .next()
                .and_then(|v| v.parse::<u64>().ok())
        };
        if let Some(rest) = line.strip_prefix("Size:") {
            size = kib(rest);
        } else if let Some(rest) = line.strip_prefix("Pss:") {
            let (Some(sz), Some(pss)) = (size.take(), kib(rest)) else {
                continue;
            };
            if best.is_none_or(|(b, _)| sz > b) {
                best = Some((sz, pss));
            }
        }
    }
    best.map(|(_, pss)| pss)
}

/// PSS (KiB) of the largest mapping of any process `root` owns.
pub fn tree_largest_mapping_pss_kib(root: i32) -> Option<u64> {
    owned(root, &all_processes())
        .iter()
        .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/smaps")).ok())
        .filter_map(|s| largest_mapping_pss(&s))
        .max()
}

/// Is `/sys/fs/cgroup/unified` a cgroup2 mount (systemd's hybrid layout)?
pub fn hybrid_cgroups() -> bool {
    std::fs::read_to_string("/proc/self/mountinfo").is_ok_and(|m| {
        m.lines().any(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            f.get(4) == Some(&"/sys/fs/cgroup/unified") && l.contains(" - cgroup2 ")
        })
    })
}

/// For `pre_exec`: a private mount namespace without `/sys/fs/cgroup/unified`.
pub fn private_mounts_without_unified_cgroup() -> std::io::Result<()> {
    let err = std::io::Error::last_os_error;
    // SAFETY: unshare takes no pointers.
    if unsafe { libc::unshare(libc::CLONE_NEWNS) } != 0 {
        return Err(err());
    }
    // SAFETY: NUL-terminated static strings; null source/type/data are allowed for a
    // propagation change.
    let rc = unsafe {
        libc::mount(
            std::ptr::null(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(err());
    }
    // SAFETY: a NUL-terminated static path. A missing mount is fine.
    unsafe { libc::umount2(c"/sys/fs/cgroup/unified".as_ptr(), libc::MNT_DETACH) };
    Ok(())
}

fn read_trim(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// How this host runs a guest's kernel mode.
pub fn kvm_mode(cpuinfo: &str, have_kvm: bool) -> &'static str {
    let hw = cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"));
    match (have_kvm, hw) {
        (false, _) => "no /dev/kvm",
        (true, true) => "hardware (vmx/svm)",
        (true, false) => {
            "emulated (no vmx/svm flag: guest kernel mode runs in KVM's instruction emulator)"
        }
    }
}

/// `/proc/loadavg`: other work on the host skews every timing.
pub fn loadavg() -> String {
    read_trim("/proc/loadavg")
}

/// The report's `env` block; `load_at_start` is [`loadavg`] when the runs began.
pub fn env(versions: &BTreeMap<String, String>, load_at_start: &str) -> serde_json::Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_else(|| "unknown".into());
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    serde_json::json!({
        "host_kernel": read_trim("/proc/sys/kernel/osrelease"),
        "cpu": model,
        "cpus": cpus,
        "kvm_guest_kernel_mode": kvm_mode(&cpuinfo, std::path::Path::new("/dev/kvm").exists()),
        "smt_active": read_trim("/sys/devices/system/cpu/smt/active"),
        "ksm_run": read_trim("/sys/kernel/mm/ksm/run"),
        "ksm_pages_sharing": read_trim("/sys/kernel/mm/ksm/pages_sharing"),
        "hybrid_cgroups": hybrid_cgroups(),
        "loadavg_at_start": load_at_start,
        "loadavg_at_end": loadavg(),
        "runtime_versions": versions,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_spaces_in_the_name() {
        let s = "4242 (my proc) x) S 17 4242 4242 0 -1 4194560 0 0";
        assert_eq!(parse_stat(s), Some((4242, 17, 4242)));
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn owned_is_the_tree_and_the_session() {
        // 100 = monitor (session leader); 101 its child; 102 a grandchild; 200 a process
        // that left the tree but stayed in the session; 300 unrelated; 1 init.
        let procs = [
            (1, 0, 1),
            (100, 1, 100),
            (101, 100, 100),
            (102, 101, 102),
            (200, 1, 100),
            (300, 1, 300),
        ];
        assert_eq!(owned(100, &procs), vec![100, 101, 102, 200]);
        assert_eq!(owned(300, &procs), vec![300]);
    }

    #[test]
    fn pss_line() {
        let r = "55d0-7ff [rollup]\nRss:                3000 kB\nPss:                1234 kB\nPss_Anon: 1 kB\n";
        assert_eq!(parse_pss(r), Some(1234));
        assert_eq!(parse_pss("Rss: 1 kB"), None);
    }

    #[test]
    fn largest_mapping() {
        let smaps = "7f00-7f10 rw-p 0 00:00 0\nSize:  64 kB\nRss: 64 kB\nPss:  60 kB\n\
                     7e00-7f00 rw-p 0 00:00 0\nSize: 262144 kB\nRss: 20000 kB\nPss: 19000 kB\n\
                     7d00-7d01 r-xp 0 08:01 5 /bin/x\nSize: 4 kB\nPss: 2 kB\n";
        assert_eq!(largest_mapping_pss(smaps), Some(19000));
        assert_eq!(largest_mapping_pss(""), None);
    }

    #[test]
    fn kvm_modes() {
        assert_eq!(
            kvm_mode("flags\t: fpu vme svm sse", true),
            "hardware (vmx/svm)"
        );
        assert!(kvm_mode("flags\t: fpu vme sse", true).starts_with("emulated"));
        assert_eq!(kvm_mode("flags\t: vmx", false), "no /dev/kvm");
    }

    #[test]
    fn this_process_tree_has_memory() {
        let (kib, n) = tree_pss_kib(std::process::id() as i32);
        assert!(kib > 0 && n >= 1);
    }
}
