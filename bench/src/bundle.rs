//! The probe bundle every runtime runs: busybox, the static probe, and a config.json from
//! the OCI default spec (runc's namespaces, mounts, capabilities, masked and read-only
//! paths) with a seccomp profile in the spirit of Docker's default: every system call
//! allowed except those listed in [`DENIED`], which fail with EPERM.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("{what} {path}: {err}")]
    Io {
        what: &'static str,
        path: PathBuf,
        err: std::io::Error,
    },
    #[error("the probe {0} is not a static executable: build it with tests/probe/build-static.sh")]
    NotStatic(PathBuf),
    #[error("no static probe found (looked at {0}): build it with tests/probe/build-static.sh, then pass --probe PATH or set SANDBOX_VM_PROBE")]
    NoProbe(String),
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> BundleError {
    let path = path.to_path_buf();
    move |err| BundleError::Io { what, path, err }
}

/// System calls the bundle's profile denies (x86-64 numbers): the ones Docker's default
/// profile leaves out, plus the new mount API and io_uring, which it also does not allow.
pub const DENIED: &[(&str, i64)] = &[
    ("acct", libc::SYS_acct),
    ("add_key", libc::SYS_add_key),
    ("bpf", libc::SYS_bpf),
    ("clock_adjtime", libc::SYS_clock_adjtime),
    ("clock_settime", libc::SYS_clock_settime),
    ("create_module", 174),
    ("delete_module", libc::SYS_delete_module),
    ("finit_module", libc::SYS_finit_module),
    ("fsconfig", libc::SYS_fsconfig),
    ("fsmount", libc::SYS_fsmount),
    ("fsopen", libc::SYS_fsopen),
    ("fspick", libc::SYS_fspick),
    ("get_kernel_syms", 177),
    ("get_mempolicy", libc::SYS_get_mempolicy),
    ("init_module", libc::SYS_init_module),
    ("io_uring_enter", libc::SYS_io_uring_enter),
    ("io_uring_register", libc::SYS_io_uring_register),
    ("io_uring_setup", libc::SYS_io_uring_setup),
    ("ioperm", libc::SYS_ioperm),
    ("iopl", libc::SYS_iopl),
    ("kcmp", libc::SYS_kcmp),
    ("kexec_file_load", libc::SYS_kexec_file_load),
    ("kexec_load", libc::SYS_kexec_load),
    ("keyctl", libc::SYS_keyctl),
    ("lookup_dcookie", libc::SYS_lookup_dcookie),
    ("mbind", libc::SYS_mbind),
    ("mount", libc::SYS_mount),
    ("mount_setattr", libc::SYS_mount_setattr),
    ("move_mount", libc::SYS_move_mount),
    ("move_pages", libc::SYS_move_pages),
    ("name_to_handle_at", libc::SYS_name_to_handle_at),
    ("nfsservctl", libc::SYS_nfsservctl),
    ("open_by_handle_at", libc::SYS_open_by_handle_at),
    ("open_tree", libc::SYS_open_tree),
    ("perf_event_open", libc::SYS_perf_event_open),
    ("pivot_root", libc::SYS_pivot_root),
    ("process_vm_readv", libc::SYS_process_vm_readv),
    ("process_vm_writev", libc::SYS_process_vm_writev),
    ("ptrace", libc::SYS_ptrace),
    ("query_module", 178),
    ("quotactl", libc::SYS_quotactl),
    ("reboot", libc::SYS_reboot),
    ("request_key", libc::SYS_request_key),
    ("set_mempolicy", libc::SYS_set_mempolicy),
    ("setns", libc::SYS_setns),
    ("settimeofday", libc::SYS_settimeofday),
    ("swapoff", libc::SYS_swapoff),
    ("swapon", libc::SYS_swapon),
    ("_sysctl", libc::SYS__sysctl),
    ("sysfs", libc::SYS_sysfs),
    ("umount2", libc::SYS_umount2),
    ("unshare", libc::SYS_unshare),
    ("uselib", libc::SYS_uselib),
    ("userfaultfd", libc::SYS_userfaultfd),
    ("ustat", libc::SYS_ustat),
];

/// x86-64 system call numbers a filter can let through: 0..=334 and 424..=462.
pub const SYSCALL_TABLE_SIZE: usize = 335 + 39;

/// How many host system calls the bundle's profile lets a container make.
pub fn profile_allows() -> usize {
    SYSCALL_TABLE_SIZE - DENIED.len()
}

fn seccomp_profile() -> serde_json::Value {
    let names: Vec<&str> = DENIED.iter().map(|(n, _)| *n).collect();
    serde_json::json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64"],
        "syscalls": [{"names": names, "action": "SCMP_ACT_ERRNO", "errnoRet": 1}],
    })
}

/// The config: the OCI default spec, running `args`, on a writable rootfs (the file loop
/// writes to /tmp), with the profile above.
pub fn config(args: &[String]) -> serde_json::Value {
    let mut c =
        serde_json::to_value(oci_spec::runtime::Spec::default()).expect("a spec serialises");
    c["process"]["args"] = args
        .iter()
        .map(|a| serde_json::Value::from(a.as_str()))
        .collect();
    c["process"]["terminal"] = false.into();
    c["root"]["readonly"] = false.into();
    c["hostname"] = "probe".into();
    c["linux"]["seccomp"] = seccomp_profile();
    c
}

/// Makes `dir/rootfs` (busybox + applets, the probe) and `dir/config.json`.
pub fn make(
    dir: &Path,
    busybox: &Path,
    probe: &Path,
    args: &[String],
) -> Result<PathBuf, BundleError> {
    let rootfs = dir.join("rootfs");
    for d in ["bin", "proc", "sys", "dev", "tmp", "etc"] {
        let p = rootfs.join(d);
        std::fs::create_dir_all(&p).map_err(io("create", &p))?;
    }
    let bb = rootfs.join("bin/busybox");
    std::fs::copy(busybox, &bb).map_err(io("copy busybox from", busybox))?;
    for applet in ["sh", "sleep", "cat", "ls"] {
        let link = rootfs.join("bin").join(applet);
        std::os::unix::fs::symlink("busybox", &link).map_err(io("symlink", &link))?;
    }
    let p = rootfs.join("bin/sandbox-vm-probe");
    std::fs::copy(probe, &p).map_err(io("copy the probe from", probe))?;
    let cfg = dir.join("config.json");
    let text = serde_json::to_string_pretty(&config(args)).expect("json serialises");
    std::fs::write(&cfg, text).map_err(io("write", &cfg))?;
    Ok(rootfs)
}

/// Does this ELF file have no program interpreter (so it runs without a libc in the rootfs)?
pub fn is_static_elf(bytes: &[u8]) -> bool {
    const PT_INTERP: u32 = 3;
    let u16_at = |o: usize| {
        bytes
            .get(o..o + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
    };
    let u32_at = |o: usize| {
        bytes
            .get(o..o + 4)
            .map(|b| u32::from_le_bytes(b.try_into().unwrap()))
    };
    let u64_at = |o: usize| {
        bytes
            .get(o..o + 8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap()))
    };
    // ELF64, little-endian.
    if bytes.get(..6) != Some(b"\x7fELF\x02\x01") {
        return false;
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38))
    else {
        return false;
    };
    (0..usize::from(phnum)).all(|i| {
        let off = phoff as usize + i * usize::from(phentsize);
        u32_at(off).is_some_and(|t| t != PT_INTERP)
    })
}

/// The probe: `explicit` (`--probe`), else `from_env` (`$SANDBOX_VM_PROBE`), else beside
/// the sandbox-vm binary `exe`, else the static build's place in its cargo target directory.
pub fn find_probe(
    explicit: Option<&Path>,
    from_env: Option<&Path>,
    exe: Option<&Path>,
) -> Result<PathBuf, BundleError> {
    if let Some(p) = explicit.or(from_env) {
        return check_static(p);
    }
    let exe_dir = exe.and_then(Path::parent);
    let mut looked = Vec::new();
    if let Some(d) = exe_dir {
        let candidates = [
            d.join("sandbox-vm-probe"),
            d.join("../x86_64-unknown-linux-gnu/guest/sandbox-vm-probe"),
            d.join("../../x86_64-unknown-linux-gnu/guest/sandbox-vm-probe"),
        ];
        for c in candidates {
            if c.is_file() && check_static(&c).is_ok() {
                return Ok(c);
            }
            looked.push(c.display().to_string());
        }
    }
    Err(BundleError::NoProbe(looked.join(", ")))
}

fn check_static(p: &Path) -> Result<PathBuf, BundleError> {
    let bytes = std::fs::read(p).map_err(io("read the probe", p))?;
    if !is_static_elf(&bytes) {
        return Err(BundleError::NotStatic(p.to_path_buf()));
    }
    Ok(p.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn denied_calls_are_in_the_table_and_unique() {
        let mut nrs: Vec<i64> = DENIED.iter().map(|(_, n)| *n).collect();
        nrs.sort();
        nrs.dedup();
        assert_eq!(nrs.len(), DENIED.len());
        assert!(nrs
            .iter()
            .all(|n| (0..=334).contains(n) || (424..=462).contains(n)));
        assert_eq!(profile_allows(), SYSCALL_TABLE_SIZE - DENIED.len());
    }

    #[test]
    fn config_runs_the_args_with_the_profile() {
        let c = config(&["/bin/sandbox-vm-probe".into(), "--idle".into()]);
        assert_eq!(c["process"]["args"][1], "--idle");
        assert_eq!(c["process"]["terminal"], false);
        assert_eq!(c["linux"]["seccomp"]["syscalls"][0]["names"][0], "acct");
        let spec: oci_spec::runtime::Spec = serde_json::from_value(c).unwrap();
        assert!(spec.linux().as_ref().unwrap().seccomp().is_some());
    }

    #[test]
    fn probe_from_the_option_then_the_variable_then_beside_the_binary() {
        // A test binary is not static, so each place that is looked at shows in the error.
        let me = std::env::current_exe().unwrap();
        let other = Path::new("/nonexistent/probe");
        let err = find_probe(Some(&me), Some(other), None).unwrap_err();
        assert!(matches!(err, BundleError::NotStatic(p) if p == me));
        let err = find_probe(None, Some(other), Some(&me)).unwrap_err();
        assert!(matches!(err, BundleError::Io { path, .. } if path == other));
        let err = find_probe(None, None, Some(Path::new("/nonexistent/bin/sandbox-vm")));
        let looked = match err.unwrap_err() {
            BundleError::NoProbe(looked) => looked,
            e => panic!("{e}"),
        };
        assert!(looked.starts_with("/nonexistent/bin/sandbox-vm-probe, "));
        assert!(matches!(
            find_probe(None, None, None),
            Err(BundleError::NoProbe(l)) if l.is_empty()
        ));
    }

    #[test]
    fn static_elf_check() {
        let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        // Test binaries are dynamically linked.
        assert!(!is_static_elf(&me));
        assert!(!is_static_elf(b"#!/bin/sh\n"));
        let mut elf = vec![0u8; 0x40 + 56];
        elf[..6].copy_from_slice(b"\x7fELF\x02\x01");
        elf[0x20..0x28].copy_from_slice(&0x40u64.to_le_bytes());
        elf[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        elf[0x38..0x3a].copy_from_slice(&1u16.to_le_bytes());
        elf[0x40..0x44].copy_from_slice(&1u32.to_le_bytes()); // PT_LOAD
        assert!(is_static_elf(&elf));
        elf[0x40..0x44].copy_from_slice(&3u32.to_le_bytes()); // PT_INTERP
        assert!(!is_static_elf(&elf));
    }
}
