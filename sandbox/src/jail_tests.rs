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
    // The 512 MiB of guest RAM: more than MIN_FSIZE and the 4 KiB disk.
    assert_eq!(j.fsize, 512 << 20);
    // Guest RAM is a memfd the VMM grows to its size: the limit covers it.
    vm.mem_mib = 4096;
    let j = Jail::for_vm(&vm, &d.join("vmm.sock"), d.join("jail"), 65534, 65534);
    assert_eq!(j.fsize, 4096 << 20);
    vm.net.push(vmm::config::NetConfig {
        tap: "tap0".into(),
        mac: None,
    });
    let j = Jail::for_vm(&vm, &d.join("vmm.sock"), d.join("jail"), 1, 1);
    assert!(j.paths.iter().any(|p| p.path == Path::new("/dev/net/tun")));
    let _ = std::fs::remove_dir_all(d);
}

/// Connects to `sock` from a child process as `uid`/`gid`; with `view`, the child first
/// does what the jail does: a private mount namespace in which directory `view.0` is also
/// mounted at `view.1`. Returns the errno of connect (0: connected).
fn connect_as(uid: u32, sock: &Path, view: Option<(&Path, &Path)>) -> i32 {
    let path = cstr(sock);
    let view = view.map(|(from, to)| (cstr(from), cstr(to)));
    // SAFETY: the child makes only raw system calls on memory prepared before the fork,
    // then _exits.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        // SAFETY: as above; `addr` is a zeroed sockaddr_un filled within its bounds.
        unsafe {
            if let Some((from, to)) = &view {
                let slash = c"/";
                if libc::unshare(libc::CLONE_NEWNS) != 0
                    || libc::mount(
                        std::ptr::null(),
                        slash.as_ptr(),
                        std::ptr::null(),
                        libc::MS_REC | libc::MS_PRIVATE,
                        std::ptr::null(),
                    ) != 0
                    || libc::mount(
                        from.as_ptr(),
                        to.as_ptr(),
                        std::ptr::null(),
                        libc::MS_BIND,
                        std::ptr::null(),
                    ) != 0
                {
                    libc::_exit(201);
                }
            }
            if libc::setgroups(0, std::ptr::null()) != 0
                || libc::setgid(uid) != 0
                || libc::setuid(uid) != 0
            {
                libc::_exit(200);
            }
            let fd = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0);
            let mut addr: libc::sockaddr_un = std::mem::zeroed();
            addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
            for (i, b) in path
                .as_bytes()
                .iter()
                .enumerate()
                .take(addr.sun_path.len() - 1)
            {
                addr.sun_path[i] = *b as libc::c_char;
            }
            let len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
            let r = libc::connect(fd, (&addr as *const libc::sockaddr_un).cast(), len);
            let errno = *libc::__errno_location();
            libc::_exit(if r == 0 { 0 } else { errno.min(199) });
        }
    }
    let mut status = 0;
    // SAFETY: waits for our own child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    assert!(libc::WIFEXITED(status));
    let code = libc::WEXITSTATUS(status);
    assert!(code < 200, "the child could not set itself up ({code})");
    code
}

#[test]
fn guest_port_listeners_are_reachable_by_the_jailed_vmm_only() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    // A state directory as the runtime makes it: 0700 root.
    let d = scratch("vsockdir");
    std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700)).unwrap();
    let uds = d.join("vsock/vsock.sock");
    create_vsock_dir(&uds, true).unwrap();
    create_vsock_dir(&uds, true).unwrap();
    let meta = std::fs::metadata(d.join("vsock")).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (UID, GID));
    assert_eq!(meta.mode() & 0o7777, 0o700);
    let listener = listen_guest_port(&uds, 5000).unwrap();
    let sock = d.join("vsock/vsock.sock_5000");
    let meta = std::fs::symlink_metadata(&sock).unwrap();
    assert_eq!((meta.uid(), meta.mode() & 0o777), (UID, 0o600));

    // The jail's view: the vsock directory at a path whose parents are open to all.
    let view = scratch("vsockview");
    std::fs::set_permissions(&view, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mount_point = view.join("vsock");
    std::fs::create_dir(&mount_point).unwrap();
    let inside = mount_point.join("vsock.sock_5000");
    assert_eq!(
        connect_as(UID, &inside, Some((&d.join("vsock"), &mount_point))),
        0,
        "the jail's uid through the jail's mount"
    );
    listener.set_nonblocking(true).unwrap();
    assert!(listener.accept().is_ok(), "the connection arrived");
    // On the host, the state directory keeps everyone out, the jail's uid too.
    assert_eq!(connect_as(UID, &sock, None), libc::EACCES);
    assert_eq!(connect_as(4242, &sock, None), libc::EACCES);
    // Even through the jail's mount, another uid is refused by the directory's mode.
    assert_eq!(
        connect_as(4242, &inside, Some((&d.join("vsock"), &mount_point))),
        libc::EACCES
    );

    // A VMM jailed with another uid gets the directory and the listeners in it; later
    // listeners follow; other files stay as they are.
    std::fs::write(d.join("vsock/vsock.sock.log"), "").unwrap();
    give_vsock_dir(&uds, 4242, 4242).unwrap();
    let owner = |p: &Path| std::fs::symlink_metadata(p).unwrap().uid();
    assert_eq!(owner(&d.join("vsock")), 4242);
    assert_eq!(owner(&sock), 4242);
    assert_eq!(owner(&d.join("vsock/vsock.sock.log")), 0);
    let later = listen_guest_port(&uds, 5001).unwrap();
    assert_eq!(owner(&d.join("vsock/vsock.sock_5001")), 4242);
    let inside = mount_point.join("vsock.sock_5001");
    let vsock_dir = d.join("vsock");
    let jail_view = Some((vsock_dir.as_path(), mount_point.as_path()));
    assert_eq!(
        connect_as(4242, &inside, jail_view),
        0,
        "the other uid, jailed"
    );
    assert_eq!(connect_as(UID, &inside, jail_view), libc::EACCES);
    later.set_nonblocking(true).unwrap();
    assert!(later.accept().is_ok());

    // Not jailed: root's directory, root's listeners; an existing directory is fixed up.
    let uds = d.join("plain/vsock.sock");
    std::fs::create_dir(d.join("plain")).unwrap();
    create_vsock_dir(&d.join("new/state/vsock/vsock.sock"), false).unwrap();
    let meta = std::fs::metadata(d.join("new/state")).unwrap();
    assert_eq!(
        meta.mode() & 0o7777,
        0o700,
        "a missing state directory is made private"
    );
    create_vsock_dir(&uds, false).unwrap();
    let meta = std::fs::metadata(d.join("plain")).unwrap();
    assert_eq!((meta.uid(), meta.mode() & 0o7777), (0, 0o700));
    drop(listen_guest_port(&uds, 7).unwrap());
    let meta = std::fs::symlink_metadata(d.join("plain/vsock.sock_7")).unwrap();
    assert_eq!((meta.uid(), meta.mode() & 0o777), (0, 0o600));
    let _ = std::fs::remove_dir_all(d);
    let _ = std::fs::remove_dir_all(view);
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
