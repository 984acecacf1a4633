use super::*;

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("svm-jail-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn cgroup_names_are_stable_and_distinct() {
    let a = cgroup_name(Path::new("/run/sandbox-vm/c1/jail"));
    assert_eq!(a, cgroup_name(Path::new("/run/sandbox-vm/c1/jail")));
    assert_ne!(a, cgroup_name(Path::new("/run/sandbox-vm/c2/jail")));
    assert!(a.starts_with("sandbox-vm/") && a.len() == "sandbox-vm/".len() + 16);
}

#[test]
fn cgroup_v1_and_v2_layouts_are_told_apart() {
    let root = scratch("cg");
    let jail = Path::new("/x/jail");
    assert!(matches!(
        cgroup_dir(&root, jail),
        Err(JailError::NoMemoryCgroup)
    ));
    std::fs::create_dir_all(root.join("memory")).unwrap();
    std::fs::write(root.join("memory/memory.limit_in_bytes"), "max").unwrap();
    let (cg, v2) = cgroup_dir(&root, jail).unwrap();
    assert!(!v2);
    assert_eq!(cg, root.join("memory").join(cgroup_name(jail)));
    std::fs::write(root.join("cgroup.controllers"), "memory pids").unwrap();
    let (cg, v2) = cgroup_dir(&root, jail).unwrap();
    assert!(v2);
    assert_eq!(cg, root.join(cgroup_name(jail)));
    let _ = std::fs::remove_dir_all(root);
}

#[test]
fn the_jail_of_a_vm_holds_what_it_opens_and_no_more() {
    let d = scratch("forvm");
    let disk = d.join("rootfs.img");
    std::fs::write(&disk, vec![0u8; 4096]).unwrap();
    let mut vm = VmConfig::new("/k/vmlinux");
    vm.mem_mib = 512;
    vm.disks.push(vmm::config::DiskConfig {
        path: "/k/agent.ext4".into(),
        read_only: true,
        id: None,
    });
    vm.disks.push(vmm::config::DiskConfig {
        path: disk.clone(),
        read_only: false,
        id: None,
    });
    vm.serial = SerialOutput::File(d.join("console.log"));
    vm.vsock = Some(vmm::config::VsockConfig {
        guest_cid: 3,
        uds_path: d.join("vsock.sock"),
    });
    let j = Jail::for_vm(&vm, &d.join("vmm.sock"), d.join("jail"), 65534, 65534);
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
    assert_eq!(j.fsize, MIN_FSIZE);
    vm.net.push(vmm::config::NetConfig {
        tap: "tap0".into(),
        mac: None,
    });
    let j = Jail::for_vm(&vm, &d.join("vmm.sock"), d.join("jail"), 1, 1);
    assert!(j.paths.iter().any(|p| p.path == Path::new("/dev/net/tun")));
    let _ = std::fs::remove_dir_all(d);
}
