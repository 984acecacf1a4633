use super::*;

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("svm-jail-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn the_jail_of_a_vm_holds_what_it_opens_and_no_more() {
    let d = scratch("forvm");
    let disk = d.join("rootfs.img");
    std::fs::write(&disk, vec![0u8; 4096]).unwrap();
    let mut vm = VmConfig::new("/k/vmlinux");
    vm.mem_mib = 512;
    vm.disks.push(vmm_api::config::DiskConfig {
        path: "/k/agent.ext4".into(),
        read_only: true,
        id: None,
    });
    vm.disks.push(vmm_api::config::DiskConfig {
        path: disk.clone(),
        read_only: false,
        id: None,
    });
    vm.serial = SerialOutput::File(d.join("console.log"));
    vm.vsock = Some(vmm_api::config::VsockConfig {
        guest_cid: 3,
        uds_path: d.join("vsock.sock"),
    });
    let j = Jail::for_vm(&vm, &d.join("vmm.sock"), d.join("jail"), 65534, 65534);
    // The vsock directory is mounted apart, and the VMM told so.
    assert_eq!(j.vsock_dir.as_deref(), Some(d.as_path()));
    let mut inside = vm.clone();
    j.vm_config_inside(&mut inside);
    assert_eq!(
        inside.vsock.as_ref().unwrap().uds_path,
        Path::new("/vsock/vsock.sock")
    );
    let mut got: Vec<(String, bool)> = j
        .paths
        .iter()
        .map(|p| (p.path.display().to_string(), p.writable))
        .collect();
    got.sort();
    let s = |p: &Path| p.display().to_string();
    let mut want = vec![
        ("/k/vmlinux".to_string(), false),
        ("/k/agent.ext4".into(), false),
        ("/dev/kvm".into(), true),
        ("/proc/cpuinfo".into(), false),
        (s(&disk), true),
        (s(&d.join("console.log")), true),
        (s(&d), true),
    ];
    want.sort();
    assert_eq!(got, want);
    assert_eq!(j.memory_limit, (512 + VMM_OVERHEAD_MIB) << 20);
    // Guest RAM is a memfd the VMM grows to its size: the limit covers it (512 MiB here,
    // over MIN_FSIZE and the 4 KiB writable disk).
    assert_eq!(j.fsize, 512 << 20);
    vm.mem_mib = 4096;
    let j = Jail::for_vm(&vm, &d.join("vmm.sock"), d.join("jail"), 65534, 65534);
    assert_eq!(j.fsize, 4096 << 20);
    vm.net.push(vmm_api::config::NetConfig {
        tap: "tap0".into(),
        mac: None,
    });
    let j = Jail::for_vm(&vm, &d.join("vmm.sock"), d.join("jail"), 1, 1);
    assert!(j.paths.iter().any(|p| p.path == Path::new("/dev/net/tun")));
    let _ = std::fs::remove_dir_all(d);
}

/// Guest RAM grows to its size under the jail's limits: `limits` then the VMM's memfd
/// sizing, in a child process (RLIMIT_FSIZE is per process). Over 256 MiB this failed with
/// EFBIG ("cannot size the guest memory file to 608 MiB: File too large").
#[test]
fn guest_ram_memfd_can_be_sized_under_the_jails_limits() {
    let mut vm = VmConfig::new("/k/vmlinux");
    vm.mem_mib = 1024;
    let d = Path::new("/run/svm-none");
    let j = Jail::for_vm(&vm, &d.join("vmm.sock"), d.join("jail"), 1, 1);
    let size = (vm.mem_mib << 20) as libc::off_t;
    let name = c"svm-jail-test";
    // SAFETY: the child makes only system calls on values prepared before the fork (no
    // allocation: `limits` allocates only to report an error), then _exits.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        // SAFETY: as above.
        unsafe {
            let code = if limits(&j).is_err() {
                2
            } else {
                let fd = libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC);
                if fd >= 0 && libc::ftruncate(fd, size) == 0 {
                    0
                } else {
                    1
                }
            };
            libc::_exit(code);
        }
    }
    let mut status = 0;
    // SAFETY: waits for our own child.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(libc::WIFEXITED(status));
    assert_eq!(
        libc::WEXITSTATUS(status),
        0,
        "1: ftruncate of 1 GiB failed under RLIMIT_FSIZE {} (2: limits failed)",
        j.fsize
    );
}
