use super::*;

fn rel(s: &str) -> PathBuf {
    CgroupsPath::parse(s).unwrap().rel().to_path_buf()
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("svm-cgroup-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn cgroupfs_paths_are_taken_below_the_root() {
    assert_eq!(
        rel("/kubepods/burstable/pod1234/abcd"),
        Path::new("kubepods/burstable/pod1234/abcd")
    );
    assert_eq!(rel("/default/c1"), Path::new("default/c1"));
    // A relative path (the OCI spec allows it) is taken from the root too.
    assert_eq!(rel("kubepods/podX/c"), Path::new("kubepods/podX/c"));
}

#[test]
fn systemd_paths_expand_the_slice_and_name_the_scope() {
    assert_eq!(
        rel("kubepods-burstable-pod1234.slice:cri-containerd:abcd"),
        Path::new(
            "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1234.slice/cri-containerd-abcd.scope"
        )
    );
    assert_eq!(
        rel("kubepods-pod9.slice:cri-containerd:x"),
        Path::new("kubepods.slice/kubepods-pod9.slice/cri-containerd-x.scope")
    );
    // The root slice, no prefix, a default slice, a slice as the unit.
    assert_eq!(rel("-.slice::c1"), Path::new("c1.scope"));
    assert_eq!(rel(":libpod:c1"), Path::new("system.slice/libpod-c1.scope"));
    assert_eq!(
        rel("machine.slice:x:pod-a.slice"),
        Path::new("machine.slice/pod-a.slice")
    );
}

#[test]
fn paths_that_leave_the_hierarchy_or_are_malformed_are_refused() {
    for bad in [
        "/kubepods/../../etc",
        "..",
        "/",
        "",
        "kube--pods.slice:cri:c",
        "-kubepods.slice:cri:c",
        "kubepods:cri:c",
        "a/b.slice:cri:c",
        "kubepods.slice:cri:a/b",
        "kubepods.slice:cri:",
        "a:b",
        "a:b:c:d",
    ] {
        assert!(
            matches!(CgroupsPath::parse(bad), Err(CgroupError::BadPath { .. })),
            "{bad:?} was accepted"
        );
    }
}

/// A fake cgroup hierarchy root: `cgroup.procs` marks a cgroup.
fn fake_hierarchy(dir: &Path, files: &[&str]) {
    std::fs::create_dir_all(dir).unwrap();
    for f in ["cgroup.procs"].iter().chain(files) {
        std::fs::write(dir.join(f), "").unwrap();
    }
}

#[test]
fn v1_hybrid_and_v2_layouts_are_told_apart() {
    let root = scratch("layout");
    assert!(matches!(
        Layout::detect(&root),
        Err(CgroupError::NoHierarchy(_))
    ));
    // Hybrid, as on these hosts: v1 controllers, each its own mount, and an empty
    // cgroup2 at unified (ignored); cpuset and the named systemd hierarchy are not joined.
    fake_hierarchy(&root.join("memory"), &["memory.limit_in_bytes"]);
    for c in ["cpu", "cpuacct", "pids", "blkio", "cpuset", "systemd"] {
        fake_hierarchy(&root.join(c), &[]);
    }
    fake_hierarchy(&root.join("unified"), &["cgroup.controllers"]);
    let Layout::V1(dirs) = Layout::detect(&root).unwrap() else {
        panic!("hybrid is v1");
    };
    let names: Vec<_> = dirs.iter().map(|d| d.file_name().unwrap()).collect();
    assert_eq!(names, ["memory", "cpu", "cpuacct", "pids", "blkio"]);
    // cpu and cpuacct mounted together (symlinks to cpu,cpuacct): joined once.
    for c in ["cpu", "cpuacct"] {
        std::fs::remove_dir_all(root.join(c)).unwrap();
        std::os::unix::fs::symlink("cpu,cpuacct", root.join(c)).unwrap();
    }
    fake_hierarchy(&root.join("cpu,cpuacct"), &[]);
    let Layout::V1(dirs) = Layout::detect(&root).unwrap() else {
        panic!("v1");
    };
    let names: Vec<_> = dirs.iter().map(|d| d.file_name().unwrap()).collect();
    assert_eq!(names, ["memory", "cpu,cpuacct", "pids", "blkio"]);
    // Unified: the root itself.
    std::fs::write(root.join("cgroup.controllers"), "cpu memory pids").unwrap();
    assert_eq!(Layout::detect(&root).unwrap(), Layout::V2(root.clone()));
    let _ = std::fs::remove_dir_all(root);
}

#[test]
fn own_cgroup_is_read_for_v1_and_v2() {
    let root = scratch("own");
    fake_hierarchy(&root.join("cpu,cpuacct"), &[]);
    fake_hierarchy(&root.join("memory"), &[]);
    let own = "9:name=systemd:/\n4:memory:/a/b\n2:cpuacct,cpu:/c\n0::/u\n";
    assert_eq!(
        own_cgroup(own, &root.join("memory")),
        Some(root.join("memory/a/b"))
    );
    assert_eq!(
        own_cgroup(own, &root.join("cpu,cpuacct")),
        Some(root.join("cpu,cpuacct/c"))
    );
    std::fs::write(root.join("cgroup.controllers"), "").unwrap();
    assert_eq!(own_cgroup(own, &root), Some(root.join("u")));
    let _ = std::fs::remove_dir_all(root);
}

#[test]
fn only_missing_directories_are_made_ours() {
    let root = scratch("trees");
    let pod = root.join("kubepods/podA/sb1");
    // kubelet's pod cgroup is there: from the sandbox container's cgroup down is ours.
    std::fs::create_dir_all(root.join("kubepods/podA")).unwrap();
    assert_eq!(trees_to_make(&root, &pod), vec![pod.clone()]);
    assert_eq!(
        trees_to_make(&root, &root.join("default/c1")),
        [root.join("default")]
    );
    // The sandbox container's cgroup is there already: only what we put in it is ours.
    std::fs::create_dir_all(&pod).unwrap();
    assert_eq!(
        trees_to_make(&root, &pod),
        [pod.join("host"), pod.join("sandbox-vm")]
    );
    let _ = std::fs::remove_dir_all(root);
}

fn cgroup_of(pid: &str, root: &Path) -> PathBuf {
    let own = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    own_cgroup(&own, root).unwrap()
}

/// On this host's real cgroups (v1 here, v2 where the host has it): the sandbox's
/// cgroup is made below a kubelet-style pod cgroup, a child placed in it before exec,
/// the owner joins and goes back, and only what was made is removed.
#[test]
fn the_host_cgroup_holds_children_and_owner_and_leaves_nothing() {
    let layout = Layout::detect(Path::new(CGROUP_ROOT)).expect("this host has cgroups");
    let top = format!("svm-unit-{}", std::process::id());
    let kubelet: Vec<PathBuf> = layout
        .roots()
        .iter()
        .map(|r| r.join(&top).join("podA"))
        .collect();
    for d in &kubelet {
        std::fs::create_dir_all(d).unwrap();
    }
    let state = scratch("host");
    let rec = state.join("cgroup.json");
    let path = CgroupsPath::parse(&format!("/{top}/podA/sb1")).unwrap();
    let mut cg = HostCgroup::create(&layout, &path, &rec).unwrap();
    let mut cmd = Command::new("cat");
    cmd.arg("/proc/self/cgroup");
    cg.place(&mut cmd);
    let out = String::from_utf8(cmd.output().unwrap().stdout).unwrap();
    let me = std::process::id().to_string();
    let before: Vec<PathBuf> = layout.roots().iter().map(|r| cgroup_of(&me, r)).collect();
    for root in layout.roots() {
        let host = root.join(&top).join("podA/sb1/host");
        assert_eq!(own_cgroup(&out, &root), Some(host.clone()), "{out}");
    }
    cg.join_self().unwrap();
    for root in layout.roots() {
        assert_eq!(cgroup_of(&me, &root), root.join(&top).join("podA/sb1/host"));
    }
    // The jailed VMM's cgroup, as it would make it below.
    let jail = layout.roots()[0]
        .join(&top)
        .join("podA/sb1/sandbox-vm/0123");
    std::fs::create_dir_all(&jail).unwrap();
    assert!(cg.remove().is_empty());
    let after: Vec<PathBuf> = layout.roots().iter().map(|r| cgroup_of(&me, r)).collect();
    assert_eq!(after, before, "the owner is back where it was");
    for d in &kubelet {
        assert!(d.is_dir(), "kubelet's pod cgroup stays");
        assert!(!d.join("sb1").exists(), "ours is gone");
    }
    assert!(!rec.exists());
    for root in layout.roots() {
        assert!(remove_tree(&root.join(&top), Instant::now()));
    }
    let _ = std::fs::remove_dir_all(state);
}
