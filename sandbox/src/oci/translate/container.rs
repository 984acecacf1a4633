//! Container → agent request: the `CreateContainer` the guest agent runs, and the host
//! binds that put the container's rootfs and bind-mount sources into the sandbox's share.
//!
//! Share layout (relative to a share's root, the same on the host and in the guest):
//! `<id>/rootfs` in the rootfs share is the bundle's rootfs, `<id>/mounts/<n>` in the
//! volumes share the source of the spec's n-th bind mount (a file or a directory). The
//! guest sees each share at its [`ShareKind::guest_dir`].

use std::path::{Path, PathBuf};

use agent_protocol::{CreateContainer, Rootfs, StdioConfig};
use oci_spec::runtime::{Mount, MountBuilder, Spec};

use super::vm::{RootfsMode, ROOTFS_DISK_SERIAL};
use super::{FileProbe, HostPath, TranslateError};
pub use crate::share::HostBind;
use crate::share::ShareKind;

/// What adding one container to a sandbox takes.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ContainerPlan {
    /// The agent's request (its stdio is set by the caller).
    pub request: CreateContainer,
    /// Host binds into the share, rootfs first; made before the request is sent.
    pub binds: Vec<HostBind>,
}

/// The container's directory in each share, relative to its root.
pub fn share_dir(id: &str) -> PathBuf {
    PathBuf::from(id)
}

fn guest_path(share: ShareKind, rel: &Path) -> String {
    Path::new(share.guest_dir()).join(rel).display().to_string()
}

fn is_bind(m: &Mount) -> bool {
    m.typ().as_deref() == Some("bind")
        || m.options()
            .as_ref()
            .is_some_and(|o| o.iter().any(|o| o == "bind" || o == "rbind"))
}

fn has_option(m: &Mount, opt: &str) -> bool {
    m.options()
        .as_ref()
        .is_some_and(|o| o.iter().any(|o| o == opt))
}

/// A private tmpfs for `/dev/shm`: inside one VM that is what a pod-shared `/dev/shm` is.
fn shm_tmpfs(dest: PathBuf) -> Mount {
    MountBuilder::default()
        .destination(dest)
        .typ("tmpfs")
        .source("shm")
        .options(vec![
            "nosuid".to_string(),
            "noexec".into(),
            "nodev".into(),
            "mode=1777".into(),
            "size=65536k".into(),
        ])
        .build()
        .expect("all mount fields are set")
}

/// The spec's mounts for the guest: bind sources move into the share (their host binds
/// are returned), a host directory on `/dev/shm` becomes a guest tmpfs, the rest stays.
fn guest_mounts(
    id: &str,
    mounts: &[Mount],
    probe: FileProbe<'_>,
) -> Result<(Vec<Mount>, Vec<HostBind>), TranslateError> {
    let mut out = Vec::new();
    let mut binds = Vec::new();
    for m in mounts {
        if !is_bind(m) {
            out.push(m.clone());
            continue;
        }
        let dest = m.destination().clone();
        if dest == Path::new("/dev/shm") {
            out.push(shm_tmpfs(dest));
            continue;
        }
        let src = m.source().clone().unwrap_or_default();
        let is_file = match probe(&src) {
            HostPath::File => true,
            HostPath::Dir => false,
            HostPath::Other => return Err(TranslateError::BadBindSource { src, dest }),
        };
        // Named after the source: the guest's mountinfo then shows the source's name as a
        // file bind's root (a directory is a virtio-fs submount of its own, whose root
        // reads `/`: it keeps its own device number, so inodes of different volumes never
        // look alike).
        let name = src.file_name().unwrap_or(std::ffi::OsStr::new("source"));
        let share_rel = share_dir(id)
            .join("mounts")
            .join(binds.len().to_string())
            .join(name);
        let mut guest = m.clone();
        let share = ShareKind::Volumes;
        guest.set_source(Some(PathBuf::from(guest_path(share, &share_rel))));
        guest.set_typ(Some("bind".into()));
        out.push(guest);
        binds.push(HostBind {
            src,
            share,
            share_rel,
            is_file,
            read_only: has_option(m, "ro"),
            recursive: has_option(m, "rbind"),
        });
    }
    Ok((out, binds))
}

/// The spec as the guest agent should see it: no hooks (host programs, run by the front
/// end: see `crate::oci::hooks`), mounts rewritten, the pod's network namespace replaced
/// by the guest's root one, other namespace paths (host paths, meaningless in the guest:
/// the plan refuses them for the container that boots a sandbox, and joins a pod
/// member's to its sandbox's in the guest) dropped, the cgroup path left to the agent's
/// default.
fn guest_spec(spec: &Spec, mounts: Vec<Mount>) -> Result<Spec, TranslateError> {
    let mut g = spec.clone();
    g.set_hooks(None);
    g.set_mounts(Some(mounts));
    if let Some(linux) = g.linux_mut() {
        if let Some(nss) = linux.namespaces_mut() {
            // A network namespace given by path is the pod's: its interfaces are the
            // guest's own (see `crate::network`), so the container stays in the guest's
            // root netns, where the agent configured them.
            nss.retain(|ns| {
                ns.typ() != oci_spec::runtime::LinuxNamespaceType::Network || ns.path().is_none()
            });
            for ns in nss.iter_mut() {
                use oci_spec::runtime::LinuxNamespaceType as T;
                if ns.typ() == T::Time {
                    return Err(TranslateError::Namespace(
                        format!("{:?}", ns.typ()).to_lowercase(),
                    ));
                }
                ns.set_path(None);
            }
        }
        linux.set_cgroups_path(None);
    }
    Ok(g)
}

/// For a container alone in a VM that has no NIC (the OCI CLI's container without a pod
/// network namespace): a new network namespace in the guest would hold a loopback device
/// only, as the guest's root netns does, so the container stays in the root one. That
/// spares the guest creating a netns and tearing it down at exit (about 1 s of emulated
/// kernel work each on hosts without hardware virtualization). Not for pods: containers
/// that share a VM must keep the network namespaces they ask for.
pub fn alone_in_vm_without_nic(plan: &mut ContainerPlan) {
    if let Some(nss) = plan
        .request
        .spec
        .linux_mut()
        .as_mut()
        .and_then(|l| l.namespaces_mut().as_mut())
    {
        nss.retain(|ns| ns.typ() != oci_spec::runtime::LinuxNamespaceType::Network);
    }
}

/// Translates one container whose bundle rootfs is `rootfs_dir` on the host. `probe`
/// answers "is this host path a file or a directory" for bind-mount sources.
pub fn container_request(
    id: &str,
    spec: &Spec,
    rootfs_dir: &Path,
    mode: RootfsMode,
    probe: FileProbe<'_>,
) -> Result<ContainerPlan, TranslateError> {
    crate::oci::validate::spec(spec)?;
    let (mounts, mount_binds) =
        guest_mounts(id, spec.mounts().as_deref().unwrap_or_default(), probe)?;
    let spec = guest_spec(spec, mounts)?;
    let mut binds = Vec::new();
    let rootfs = match mode {
        RootfsMode::Share => {
            let share_rel = share_dir(id).join("rootfs");
            let share = ShareKind::Rootfs;
            let path = guest_path(share, &share_rel);
            binds.push(HostBind {
                src: rootfs_dir.to_path_buf(),
                share,
                share_rel,
                is_file: false,
                read_only: false,
                recursive: true,
            });
            Rootfs::Directory { path }
        }
        RootfsMode::Block => Rootfs::BlockDevice {
            serial: ROOTFS_DISK_SERIAL.into(),
            fstype: "ext4".into(),
            options: Vec::new(),
        },
    };
    binds.extend(mount_binds);
    Ok(ContainerPlan {
        request: CreateContainer {
            container_id: id.into(),
            spec: Box::new(spec),
            rootfs,
            stdio: StdioConfig::ALL,
        },
        binds,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::translate::test_specs::spec;

    fn no_files(_: &Path) -> HostPath {
        HostPath::Other
    }

    fn tr(s: &Spec, probe: FileProbe<'_>) -> Result<ContainerPlan, TranslateError> {
        container_request("c1", s, Path::new("/b/rootfs"), RootfsMode::Share, probe)
    }

    #[test]
    fn the_rootfs_goes_through_the_share_without_a_copy() {
        let p = tr(&spec(serde_json::json!({})), &no_files).unwrap();
        assert_eq!(p.request.container_id, "c1");
        assert_eq!(
            p.request.rootfs,
            Rootfs::Directory {
                path: "/run/sandbox-share/c1/rootfs".into()
            }
        );
        assert_eq!(
            p.binds,
            vec![HostBind {
                src: "/b/rootfs".into(),
                share: ShareKind::Rootfs,
                share_rel: "c1/rootfs".into(),
                is_file: false,
                read_only: false,
                recursive: true,
            }]
        );
        let b = container_request(
            "c1",
            &spec(serde_json::json!({})),
            Path::new("/b/rootfs"),
            RootfsMode::Block,
            &no_files,
        )
        .unwrap();
        assert!(b.binds.is_empty());
        assert!(
            matches!(b.request.rootfs, Rootfs::BlockDevice { ref serial, .. } if serial == ROOTFS_DISK_SERIAL)
        );
    }

    #[test]
    fn bind_sources_move_into_the_share() {
        let s = spec(serde_json::json!({"mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/etc/hosts", "type": "bind", "source": "/host/hosts", "options": ["rbind", "ro"]},
            {"destination": "/dev/shm", "type": "bind", "source": "/host/shm", "options": ["bind"]},
            {"destination": "/data", "type": "none", "source": "/host/dir", "options": ["bind", "rw"]},
        ]}));
        let files = |p: &Path| match p.to_str() {
            Some("/host/hosts") => HostPath::File,
            Some("/host/dir") => HostPath::Dir,
            _ => HostPath::Other,
        };
        let p = tr(&s, &files).unwrap();
        assert_eq!(p.binds.len(), 3, "rootfs + two binds");
        assert_eq!(
            p.binds[1],
            HostBind {
                src: "/host/hosts".into(),
                share: ShareKind::Volumes,
                share_rel: "c1/mounts/0/hosts".into(),
                is_file: true,
                read_only: true,
                recursive: true,
            }
        );
        assert_eq!(p.binds[2].share_rel, PathBuf::from("c1/mounts/1/dir"));
        assert_eq!(
            p.binds[2].share,
            ShareKind::Volumes,
            "host writes must be seen"
        );
        assert!(!p.binds[2].is_file && !p.binds[2].read_only);
        let mounts = p.request.spec.mounts().clone().unwrap();
        assert_eq!(mounts.len(), 4);
        assert_eq!(
            mounts[1].source().as_deref(),
            Some(Path::new("/run/sandbox-volumes/c1/mounts/0/hosts"))
        );
        assert_eq!(mounts[1].options().as_ref().unwrap(), &["rbind", "ro"]);
        assert_eq!(mounts[2].typ().as_deref(), Some("tmpfs"));
        assert_eq!(mounts[3].typ().as_deref(), Some("bind"));
        assert_eq!(mounts[3].destination(), Path::new("/data"));

        let missing = spec(serde_json::json!({"mounts": [
            {"destination": "/x", "type": "bind", "source": "/nope"},
        ]}));
        let e = tr(&missing, &files).unwrap_err();
        assert!(matches!(e, TranslateError::BadBindSource { .. }));
        assert!(e.to_string().contains("/nope"), "{e}");
    }

    #[test]
    fn host_namespace_paths_and_cgroup_path_are_dropped() {
        let s = spec(serde_json::json!({"linux": {
            "namespaces": [{"type": "pid"}, {"type": "network", "path": "/run/netns/x"}],
            "cgroupsPath": "machine.slice:libpod:abc",
        }, "root": {"path": "rootfs", "readonly": true}}));
        let p = tr(&s, &no_files).unwrap();
        let linux = p.request.spec.linux().clone().unwrap();
        use oci_spec::runtime::LinuxNamespaceType as T;
        let nss = linux.namespaces().as_ref().unwrap();
        assert!(nss.iter().all(|n| n.path().is_none()));
        assert!(
            nss.iter().all(|n| n.typ() != T::Network),
            "the pod netns becomes the guest's root netns: {nss:?}"
        );
        assert!(linux.cgroups_path().is_none());
        assert_eq!(
            p.request.spec.root().as_ref().and_then(|r| r.readonly()),
            Some(true)
        );
        let t = spec(serde_json::json!({"linux": {"namespaces": [{"type": "time"}]}}));
        assert_eq!(
            tr(&t, &no_files).unwrap_err(),
            TranslateError::Namespace("time".into())
        );
    }

    #[test]
    fn a_new_network_namespace_stays_and_host_network_stays_without_one() {
        use oci_spec::runtime::LinuxNamespaceType as T;
        let nets = |s: &Spec| -> Vec<bool> {
            let p = tr(s, &no_files).unwrap();
            let linux = p.request.spec.linux().clone().unwrap();
            linux
                .namespaces()
                .clone()
                .unwrap_or_default()
                .iter()
                .filter(|n| n.typ() == T::Network)
                .map(|n| n.path().is_none())
                .collect()
        };
        // `--network none`: a new, empty netns in the guest (loopback only).
        let none = spec(serde_json::json!({"linux": {"namespaces": [{"type": "network"}]}}));
        assert_eq!(nets(&none), [true]);
        // Host network: no entry, so the guest's root netns, which has no NIC.
        let host = spec(serde_json::json!({"linux": {"namespaces": [{"type": "mount"}]}}));
        assert!(nets(&host).is_empty());
    }

    #[test]
    fn a_container_alone_in_a_vm_without_nic_stays_in_the_root_netns() {
        use oci_spec::runtime::LinuxNamespaceType as T;
        let s = spec(serde_json::json!({"linux": {"namespaces": [
            {"type": "network"}, {"type": "mount"}, {"type": "pid"}]}}));
        let mut p = tr(&s, &no_files).unwrap();
        alone_in_vm_without_nic(&mut p);
        let types: Vec<T> = p
            .request
            .spec
            .linux()
            .as_ref()
            .unwrap()
            .namespaces()
            .as_ref()
            .unwrap()
            .iter()
            .map(|n| n.typ())
            .collect();
        assert_eq!(types, [T::Mount, T::Pid]);
    }

    #[test]
    fn a_user_namespace_keeps_its_mappings_for_the_guest() {
        let maps = serde_json::json!([{"containerID": 0, "hostID": 1000, "size": 65536}]);
        let s = spec(serde_json::json!({"linux": {
            "namespaces": [{"type": "user"}, {"type": "mount"}],
            "uidMappings": maps, "gidMappings": maps}}));
        let p = tr(&s, &no_files).unwrap();
        let linux = p.request.spec.linux().clone().unwrap();
        assert_eq!(linux.uid_mappings().as_ref().unwrap()[0].host_id(), 1000);
        assert_eq!(linux.gid_mappings().as_ref().unwrap()[0].size(), 65536);
        let no_maps = spec(serde_json::json!({"linux": {"namespaces": [{"type": "user"}]}}));
        let e = tr(&no_maps, &no_files).unwrap_err();
        assert!(e.to_string().contains("uidMappings"), "{e}");
    }

    #[test]
    fn hooks_stay_on_the_host() {
        let s = spec(serde_json::json!({"hooks": {"prestart": [{"path": "/bin/true"}]}}));
        assert!(tr(&s, &no_files).unwrap().request.spec.hooks().is_none());
    }
}
