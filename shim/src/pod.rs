//! The pod one shim serves: its VM (one `sandbox::Sandbox`, booted by the pod's sandbox
//! container or by a standalone container, shared as `Arc<Sandbox>`) and its containers.
//! Blocking sandbox calls run on tokio's blocking pool, with no lock of the pod held;
//! each process's exit is awaited on a thread of its own, which reports it on the pod's
//! exit channel.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use oci_spec::runtime::{Process, Spec};
use sandbox::oci::annotations::{Annotations, Membership};
use sandbox::stdio::Pumps;
use sandbox::{HostConfig, PodPlan, RealHost, Role, Sandbox, SandboxOps};
use tokio::sync::mpsc;

use crate::container::{exit_code, Container, Exec, Exit, Proc, Status};
use crate::error::ShimError;
use crate::io::{self, IoPaths};
use crate::mount::{self, RootfsMount};

/// Exit status reported when the VM ended without the process reporting one.
const LOST_STATUS: u32 = sandbox::LOST_EXIT_STATUS as u32;
/// How long a failed Kill waits for the process's exit to be reported before it fails.
const EXIT_GRACE: std::time::Duration = std::time::Duration::from_secs(15);
/// The file in a task's bundle that lets `delete` clean up after a crashed shim.
pub const BUNDLE_RECORD: &str = "sandbox-vm-shim.json";

/// A process exit, from its watcher thread to the service.
#[derive(Debug)]
pub struct ExitMsg {
    pub container_id: String,
    pub exec_id: String,
    pub status: u32,
    /// The guest's memory cgroup killed it (its limit was reached).
    pub oom_killed: bool,
}

/// What `delete` needs after a crash, kept in the task's bundle.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct BundleRecord {
    /// The VM's state directory.
    pub state_dir: PathBuf,
    /// This task booted the VM.
    pub owner: bool,
    /// `bundle/rootfs` is our mount.
    pub rootfs_mounted: bool,
}

/// The pod's VM.
#[derive(Clone)]
struct PodVm {
    /// The container that booted it, or the Sandbox API's sandbox.
    owner: String,
    /// Booted by the Sandbox API (`sandbox_api.rs`): no container owns it, and it outlives
    /// the pod's containers until StopSandbox.
    api: bool,
    /// How it was planned (its later containers are planned from it).
    plan: Arc<PodPlan>,
    sandbox: Arc<Sandbox>,
}

#[derive(Default)]
struct PodState {
    vm: Option<PodVm>,
    containers: BTreeMap<String, Container>,
    /// The Sandbox API's sandbox, from CreateSandbox to ShutdownSandbox.
    api: Option<sandbox_api::ApiSandbox>,
}

#[path = "pod_sandbox_api.rs"]
mod sandbox_api;
pub use sandbox_api::CreateSandboxArgs;

/// One pod: see the module docs.
pub struct Pod {
    host: HostConfig,
    state_root: PathBuf,
    namespace: String,
    inner: Mutex<PodState>,
    exits: mpsc::UnboundedSender<ExitMsg>,
}

/// What Create gets.
pub struct CreateArgs {
    pub id: String,
    pub bundle: PathBuf,
    pub rootfs: Vec<RootfsMount>,
    pub io: IoPaths,
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ShimError> + Send + 'static,
) -> Result<T, ShimError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ShimError::Internal(format!("blocking task failed: {e}")))?
}

/// Where a pod's VM keeps its files: `root/<namespace>/<grouping, shortened>` (the
/// sockets inside must stay under the 108-byte Unix socket path limit).
pub fn state_dir(root: &Path, namespace: &str, grouping: &str) -> PathBuf {
    let short: String = grouping.chars().take(24).collect();
    root.join(namespace).join(short)
}

/// Boots the pod's VM in `dir` from the spec of the container that owns it.
fn boot(
    id: &str,
    spec: &Spec,
    rootfs: &Path,
    dir: &Path,
    host: &HostConfig,
) -> Result<(Sandbox, PodPlan), ShimError> {
    let plan = PodPlan::new(id, spec, rootfs, Role::Pod, dir, host, &RealHost)?;
    std::fs::create_dir_all(dir).map_err(|err| ShimError::StateDir {
        path: dir.into(),
        err,
    })?;
    let sandbox = Sandbox::create(&plan)?;
    log::info!("pod VM for {id} is up (pids {:?})", sandbox.host_pids());
    Ok((sandbox, plan))
}

/// Stops the pod's VM (a second stop does nothing) and removes its state directory.
fn stop_vm(vm: &PodVm) {
    match vm.sandbox.stop() {
        Ok(status) => log::info!("pod VM stopped ({status:?})"),
        Err(e) => log::warn!("stopping the pod VM: {e}"),
    }
    if let Err(e) = std::fs::remove_dir_all(&vm.plan.dir) {
        log::warn!("cannot remove {}: {e}", vm.plan.dir.display());
    }
}

fn write_record(bundle: &Path, rec: &BundleRecord) {
    let json = serde_json::to_vec(rec).expect("record serializes");
    if let Err(e) = std::fs::write(bundle.join(BUNDLE_RECORD), json) {
        log::warn!("cannot write {BUNDLE_RECORD} in {}: {e}", bundle.display());
    }
}

/// Waits for a process's exit on a thread of its own and reports it.
fn watch_exit(
    sandbox: Arc<Sandbox>,
    container_id: String,
    exec_id: String,
    pumps: Option<Pumps>,
    exits: mpsc::UnboundedSender<ExitMsg>,
) {
    let name = format!("wait-{}", &container_id[..container_id.len().min(8)]);
    let spawned = std::thread::Builder::new().name(name).spawn(move || {
        let exec = (!exec_id.is_empty()).then_some(exec_id.as_str());
        let result = sandbox.wait(&container_id, exec);
        for t in pumps.into_iter().flat_map(|p| p.outputs) {
            let _ = t.join();
        }
        let (status, oom_killed) = match result {
            Ok(info) => (exit_code(&info), info.oom_killed),
            Err(e) => {
                log::warn!("lost the exit of {container_id}/{exec_id}: {e}");
                (LOST_STATUS, false)
            }
        };
        let _ = exits.send(ExitMsg {
            container_id,
            exec_id,
            status,
            oom_killed,
        });
    });
    if let Err(e) = spawned {
        log::error!("cannot start an exit watcher thread: {e}");
    }
}

impl Pod {
    pub fn new(
        host: HostConfig,
        state_root: PathBuf,
        namespace: String,
        exits: mpsc::UnboundedSender<ExitMsg>,
    ) -> Pod {
        Pod {
            host,
            state_root,
            namespace,
            inner: Mutex::new(PodState::default()),
            exits,
        }
    }

    fn lock(&self) -> MutexGuard<'_, PodState> {
        self.inner.lock().expect("poisoned")
    }

    fn vm(&self) -> Result<PodVm, ShimError> {
        self.lock().vm.clone().ok_or(ShimError::NoVm)
    }

    /// Runs `f` on container `id` (NotFound if there is none).
    pub fn with<T>(&self, id: &str, f: impl FnOnce(&mut Container) -> T) -> Result<T, ShimError> {
        let mut st = self.lock();
        let c = st
            .containers
            .get_mut(id)
            .ok_or_else(|| ShimError::NotFound(format!("container {id}")))?;
        Ok(f(c))
    }

    /// Runs `f` on process `exec_id` of container `id`.
    pub fn with_proc<T>(
        &self,
        id: &str,
        exec_id: &str,
        f: impl FnOnce(&mut Proc) -> T,
    ) -> Result<T, ShimError> {
        self.with(id, |c| c.proc_mut(exec_id).map(f))?
            .ok_or_else(|| ShimError::NotFound(format!("exec {exec_id} of container {id}")))
    }

    /// Whether no container is left.
    pub fn is_empty(&self) -> bool {
        self.lock().containers.is_empty()
    }

    /// Create: mounts the rootfs, boots the VM if this container owns one, and adds the
    /// container to it with its streams attached. Returns the guest pid.
    pub async fn create(&self, args: CreateArgs) -> Result<u32, ShimError> {
        if self.lock().containers.contains_key(&args.id) {
            return Err(ShimError::Exists(args.id));
        }
        let spec = crate::bundle::load_spec(&args.bundle)?;
        let target = args.bundle.join("rootfs");
        let (rootfs_dir, mounted) = {
            let (mounts, t) = (args.rootfs.clone(), target.clone());
            let mounted = blocking(move || Ok(mount::mount_all(&mounts, &t)?)).await?;
            let dir = match (mounted, spec.root()) {
                (false, Some(r)) if r.path().is_absolute() => r.path().clone(),
                (false, Some(r)) => args.bundle.join(r.path()),
                _ => target.clone(),
            };
            (dir, mounted)
        };
        let result = self.create_mounted(&args, spec, rootfs_dir, mounted).await;
        if result.is_err() && mounted {
            let _ = mount::unmount_rootfs(&target);
        }
        result
    }

    /// Boots the VM when this container owns one (the pod's sandbox container, or a
    /// standalone container); `None` for a pod member, which joins the running VM.
    async fn boot_if_owner(
        &self,
        args: &CreateArgs,
        spec: &Spec,
        rootfs_dir: &Path,
        mounted: bool,
    ) -> Result<Option<PodVm>, ShimError> {
        let current = self.lock().vm.clone();
        let cri = Annotations::parse(spec)
            .map_err(sandbox::PlanError::from)?
            .cri;
        match (cri.membership(), current) {
            (Membership::PodMember, None) => Err(ShimError::NoVm),
            (Membership::PodMember, Some(_)) => Ok(None),
            (_, Some(vm)) => Err(ShimError::SecondOwner(vm.owner)),
            (_, None) => {
                let dir = state_dir(&self.state_root, &self.namespace, cri.grouping(&args.id));
                // Recorded before the boot: a shim that dies booting leaves a VM too.
                let rec = BundleRecord {
                    state_dir: dir.clone(),
                    owner: true,
                    rootfs_mounted: mounted,
                };
                write_record(&args.bundle, &rec);
                let (id, s, r, host) = (
                    args.id.clone(),
                    spec.clone(),
                    rootfs_dir.to_path_buf(),
                    self.host.clone(),
                );
                let (sb, plan) = blocking(move || boot(&id, &s, &r, &dir, &host)).await?;
                Ok(Some(PodVm {
                    owner: args.id.clone(),
                    api: false,
                    plan: Arc::new(plan),
                    sandbox: Arc::new(sb),
                }))
            }
        }
    }

    async fn create_mounted(
        &self,
        args: &CreateArgs,
        spec: Spec,
        rootfs_dir: PathBuf,
        mounted: bool,
    ) -> Result<u32, ShimError> {
        let (host_io, stdin) = io::open(&args.io)?;
        for w in sandbox::oci::validate::ignored_lsm_settings(&spec) {
            log::warn!("container {}: {w}", args.id);
        }
        let booted = self
            .boot_if_owner(args, &spec, &rootfs_dir, mounted)
            .await?;
        let (vm, plan) = match &booted {
            Some(vm) => (vm.clone(), vm.plan.first.clone()),
            None if self.vm()?.api => {
                let vm = self.vm()?;
                let mut spec = spec;
                if let Some(files) = self.api_files() {
                    files.mount_into(&mut spec);
                }
                let plan = vm
                    .plan
                    .member_of_vm(&args.id, &spec, &rootfs_dir, &RealHost)?;
                (vm, plan)
            }
            None => {
                let vm = self.vm()?;
                let sandbox_pid = self.with(&vm.owner, |c| c.init.pid)?;
                let plan = vm
                    .plan
                    .member(&args.id, &spec, &rootfs_dir, sandbox_pid, &RealHost)?;
                (vm, plan)
            }
        };
        let sb = vm.sandbox.clone();
        let added = blocking(move || Ok(sb.add_container(plan, host_io)?)).await;
        let (pid, pumps) = match added {
            Ok(x) => x,
            Err(e) => {
                if let Some(vm) = booted {
                    tokio::task::spawn_blocking(move || stop_vm(&vm));
                }
                return Err(e);
            }
        };
        write_record(
            &args.bundle,
            &BundleRecord {
                state_dir: vm.plan.dir.clone(),
                owner: booted.is_some(),
                rootfs_mounted: mounted,
            },
        );
        let mut init = Proc::new(args.io.clone());
        init.pid = pid as u32;
        init.stdin = stdin;
        init.pumps = Some(pumps);
        let mut st = self.lock();
        if let Some(vm) = booted {
            st.vm = Some(vm);
        }
        st.containers.insert(
            args.id.clone(),
            Container {
                id: args.id.clone(),
                bundle: args.bundle.clone(),
                rootfs_mount: mounted.then(|| args.bundle.join("rootfs")),
                init,
                execs: BTreeMap::new(),
            },
        );
        Ok(pid as u32)
    }

    /// Start of a container's init (`exec_id` empty) or of an exec. Returns the guest pid.
    pub async fn start(&self, id: &str, exec_id: &str) -> Result<u32, ShimError> {
        let sandbox = self.vm()?.sandbox;
        let status = self.with_proc(id, exec_id, |p| p.status)?;
        if status != Status::Created {
            return Err(ShimError::State(format!(
                "{id}/{exec_id} is {status:?}, not created"
            )));
        }
        if exec_id.is_empty() {
            let (sb, c) = (sandbox.clone(), id.to_string());
            blocking(move || Ok(sb.start(&c)?)).await?;
            let (pid, pumps) = self.with_proc(id, "", |p| {
                p.status = Status::Running;
                (p.pid, p.pumps.take())
            })?;
            watch_exit(sandbox, id.into(), String::new(), pumps, self.exits.clone());
            return Ok(pid);
        }
        let (process, paths) = self
            .with(id, |c| {
                c.execs
                    .get(exec_id)
                    .map(|e| (e.process.clone(), e.proc.io.clone()))
            })?
            .ok_or_else(|| ShimError::NotFound(format!("exec {exec_id}")))?;
        let (host_io, stdin) = io::open(&paths)?;
        let (sb, c, e) = (sandbox.clone(), id.to_string(), exec_id.to_string());
        let (pid, pumps) = blocking(move || Ok(sb.exec(&c, &e, process, host_io)?)).await?;
        self.with_proc(id, exec_id, |p| {
            p.status = Status::Running;
            p.pid = pid as u32;
            p.stdin = stdin;
        })?;
        watch_exit(
            sandbox,
            id.into(),
            exec_id.into(),
            Some(pumps),
            self.exits.clone(),
        );
        Ok(pid as u32)
    }

    /// Registers an exec (it runs at its Start).
    pub fn add_exec(
        &self,
        id: &str,
        exec_id: &str,
        process: Process,
        io: IoPaths,
    ) -> Result<(), ShimError> {
        self.with(id, |c| {
            if c.execs.contains_key(exec_id) {
                return Err(ShimError::Exists(format!("exec {exec_id}")));
            }
            if c.init.status != Status::Running {
                return Err(ShimError::State(format!("container {id} is not running")));
            }
            let proc = Proc::new(io);
            c.execs.insert(exec_id.into(), Exec { process, proc });
            Ok(())
        })?
    }

    /// Records an exit from a watcher; returns the pid and exit if this was the first.
    pub fn record_exit(&self, m: &ExitMsg) -> Option<(u32, Exit)> {
        self.with_proc(&m.container_id, &m.exec_id, |p| {
            p.set_exited(m.status)
                .then(|| (p.pid, p.exited().expect("just set")))
        })
        .ok()
        .flatten()
    }

    /// Kill. A process that never started is marked exited with the signal's status (its
    /// exit goes through the exit channel like any other); one that ended already is fine.
    pub async fn kill(
        &self,
        id: &str,
        exec_id: &str,
        signal: u32,
        all: bool,
    ) -> Result<(), ShimError> {
        let status = self.with_proc(id, exec_id, |p| p.status)?;
        match status {
            Status::Stopped => return Ok(()),
            Status::Creating | Status::Created => {
                let _ = self.exits.send(ExitMsg {
                    container_id: id.into(),
                    exec_id: exec_id.into(),
                    status: 128 + signal,
                    oom_killed: false,
                });
                return Ok(());
            }
            Status::Running | Status::Paused => {}
        }
        let sandbox = self.vm()?.sandbox;
        let (c, e) = (id.to_string(), exec_id.to_string());
        let sent = blocking(move || {
            let exec = (!e.is_empty()).then_some(e.as_str());
            Ok(sandbox.signal(&c, exec, signal as i32, all)?)
        })
        .await;
        // A process that ended as the signal went out (a slow guest reports its exit
        // seconds later: the guest then answers ESRCH) is as good as signalled.
        let Err(e) = sent else { return Ok(()) };
        let mut exit = self.with_proc(id, exec_id, |p| p.exit.subscribe())?;
        let ended = tokio::time::timeout(EXIT_GRACE, exit.wait_for(Option::is_some)).await;
        match ended {
            Ok(Ok(_)) => Ok(()),
            _ => Err(e),
        }
    }

    /// Delete of an exec: forgets it. Returns its pid and exit.
    fn delete_exec(&self, id: &str, exec_id: &str) -> Result<(u32, Option<Exit>), ShimError> {
        self.with(id, |c| {
            let e = c
                .execs
                .get(exec_id)
                .ok_or_else(|| ShimError::NotFound(format!("exec {exec_id}")))?;
            if matches!(e.proc.status, Status::Running | Status::Paused) {
                return Err(ShimError::State(format!("exec {exec_id} is still running")));
            }
            let e = c.execs.remove(exec_id).expect("just found");
            Ok((e.proc.pid, e.proc.exited()))
        })?
    }

    /// Delete: an exec's record, or a container: out of the guest and the share, its
    /// rootfs unmounted; the VM stops with its owner or the last container.
    pub async fn delete(&self, id: &str, exec_id: &str) -> Result<(u32, Option<Exit>), ShimError> {
        if !exec_id.is_empty() {
            return self.delete_exec(id, exec_id);
        }
        let status = self.with(id, |c| c.init.status)?;
        if matches!(status, Status::Running | Status::Paused) {
            return Err(ShimError::State(format!("container {id} is still running")));
        }
        if let Ok(vm) = self.vm() {
            let (sb, c) = (vm.sandbox, id.to_string());
            let removed = blocking(move || Ok(sb.remove_container(&c, true)?)).await;
            if let Err(e) = removed {
                log::warn!("removing {id} from the VM: {e}");
            }
        }
        let (c, vm_to_stop) = {
            let mut st = self.lock();
            let c = st.containers.remove(id).expect("checked above");
            let owner_gone = st.vm.as_ref().is_some_and(|v| v.owner == id);
            // The Sandbox API's VM stays for the pod's next containers until StopSandbox.
            let last_gone = st.containers.is_empty() && st.vm.as_ref().is_some_and(|v| !v.api);
            let stop = (owner_gone || last_gone).then(|| st.vm.take()).flatten();
            (c, stop)
        };
        if let Some(s) = &c.init.stdin {
            s.close();
        }
        let _ = std::fs::remove_file(c.bundle.join(BUNDLE_RECORD));
        if let Some(t) = c.rootfs_mount.clone() {
            blocking(move || Ok(mount::unmount_rootfs(&t)?)).await?;
        }
        if let Some(vm) = vm_to_stop {
            self.orphan_all(LOST_STATUS);
            blocking(move || {
                stop_vm(&vm);
                Ok(())
            })
            .await?;
        }
        Ok((c.init.pid, c.init.exited()))
    }

    /// Reports every process still running as exited (their VM is going away).
    fn orphan_all(&self, status: u32) {
        let st = self.lock();
        for c in st.containers.values() {
            let procs = std::iter::once((String::new(), &c.init))
                .chain(c.execs.iter().map(|(k, e)| (k.clone(), &e.proc)));
            for (exec_id, p) in procs {
                if p.exited().is_none() {
                    let _ = self.exits.send(ExitMsg {
                        container_id: c.id.clone(),
                        exec_id,
                        status,
                        oom_killed: false,
                    });
                }
            }
        }
    }

    /// Stops the VM if one is left (Shutdown with no task, or the shim ending).
    pub async fn stop_vm(&self) {
        let vm = self.lock().vm.take();
        if let Some(vm) = vm {
            let _ = tokio::task::spawn_blocking(move || stop_vm(&vm)).await;
        }
    }

    /// The pod's sandbox and whether `id` is the container that owns it.
    pub fn sandbox_for(&self, id: &str) -> Result<(Arc<Sandbox>, bool), ShimError> {
        self.with(id, |_| ())?;
        let vm = self.vm()?;
        Ok((vm.sandbox, vm.owner == id))
    }

    /// Pause/Resume of the whole VM (only through the container that owns it): every
    /// running process's status follows.
    pub async fn set_paused(&self, id: &str, pause: bool) -> Result<(), ShimError> {
        let (sandbox, owner) = self.sandbox_for(id)?;
        if !owner {
            return Err(ShimError::Unsupported(
                "pausing one container of a pod (pause the pod's sandbox container: it pauses the VM)",
            ));
        }
        blocking(move || match pause {
            true => Ok(sandbox.pause()?),
            false => Ok(sandbox.resume()?),
        })
        .await?;
        let (from, to) = match pause {
            true => (Status::Running, Status::Paused),
            false => (Status::Paused, Status::Running),
        };
        let mut st = self.lock();
        for c in st.containers.values_mut() {
            let procs =
                std::iter::once(&mut c.init).chain(c.execs.values_mut().map(|e| &mut e.proc));
            for p in procs.filter(|p| p.status == from) {
                p.status = to;
            }
        }
        Ok(())
    }
}
