use std::collections::{BTreeMap, BTreeSet};

use super::*;
use crate::oci::annotations as ann;
use crate::oci::translate::test_specs::spec;

/// A host with the files and directories named, and network namespaces at `netns`.
#[derive(Default)]
struct FakeHost {
    files: BTreeSet<PathBuf>,
    dirs: BTreeSet<PathBuf>,
    netns: BTreeSet<PathBuf>,
    /// Other namespace files, with their types.
    ns: BTreeMap<PathBuf, LinuxNamespaceType>,
}

impl HostProbe for FakeHost {
    fn path(&self, p: &Path) -> HostPath {
        if self.files.contains(p) {
            HostPath::File
        } else if self.dirs.contains(p) {
            HostPath::Dir
        } else {
            HostPath::Other
        }
    }

    fn netns(&self, p: &Path) -> Result<(), NetnsError> {
        match self.netns.contains(p) {
            true => Ok(()),
            false => Err(NetnsError::Missing(p.to_path_buf())),
        }
    }

    fn ns_type(&self, p: &Path) -> Result<LinuxNamespaceType, NsFileError> {
        self.ns
            .get(p)
            .copied()
            .ok_or_else(|| NsFileError::Missing(p.to_path_buf()))
    }
}

fn host() -> HostConfig {
    HostConfig {
        kernel: Some("/k/vmlinux".into()),
        initrd: None,
        agent_disk: Some("/k/agent.ext4".into()),
        max_vcpus: 4,
        virtiofsd: Some("/usr/bin/virtiofsd".into()),
        vmm_exe: Some("/usr/bin/sandbox-vm".into()),
        templates: "/t".into(),
        jail: true,
        seccomp: None,
        agent_timeout: Duration::from_secs(7),
    }
}

fn fake() -> FakeHost {
    let mut f = FakeHost::default();
    f.files
        .extend(["/k/vmlinux".into(), "/k/agent.ext4".into()]);
    f.dirs.insert("/b/rootfs".into());
    f.netns.insert("/run/netns/cni-1".into());
    f
}

fn plan(s: &Spec, role: Role, h: &HostConfig, f: &FakeHost) -> Result<PodPlan, PlanError> {
    PodPlan::new(
        "c1",
        s,
        Path::new("/b/rootfs"),
        role,
        Path::new("/run/x/c1"),
        h,
        f,
    )
}

fn namespaces(s: &Spec) -> Vec<(LinuxNamespaceType, Option<String>)> {
    s.linux()
        .as_ref()
        .and_then(|l| l.namespaces().clone())
        .unwrap_or_default()
        .iter()
        .map(|n| (n.typ(), n.path().as_ref().map(|p| p.display().to_string())))
        .collect()
}

#[test]
fn the_cli_container_is_alone_in_its_vm() {
    let s = spec(serde_json::json!({
        "hostname": "box",
        "linux": {"namespaces": [{"type": "network"}, {"type": "uts"}, {"type": "pid"}]},
        "annotations": {ann::MEM_MIB: "1024", ann::TEMPLATE: "off"},
    }));
    let p = plan(&s, Role::Alone, &host(), &fake()).unwrap();
    assert_eq!(p.vm.mem_mib, 1024);
    assert_eq!(p.vm.kernel, PathBuf::from("/k/vmlinux"));
    assert_eq!(
        p.vm.vsock.as_ref().unwrap().uds_path,
        Path::new("/run/x/c1/vsock/vsock.sock")
    );
    assert_eq!((p.mode, p.block_rootfs.clone()), (RootfsMode::Share, None));
    assert_eq!(p.template, TemplateUse::Off);
    assert_eq!(p.hostname.as_deref(), Some("box"));
    assert_eq!(p.netns, None);
    // No NIC: the container stays in the guest's root netns.
    let kinds: Vec<_> = namespaces(&p.first.request.spec)
        .into_iter()
        .map(|n| n.0)
        .collect();
    assert_eq!(
        kinds,
        [
            LinuxNamespaceType::Uts,
            LinuxNamespaceType::Pid,
            LinuxNamespaceType::Mount
        ]
    );
    assert_eq!(p.first.request.spec.hostname().as_deref(), Some("box"));
    assert_eq!(p.first.request.container_id, "c1");
    assert_eq!(p.virtiofsd, PathBuf::from("/usr/bin/virtiofsd"));
    assert_eq!(
        p.vmm,
        VmmRun {
            exe: "/usr/bin/sandbox-vm".into(),
            jail: true,
            seccomp: None
        }
    );
    assert_eq!(p.agent_timeout, Duration::from_secs(7));
    // The plan is what the CLI saves: it survives JSON.
    let back: PodPlan = serde_json::from_slice(&serde_json::to_vec(&p).unwrap()).unwrap();
    assert_eq!(back.first, p.first);
    assert_eq!(back.vm, p.vm);
}

#[test]
fn a_pod_keeps_its_network_namespace_and_sizes_from_cri() {
    let s = spec(serde_json::json!({
        "hostname": "node1",
        "linux": {"namespaces": [
            {"type": "network", "path": "/run/netns/cni-1"}, {"type": "pid"}, {"type": "ipc"}]},
        "annotations": {
            ann::CRI_CONTAINER_TYPE: "sandbox", ann::CRI_SANDBOX_ID: "pod1",
            ann::CRI_SANDBOX_MEMORY: "268435456",
            ann::CRI_SANDBOX_CPU_QUOTA: "250000", ann::CRI_SANDBOX_CPU_PERIOD: "100000"},
    }));
    let p = plan(&s, Role::Pod, &host(), &fake()).unwrap();
    assert_eq!(p.netns, Some(PathBuf::from("/run/netns/cni-1")));
    assert_eq!(p.vm.mem_mib, 256 + translate::GUEST_OVERHEAD_MIB);
    assert_eq!(p.vm.vcpus, 3);
    // The hostname is the VM's (no UTS namespace): not the container's.
    assert_eq!(p.hostname.as_deref(), Some("node1"));
    assert_eq!(p.first.request.spec.hostname(), &None);
    // The pod's netns is the guest's root one: the container stays in it.
    let kinds: Vec<_> = namespaces(&p.first.request.spec)
        .into_iter()
        .map(|n| n.0)
        .collect();
    assert_eq!(
        kinds,
        [
            LinuxNamespaceType::Pid,
            LinuxNamespaceType::Ipc,
            LinuxNamespaceType::Mount
        ]
    );
    // A pod annotation overrides CRI's size.
    let mut s2 = s.clone();
    let mut a = s2.annotations().clone().unwrap();
    a.insert(ann::MEM_MIB.into(), "512".into());
    s2.set_annotations(Some(a));
    assert_eq!(
        plan(&s2, Role::Pod, &host(), &fake()).unwrap().vm.mem_mib,
        512
    );
}

#[test]
fn a_pod_runs_in_its_sandbox_containers_cgroup_and_the_cli_leaves_it() {
    let with = |path: &str| {
        spec(serde_json::json!({
            "linux": {"cgroupsPath": path},
            "annotations": {ann::CRI_CONTAINER_TYPE: "sandbox", ann::CRI_SANDBOX_ID: "pod1"},
        }))
    };
    let p = plan(
        &with("/kubepods/burstable/podU/sb1"),
        Role::Pod,
        &host(),
        &fake(),
    )
    .unwrap();
    assert_eq!(
        p.cgroup.as_ref().unwrap().rel(),
        Path::new("kubepods/burstable/podU/sb1")
    );
    let back: PodPlan = serde_json::from_slice(&serde_json::to_vec(&p).unwrap()).unwrap();
    assert_eq!(back.cgroup, p.cgroup);
    let systemd = with("kubepods-besteffort-podU.slice:cri-containerd:sb1");
    let p = plan(&systemd, Role::Pod, &host(), &fake()).unwrap();
    assert_eq!(
        p.cgroup.unwrap().rel(),
        Path::new(
            "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-podU.slice/cri-containerd-sb1.scope"
        )
    );
    // Without a cgroupsPath (or an empty one), and for the OCI CLI: none.
    assert_eq!(
        plan(&with(""), Role::Pod, &host(), &fake()).unwrap().cgroup,
        None
    );
    let none = spec(serde_json::json!({}));
    assert_eq!(
        plan(&none, Role::Pod, &host(), &fake()).unwrap().cgroup,
        None
    );
    let cli = plan(&with("/default/c1"), Role::Alone, &host(), &fake()).unwrap();
    assert_eq!(cli.cgroup, None);
    // A path out of the hierarchy is refused before anything exists.
    assert!(matches!(
        plan(&with("/kubepods/../../x"), Role::Pod, &host(), &fake()),
        Err(PlanError::Cgroup(_))
    ));
}

#[test]
fn members_join_the_sandboxs_shared_namespaces_in_the_guest() {
    let sandbox = spec(serde_json::json!({}));
    let p = plan(&sandbox, Role::Pod, &host(), &fake()).unwrap();
    let member = spec(serde_json::json!({
        "hostname": "pod1",
        "linux": {"namespaces": [
            {"type": "mount"},
            {"type": "network", "path": "/var/run/netns/cni-1"},
            {"type": "ipc", "path": "/proc/77/ns/ipc"},
            {"type": "uts", "path": "/proc/77/ns/uts"},
            {"type": "pid"},
        ]},
    }));
    let m = p
        .member("c2", &member, Path::new("/b/rootfs"), 12, &fake())
        .unwrap();
    let paths: Vec<Option<String>> = namespaces(&m.request.spec)
        .into_iter()
        .map(|n| n.1)
        .collect();
    // mount and pid of its own; ipc and uts the sandbox's; no netns (the pod's is the
    // guest's root one).
    assert_eq!(
        paths,
        vec![
            None,
            Some("/proc/12/ns/ipc".into()),
            Some("/proc/12/ns/uts".into()),
            None,
        ]
    );
    assert_eq!(m.request.spec.hostname(), &None);
    assert_eq!(m.request.container_id, "c2");
    // A member's own UTS namespace keeps its hostname.
    let own = spec(serde_json::json!({"hostname": "mine",
        "linux": {"namespaces": [{"type": "uts"}]}}));
    let m = p
        .member("c3", &own, Path::new("/b/rootfs"), 12, &fake())
        .unwrap();
    assert_eq!(m.request.spec.hostname().as_deref(), Some("mine"));
}

#[test]
fn members_of_a_pod_without_a_sandbox_container_share_the_guests_root_namespaces() {
    let vm = spec(serde_json::json!({"hostname": "pod1",
        "linux": {"namespaces": [{"type": "uts"}]}}));
    let p = plan(&vm, Role::Pod, &host(), &fake()).unwrap();
    let member = spec(serde_json::json!({
        "hostname": "pod1",
        "linux": {"namespaces": [
            {"type": "mount"},
            {"type": "network", "path": "/proc/77/ns/net"},
            {"type": "ipc", "path": "/proc/77/ns/ipc"},
            {"type": "uts", "path": "/proc/77/ns/uts"},
            {"type": "pid"},
        ]},
    }));
    let m = p
        .member_of_vm("c2", &member, Path::new("/b/rootfs"), &fake())
        .unwrap();
    // Mount and pid of its own; network, ipc and uts the VM's (no entry: the guest's
    // root ones), so no hostname of its own either.
    assert_eq!(
        namespaces(&m.request.spec),
        vec![
            (LinuxNamespaceType::Mount, None),
            (LinuxNamespaceType::Pid, None)
        ]
    );
    assert_eq!(m.request.spec.hostname(), &None);
}

#[test]
fn every_host_problem_is_found_before_anything_exists() {
    let s = spec(serde_json::json!({}));
    let mut h = host();
    h.virtiofsd = None;
    let e = plan(&s, Role::Alone, &h, &fake()).unwrap_err();
    assert!(matches!(e, PlanError::NoVirtiofsd), "{e}");
    assert!(e.to_string().contains("SANDBOX_VM_VIRTIOFSD"));
    let mut h = host();
    h.vmm_exe = None;
    assert!(matches!(
        plan(&s, Role::Pod, &h, &fake()),
        Err(PlanError::NoVmmExe)
    ));

    let mut f = fake();
    f.files.remove(Path::new("/k/agent.ext4"));
    let e = plan(&s, Role::Pod, &host(), &f).unwrap_err();
    assert!(
        e.to_string()
            .contains("guest image /k/agent.ext4 not found"),
        "{e}"
    );
    let mut f = fake();
    f.files.remove(Path::new("/k/vmlinux"));
    let e = plan(&s, Role::Alone, &host(), &f).unwrap_err();
    assert!(
        e.to_string().contains("guest-kernel-config/build.sh"),
        "{e}"
    );

    let gone = spec(serde_json::json!({"linux": {"namespaces": [
        {"type": "network", "path": "/run/netns/gone"}]}}));
    let e = plan(&gone, Role::Pod, &host(), &fake()).unwrap_err();
    assert!(matches!(e, PlanError::Netns(NetnsError::Missing(_))), "{e}");

    let bad = spec(serde_json::json!({"annotations": {ann::TEMPLATE: "sometimes"}}));
    let e = plan(&bad, Role::Alone, &host(), &fake()).unwrap_err();
    assert!(e.to_string().contains(ann::TEMPLATE), "{e}");
}

#[test]
fn host_namespace_paths_are_refused_and_a_wrong_type_is_named() {
    use LinuxNamespaceType as T;
    let mut f = fake();
    f.ns.insert("/proc/9/ns/ipc".into(), T::Ipc);
    f.ns.insert("/proc/9/ns/cgroup".into(), T::Cgroup);
    let with = |typ: &str, path: &str| {
        spec(serde_json::json!({"linux": {"namespaces": [
            {"type": "mount"}, {"type": typ, "path": path}]}}))
    };
    for role in [Role::Alone, Role::Pod] {
        // A path of another type, for every type but network (which `netns` checks).
        let e = plan(&with("cgroup", "/proc/9/ns/ipc"), role, &host(), &f).unwrap_err();
        assert!(
            matches!(
                e,
                PlanError::NsWrongType {
                    want: T::Cgroup,
                    found: T::Ipc,
                    ..
                }
            ),
            "{e}"
        );
        assert_eq!(
            e.to_string(),
            "linux.namespaces: the cgroup namespace's path /proc/9/ns/ipc names a namespace of type ipc"
        );
        let e = plan(&with("ipc", "/proc/9/ns/cgroup"), role, &host(), &f).unwrap_err();
        assert!(matches!(e, PlanError::NsWrongType { .. }), "{e}");
        // The right type, but the host's: never joined, never silently replaced.
        let e = plan(&with("ipc", "/proc/9/ns/ipc"), role, &host(), &f).unwrap_err();
        assert!(
            matches!(e, PlanError::HostNamespace { typ: T::Ipc, .. }),
            "{e}"
        );
        assert!(e
            .to_string()
            .contains("cannot join the host's ipc namespace /proc/9/ns/ipc"));
        let e = plan(&with("uts", "/proc/9/ns/none"), role, &host(), &f).unwrap_err();
        assert!(
            matches!(e, PlanError::NsFile(NsFileError::Missing(_))),
            "{e}"
        );
    }
    // The pod's network namespace is the one path that is used.
    let net = spec(serde_json::json!({"linux": {"namespaces": [
        {"type": "mount"}, {"type": "network", "path": "/run/netns/cni-1"}]}}));
    plan(&net, Role::Pod, &host(), &f).unwrap();
}

#[test]
fn a_block_rootfs_is_copied_from_the_bundle_and_not_checked_as_an_artifact() {
    let s = spec(serde_json::json!({"annotations": {ann::ROOTFS: "block"}}));
    let p = plan(&s, Role::Pod, &host(), &fake()).unwrap();
    assert_eq!(p.mode, RootfsMode::Block);
    assert_eq!(p.block_rootfs, Some(PathBuf::from("/b/rootfs")));
    assert!(p
        .vm
        .disks
        .iter()
        .any(|d| !d.read_only && d.path == Path::new("/run/x/c1/rootfs.img")));
}

#[test]
fn the_cli_keeps_host_hooks_and_the_shim_refuses_every_hook() {
    let with = |kind: &str| spec(serde_json::json!({"hooks": {kind: [{"path": "/bin/true"}]}}));
    let p = plan(&with("prestart"), Role::Alone, &host(), &fake()).unwrap();
    assert!(
        p.first.request.spec.hooks().is_none(),
        "hooks reach the guest"
    );
    let e = plan(&with("startContainer"), Role::Alone, &host(), &fake()).unwrap_err();
    assert!(
        e.to_string()
            .contains("startContainer hooks run in the container's namespaces"),
        "{e}"
    );
    let e = plan(&with("poststop"), Role::Pod, &host(), &fake()).unwrap_err();
    assert!(
        e.to_string()
            .contains("not run by the containerd shim (config.json sets poststop)"),
        "{e}"
    );
    let p = plan(&spec(serde_json::json!({})), Role::Pod, &host(), &fake()).unwrap();
    let e = p
        .member(
            "c2",
            &with("poststart"),
            Path::new("/b/rootfs"),
            12,
            &fake(),
        )
        .unwrap_err();
    assert!(
        matches!(e, PlanError::Hooks(HookError::NotInShim(_))),
        "{e}"
    );
}
