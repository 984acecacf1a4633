//! Creating a container: its namespaces, root and cgroup planned from the spec, its init
//! spawned (or a prepared init taken over) and unwound step by step if that fails.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use agent_protocol::oci_spec::runtime::{Linux, LinuxNamespaceType, Process, Spec};
use agent_protocol::{CreateContainer, Rootfs, StdioConfig};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::CloneFlags;

use super::{console_size, plan_process, spawn_monitor, sys, Container, ContainerError, Env};
use crate::cgroup::Cgroup;
use crate::child::{self, ChildPlan, RootPlan};
use crate::mounts;
use crate::namespaces;
use crate::prepared::{self, Claim, Prepared, Skeleton};
use crate::process::{AgentStdio, Proc};
use crate::sandbox;
use crate::seccomp::{self, Filter};
use crate::security::warn_ignored_labels;
use crate::spawn::{spawn, PidNs};
use crate::stdio::{make_stdio, ChildStdio};
use crate::sync_socket;
use crate::userns::{self, IdMaps};

/// Undoes a step of [`create`] when dropped, unless the create got through
/// ([`Undo::keep`]).
struct Undo<F: FnOnce()>(Option<F>);

impl<F: FnOnce()> Undo<F> {
    fn new(undo: F) -> Self {
        Undo(Some(undo))
    }

    fn keep(mut self) {
        self.0 = None;
    }
}

impl<F: FnOnce()> Drop for Undo<F> {
    fn drop(&mut self) {
        if let Some(undo) = self.0.take() {
            undo();
        }
    }
}

/// The namespaces of a container's init.
struct Namespaces {
    /// New ones (PID aside).
    unshare: CloneFlags,
    /// Existing ones to join, with their flags.
    join: Vec<(OwnedFd, CloneFlags)>,
    /// All but PID, in join order, for execs to join.
    names: Vec<(CloneFlags, &'static str)>,
    pid: PidNs,
    /// Whether the spec names a PID namespace (new or joined).
    has_pid: bool,
    /// A new user namespace, entered last (see [`crate::child`]).
    userns: bool,
}

/// The spec's namespaces; a container always gets a mount namespace of its own.
fn plan_namespaces(linux: &Linux) -> Result<Namespaces, ContainerError> {
    let mut ns_plan = Namespaces {
        unshare: CloneFlags::empty(),
        join: vec![],
        names: vec![],
        pid: PidNs::Inherit,
        has_pid: false,
        userns: false,
    };
    let open_ns = |p: &Path| {
        fs::File::open(p)
            .map(OwnedFd::from)
            .map_err(|e| ContainerError::Invalid(format!("namespace path {}: {e}", p.display())))
    };
    for ns in linux.namespaces().as_deref().unwrap_or(&[]) {
        let typ = ns.typ();
        if typ == LinuxNamespaceType::Pid {
            ns_plan.has_pid = true;
            ns_plan.pid = match ns.path() {
                Some(p) => PidNs::Join(open_ns(p)?),
                None => PidNs::New,
            };
            continue;
        }
        let Some((flag, name)) = namespaces::find(typ) else {
            return Err(ContainerError::NotSupported(format!("{typ:?} namespaces")));
        };
        ns_plan.names.push((flag, name));
        if typ == LinuxNamespaceType::User {
            if ns.path().is_some() {
                return Err(ContainerError::NotSupported(
                    "joining an existing user namespace".into(),
                ));
            }
            ns_plan.userns = true;
            continue;
        }
        match ns.path() {
            Some(p) => ns_plan.join.push((open_ns(p)?, flag)),
            None => ns_plan.unshare |= flag,
        }
    }
    // Join in the table's order (mount last), whatever the spec's order.
    ns_plan
        .names
        .sort_by_key(|(f, _)| namespaces::join_rank(*f));
    if !ns_plan.unshare.contains(CloneFlags::CLONE_NEWNS) {
        return Err(ContainerError::Invalid(
            "the spec must ask for a new mount namespace".into(),
        ));
    }
    Ok(ns_plan)
}

/// The init's root filesystem: the spec's mounts, devices and paths under `rootfs`.
fn plan_root(
    env: &Env<'_>,
    spec: &Spec,
    linux: &Linux,
    rootfs: PathBuf,
    hostname: Option<String>,
) -> Result<RootPlan, ContainerError> {
    let mounts = mounts::plan_mounts(
        &rootfs,
        spec.mounts().as_deref().unwrap_or(&[]),
        env.cgroups.is_v2(),
    )?;
    let devices = mounts::plan_devices(&rootfs, linux.devices().as_deref().unwrap_or(&[]))?;
    let propagation = root_propagation(linux)?;
    Ok(RootPlan {
        rootfs,
        propagation,
        mounts,
        devices,
        masked: linux.masked_paths().clone().unwrap_or_default(),
        readonly: linux.readonly_paths().clone().unwrap_or_default(),
        root_readonly: spec.root().as_ref().and_then(|r| r.readonly()) == Some(true),
        no_pivot: env.no_pivot,
        hostname,
        sysctl: linux
            .sysctl()
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect(),
    })
}

/// The spec's `rootfsPropagation` as runc reads it: `shared` is `/` alone, `rshared` the
/// mounts under it too; none leaves the container's mounts private.
fn root_propagation(linux: &Linux) -> Result<Option<MsFlags>, ContainerError> {
    match linux.rootfs_propagation().as_deref() {
        None | Some("") => Ok(None),
        Some(w) => mounts::propagation(w)
            .map(Some)
            .ok_or_else(|| ContainerError::Invalid(format!("rootfsPropagation {w:?}"))),
    }
}

/// A container init, planned up to its stdio and cgroup.
struct InitPlan<'a> {
    id: &'a str,
    spec: &'a Spec,
    process: &'a Process,
    seccomp: Option<Filter>,
    pid_ns: PidNs,
    join: Vec<(OwnedFd, CloneFlags)>,
    unshare: CloneFlags,
    /// The user namespace's mappings, if the init makes one.
    id_maps: Option<IdMaps>,
    root: RootPlan,
}

/// Starts the init in `cgroup` (or takes over a prepared one that fits) and waits
/// until its root is built. Returns it with the agent's end of its sync socket.
fn start_init(
    env: &Env<'_>,
    plan: InitPlan<'_>,
    stdio: StdioConfig,
    cgroup: &Cgroup,
) -> Result<(Arc<Proc>, UnixStream), ContainerError> {
    let terminal = plan.process.terminal().unwrap_or(false);
    let (child_stdio, agent_stdio) = make_stdio(stdio, terminal, console_size(plan.process))?;
    let staging = env.state_dir.join(prepared::STAGING_DIR);
    let want = || Skeleton::of(plan.spec, &staging, env.cgroups.is_v2());
    if let Some(ready) = prepared::take_matching(env.prepared, want, env.reaper) {
        return take_over(env, ready, plan, (child_stdio, agent_stdio), cgroup);
    }
    let child = ChildPlan {
        cgroup_procs: cgroup.procs_files()?,
        join: plan.join,
        unshare: plan.unshare,
        root: Some(plan.root),
        new_userns: plan.id_maps.is_some(),
        wait_for_start: true,
        process: plan_process(plan.process, child_stdio, plan.seccomp)?,
    };
    let (mut ours, theirs) = UnixStream::pair().map_err(sys("socketpair"))?;
    crate::trace::mark("create: cgroup and stdio made");
    let init = env.reaper.spawn_registered(
        || spawn(plan.pid_ns, child::runner(child), theirs, &mut ours),
        |pid| Proc::new(pid, plan.id, None, agent_stdio),
    )?;
    crate::trace::mark("create: spawned");
    if let Some(maps) = &plan.id_maps {
        sync_socket::expect(&mut ours, b'U', "container process exited during setup")?;
        userns::write_maps(init.pid, maps).map_err(sys("write the user namespace's id maps"))?;
        ours.write_all(b"M")
            .map_err(sys("report id maps written"))?;
    }
    sync_socket::expect(&mut ours, b'R', "container process exited during setup")?;
    Ok((init, ours))
}

/// Hands the prepared init `ready` the rest of `plan` and its stdio.
fn take_over(
    env: &Env<'_>,
    ready: Prepared,
    plan: InitPlan<'_>,
    (stdio, agent_stdio): (ChildStdio, AgentStdio),
    cgroup: &Cgroup,
) -> Result<(Arc<Proc>, UnixStream), ContainerError> {
    let root = plan.root;
    let mut claim = Claim {
        rootfs: root.rootfs,
        propagation: root.propagation,
        mounts: root.mounts[ready.skeleton().mounts.len()..].to_vec(),
        no_pivot: root.no_pivot,
        root_readonly: root.root_readonly,
        hostname: root.hostname,
        process: plan_process(plan.process, stdio, plan.seccomp)?,
    };
    // The skeleton's bounding set is the spec's.
    claim.process.identity.bounding_applied = ready.skeleton().bounding.is_some();
    let proc = Proc::new(ready.pid(), plan.id, None, agent_stdio);
    Ok(ready.claim(env.reaper, cgroup.procs_files()?, claim, proc)?)
}

/// Creates a container whose init waits for [`Container::start`].
pub fn create(env: &Env<'_>, req: CreateContainer) -> Result<Container, ContainerError> {
    let CreateContainer {
        container_id: id,
        spec,
        rootfs,
        stdio,
    } = req;
    let spec: &Spec = &spec;
    let process = spec
        .process()
        .as_ref()
        .ok_or_else(|| ContainerError::Invalid("spec has no process".into()))?;
    let linux = spec.linux().clone().unwrap_or_default();
    let Namespaces {
        unshare,
        join,
        names: ns_names,
        pid: pid_ns,
        has_pid: has_pid_ns,
        userns,
    } = plan_namespaces(&linux)?;
    let id_maps = userns
        .then(|| IdMaps::of(&linux))
        .transpose()
        .map_err(ContainerError::Invalid)?;
    let hostname = spec.hostname().clone().filter(|h| !h.is_empty());
    if hostname.is_some() && !unshare.contains(CloneFlags::CLONE_NEWUTS) {
        return Err(ContainerError::Invalid(
            "spec sets a hostname without a new UTS namespace".into(),
        ));
    }
    warn_ignored_labels(&id, process, Some(&linux));
    let seccomp = linux.seccomp().as_ref().map(seccomp::compile).transpose()?;

    let (rootfs_dir, rootfs_mount) = prepare_rootfs(&id, &rootfs, env)?;
    crate::trace::mark("create: rootfs prepared");
    let unmount = Undo::new(|| {
        if let Some(m) = &rootfs_mount {
            let _ = umount2(m, MntFlags::MNT_DETACH);
        }
    });
    let root = plan_root(env, spec, &linux, rootfs_dir, hostname)?;
    let cgroup = Arc::new(env.cgroups.create(
        &id,
        linux.cgroups_path().as_deref(),
        linux.resources().as_ref(),
    )?);
    let remove_cgroup = Undo::new(|| cgroup.remove());
    let plan = InitPlan {
        id: &id,
        spec,
        process,
        seccomp: seccomp.clone(),
        pid_ns,
        join,
        unshare,
        id_maps,
        root,
    };
    let (init, ours) = start_init(env, plan, stdio, &cgroup)?;
    remove_cgroup.keep();
    unmount.keep();

    let mount_ns = fs::File::open(format!("/proc/{}/ns/mnt", init.pid)).ok();
    crate::trace::mark("create: container ready");
    spawn_monitor(&init, &cgroup, &env.publish);
    Ok(Container {
        id,
        init,
        cgroup,
        start: Mutex::new(Some(ours)),
        ns_names,
        pid_ns: has_pid_ns,
        execs: Mutex::new(HashMap::new()),
        rootfs_mount,
        publish: env.publish.clone(),
        seccomp,
        _mount_ns: mount_ns,
    })
}

/// Mounts a block-device rootfs, or checks a directory rootfs. The mount is read-write even
/// for a read-only root: mount points for the spec's mounts may have to be created first;
/// the container's view of `/` is remounted read-only at the end of its setup (as runc does).
fn prepare_rootfs(
    id: &str,
    rootfs: &Rootfs,
    env: &Env<'_>,
) -> Result<(PathBuf, Option<PathBuf>), ContainerError> {
    match rootfs {
        Rootfs::Directory { path } => {
            let p = PathBuf::from(path);
            if !p.is_absolute() || !p.is_dir() {
                return Err(ContainerError::Rootfs(format!(
                    "{path:?} is not an existing absolute directory"
                )));
            }
            Ok((p, None))
        }
        Rootfs::BlockDevice {
            serial,
            fstype,
            options,
        } => {
            let dev = sandbox::disk_by_serial(env.sys_block, serial)?;
            let path = dev.to_string_lossy();
            if !dev.exists() {
                return Err(ContainerError::Rootfs(format!(
                    "block device {path} (serial {serial:?}) has no device node"
                )));
            }
            let target = env.state_dir.join(id).join("rootfs");
            fs::create_dir_all(&target).map_err(sys("create rootfs mount point"))?;
            let o = mounts::parse_options(options);
            let flags = o.flags;
            let data = (!o.data.is_empty()).then(|| o.data.join(","));
            mount(
                Some(dev.as_path()),
                &target,
                Some(fstype.as_str()),
                flags,
                data.as_deref(),
            )
            .map_err(|e| {
                ContainerError::Rootfs(format!(
                    "cannot mount {path} ({fstype}) on {}: {e}",
                    target.display()
                ))
            })?;
            Ok((target.clone(), Some(target)))
        }
    }
}
#[cfg(test)]
mod create_tests {
    use super::*;
    use agent_protocol::oci_spec::runtime::{LinuxBuilder, LinuxNamespaceBuilder};
    use std::cell::Cell;

    #[test]
    fn an_undo_runs_when_dropped_unless_kept() {
        let ran = Cell::new(0);
        drop(Undo::new(|| ran.set(ran.get() + 1)));
        assert_eq!(ran.get(), 1);
        Undo::new(|| ran.set(ran.get() + 1)).keep();
        assert_eq!(ran.get(), 1);
    }

    fn linux(types: &[LinuxNamespaceType]) -> Linux {
        let ns = types
            .iter()
            .map(|&t| LinuxNamespaceBuilder::default().typ(t).build().unwrap())
            .collect::<Vec<_>>();
        LinuxBuilder::default().namespaces(ns).build().unwrap()
    }

    #[test]
    fn namespaces_are_joined_mount_last_whatever_the_spec_order() {
        use LinuxNamespaceType::{Mount, Network, Pid, Uts};
        let ns = plan_namespaces(&linux(&[Mount, Pid, Network, Uts])).unwrap();
        let names: Vec<_> = ns.names.iter().map(|(_, n)| *n).collect();
        assert_eq!(names, ["uts", "net", "mnt"]);
        assert!(ns.has_pid && matches!(ns.pid, PidNs::New));
        assert!(ns.join.is_empty());
        let e = plan_namespaces(&linux(&[Pid, Uts])).err().unwrap();
        assert!(e.to_string().contains("new mount namespace"), "{e}");
    }

    #[test]
    fn a_user_namespace_is_made_last_and_joined_last() {
        use LinuxNamespaceType::{Mount, Pid, User, Uts};
        let ns = plan_namespaces(&linux(&[User, Mount, Pid, Uts])).unwrap();
        assert!(ns.userns);
        assert!(
            !ns.unshare.contains(CloneFlags::CLONE_NEWUSER),
            "made after the root"
        );
        let names: Vec<_> = ns.names.iter().map(|(_, n)| *n).collect();
        assert_eq!(names, ["uts", "mnt", "user"]);
        assert!(!plan_namespaces(&linux(&[Mount, Pid])).unwrap().userns);
    }

    #[test]
    fn root_propagation_is_the_specs_word_recursive_only_with_r() {
        let with = |w: Option<&str>| {
            let mut l = Linux::default();
            l.set_rootfs_propagation(w.map(String::from));
            root_propagation(&l)
        };
        assert_eq!(with(None).unwrap(), None);
        assert_eq!(with(Some("")).unwrap(), None);
        assert_eq!(with(Some("shared")).unwrap(), Some(MsFlags::MS_SHARED));
        assert_eq!(
            with(Some("rslave")).unwrap(),
            Some(MsFlags::MS_SLAVE | MsFlags::MS_REC)
        );
        assert_eq!(
            with(Some("unbindable")).unwrap(),
            Some(MsFlags::MS_UNBINDABLE)
        );
        assert_eq!(with(Some("private")).unwrap(), Some(MsFlags::MS_PRIVATE));
        assert!(with(Some("sideways")).is_err());
    }
}
