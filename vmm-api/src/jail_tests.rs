use super::*;
use test_support::host::connect_as_in;

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
        cgroup_dir(&root, jail, None),
        Err(JailError::NoMemoryCgroup)
    ));
    std::fs::create_dir_all(root.join("memory")).unwrap();
    std::fs::write(root.join("memory/memory.limit_in_bytes"), "max").unwrap();
    let (cg, v2) = cgroup_dir(&root, jail, None).unwrap();
    assert!(!v2);
    assert_eq!(cg, root.join("memory").join(cgroup_name(jail)));
    // Below the pod's cgroup.
    let pod = Path::new("/kubepods/podA/sb1");
    let (cg, _) = cgroup_dir(&root, jail, Some(pod)).unwrap();
    assert_eq!(
        cg,
        root.join("memory/kubepods/podA/sb1")
            .join(cgroup_name(jail))
    );
    std::fs::write(root.join("cgroup.controllers"), "memory pids").unwrap();
    let (cg, v2) = cgroup_dir(&root, jail, None).unwrap();
    assert!(v2);
    assert_eq!(cg, root.join(cgroup_name(jail)));
    let (cg, _) = cgroup_dir(&root, jail, Some(pod)).unwrap();
    assert_eq!(cg, root.join("kubepods/podA/sb1").join(cgroup_name(jail)));
    let _ = std::fs::remove_dir_all(root);
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
        connect_as_in(UID, &inside, Some((&d.join("vsock"), &mount_point))),
        0,
        "the jail's uid through the jail's mount"
    );
    listener.set_nonblocking(true).unwrap();
    assert!(listener.accept().is_ok(), "the connection arrived");
    // On the host, the state directory keeps everyone out, the jail's uid too.
    assert_eq!(connect_as_in(UID, &sock, None), libc::EACCES);
    assert_eq!(connect_as_in(4242, &sock, None), libc::EACCES);
    // Even through the jail's mount, another uid is refused by the directory's mode.
    assert_eq!(
        connect_as_in(4242, &inside, Some((&d.join("vsock"), &mount_point))),
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
        connect_as_in(4242, &inside, jail_view),
        0,
        "the other uid, jailed"
    );
    assert_eq!(connect_as_in(UID, &inside, jail_view), libc::EACCES);
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
