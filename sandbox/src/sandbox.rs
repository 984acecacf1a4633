//! [`Sandbox`]: the one owner of a live VM: its share, virtiofsd, the VMM process, the pod
//! network's taps, the containers added to it and a kept agent connection. Every operation
//! takes `&self`, so a front end can share it between threads (`Arc<Sandbox>`): no lock is
//! held across a call into the guest. [`Sandbox::stop`] (or dropping it) ends all of it and
//! leaves no process or mount behind.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use agent_protocol::clone::{CloneIdentity, CLONE_ENTROPY_BYTES};
use agent_protocol::{Client, ClientError, CreateSandbox, Endpoint, ErrorCode, ShareMount};
use oci_spec::runtime::LinuxResources;
use vmm_api::config::{SerialOutput, VmConfig};

use crate::cgroup::{HostCgroup, Layout};
use crate::handle::{HandleError, SandboxHandle, SandboxOps};
use crate::network::template as net_template;
use crate::network::{Netns, NetworkError, PodNetwork};
use crate::oci::translate::{share_dir, ContainerPlan};
use crate::paths::SandboxPaths;
use crate::plan::{PodPlan, Role};
use crate::process::ProcessError;
use crate::share::{Share, ShareError, ShareKind};
use crate::stdio::{self, HostIo, Pumps};
use crate::template::{self, TemplateError, TemplateUse};
use crate::virtiofsd::Virtiofsd;
use crate::vmm_process::{describe_exit, CloneSockets, VmmProcess};

/// Errors creating or changing a sandbox; one line each.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("sandbox share: {0}")]
    Share(#[from] ShareError),
    #[error(transparent)]
    Process(#[from] ProcessError),
    #[error("cannot write the VM config {path}: {err}")]
    Config { path: PathBuf, err: std::io::Error },
    #[error("the guest agent did not answer within {0:?} (guest console: {1})")]
    AgentTimeout(Duration, PathBuf),
    #[error("the VM stopped before its agent answered: {0}")]
    VmStopped(String),
    #[error("{what}: {err}")]
    Agent {
        what: &'static str,
        err: ClientError,
    },
    #[error(transparent)]
    Handle(#[from] HandleError),
    #[error("container {0} already exists in this sandbox")]
    Exists(String),
    #[error("the sandbox is stopped")]
    Stopped,
    #[error(transparent)]
    Network(#[from] NetworkError),
    #[error(transparent)]
    Template(#[from] TemplateError),
    #[error("cannot save the template {path}: {msg}")]
    TemplateSave { path: PathBuf, msg: String },
    #[error("cannot read host entropy for the clone: {0}")]
    Entropy(std::io::Error),
    #[error(transparent)]
    Jail(#[from] crate::jail::JailError),
    #[error(transparent)]
    Image(#[from] crate::image::ImageError),
    #[error(transparent)]
    Cgroup(#[from] crate::cgroup::CgroupError),
}

fn agent_err(what: &'static str) -> impl FnOnce(ClientError) -> SandboxError {
    move |err| SandboxError::Agent { what, err }
}

/// The host side of a running sandbox. Field order is teardown order: the VMM goes before
/// the pod network's taps, then each share's virtiofsd and mounts, then the pod's cgroup.
#[derive(Debug)]
struct Parts {
    vmm: VmmProcess,
    network: Option<NetworkGuard>,
    /// In [`ShareKind::ALL`]'s order.
    shares: Vec<ServedShare>,
    cgroup: Option<HostCgroup>,
}

/// A share and the virtiofsd serving it (field order: virtiofsd stops first).
#[derive(Debug)]
struct ServedShare {
    virtiofsd: Virtiofsd,
    share: Option<Share>,
}

impl Parts {
    fn share(&self, kind: ShareKind) -> Option<&Share> {
        let i = ShareKind::ALL.iter().position(|k| *k == kind)?;
        self.shares.get(i)?.share.as_ref()
    }
}

/// One live sandbox (see the module docs).
#[derive(Debug)]
pub struct Sandbox {
    paths: SandboxPaths,
    handle: SandboxHandle,
    /// `None` once stopped.
    parts: Mutex<Option<Parts>>,
    /// The host's record of the containers in the guest.
    containers: Mutex<BTreeSet<String>>,
    /// The cgroup limits in force per container (the spec's, then each update's), which
    /// the pod's VM must hold.
    limits: Mutex<BTreeMap<String, LinuxResources>>,
    /// The control connection `create` opened, kept for this sandbox's own calls: each
    /// new connection costs the guest an accept, a thread and a handshake. A call takes it
    /// out while it runs (a concurrent call connects anew and may leave its connection
    /// here after); a failed call drops it.
    control: Mutex<Option<Client>>,
}

/// How long the VMM gets to stop after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// Idle agent threads a template starts with: a `run` uses six at once (the control,
/// stdout and stderr connections, the wait, the spawn and the process monitor).
const TEMPLATE_WORKERS: u32 = 8;

impl Sandbox {
    /// Prepares the share, starts virtiofsd and the VMM process, and waits until the guest
    /// agent answers and has mounted the share. On error everything started is undone.
    ///
    /// With a matching template (and the plan's template use not `Off`) the VMM restores
    /// it instead of booting, and the agent is first handed the clone's own entropy, clock
    /// and hostname.
    pub fn create(plan: &PodPlan) -> Result<Sandbox, SandboxError> {
        if let Some(rootfs) = &plan.block_rootfs {
            crate::image::build(rootfs, &SandboxPaths::in_dir(&plan.dir).rootfs_disk)?;
        }
        let template = match plan.template {
            TemplateUse::Off => None,
            TemplateUse::Auto => find_template(plan),
        };
        let t0 = Instant::now();
        let (template, (sandbox, pod_net, mut agent)) = match template {
            None => (None, Self::start_to_agent(plan, None)?),
            Some(t) => match Self::start_to_agent(plan, Some(&t)) {
                Ok(up) => (Some(t), up),
                // Everything the failed restore started is gone (dropped): boot cold.
                Err(e) => {
                    log::warn!(
                        "sandbox {}: the template {} did not restore ({e}); booting cold",
                        plan.id,
                        t.display()
                    );
                    (None, Self::start_to_agent(plan, None)?)
                }
            },
        };
        let how = match template {
            Some(_) => "restored from a template",
            None => "cold boot",
        };
        log::info!(
            "sandbox {}: agent answered after {:.1?} ({how})",
            plan.id,
            t0.elapsed()
        );
        if template.is_some() {
            let hostname = plan.hostname.clone().unwrap_or_else(|| plan.id.clone());
            agent
                .clone_identity(fresh_identity(&hostname)?)
                .map_err(agent_err("cannot make the restored clone unique"))?;
        }
        agent
            .create_sandbox(CreateSandbox {
                sandbox_id: plan.id.clone(),
                hostname: plan.hostname.clone(),
                shares: ShareKind::ALL
                    .iter()
                    .map(|k| ShareMount {
                        tag: k.tag().into(),
                        mount_point: k.guest_dir().into(),
                    })
                    .collect(),
            })
            .map_err(agent_err("cannot set up the sandbox in the guest"))?;
        if let Some(mut pod) = pod_net {
            if template.is_some() {
                net_template::as_restored(&mut pod.guest);
            }
            agent
                .configure_network(pod.guest)
                .map_err(agent_err("cannot configure the pod network in the guest"))?;
        }
        *sandbox.control.lock().expect("poisoned") = Some(agent);
        Ok(sandbox)
    }

    /// Starts the sandbox (restoring `template`, or booting) up to the agent's first answer.
    fn start_to_agent(
        plan: &PodPlan,
        template: Option<&Path>,
    ) -> Result<(Sandbox, Option<PodNetwork>, Client), SandboxError> {
        let (sandbox, pod_net) = Self::start(plan, template, plan.vmm.jail, None)?;
        let agent = sandbox.wait_for_agent(plan.agent_timeout)?;
        Ok((sandbox, pod_net, agent))
    }

    /// Boots the plan's VM cold to agent-ready and saves it as the template for its key
    /// under the plan's template directory (see [`crate::template`]); returns the
    /// template's directory. A plan on a pod network (`netns`) gets a template with one
    /// NIC ([`crate::network::template`]), as [`Sandbox::build_template_nic`] with `true`. A complete template already there is kept. The agent also
    /// prepares the plan's first container's init ahead (`Request::PrepareInit`): the first
    /// matching container of each clone takes it over. A spec whose init cannot be
    /// prepared only loses that.
    pub fn build_template(plan: &PodPlan) -> Result<PathBuf, SandboxError> {
        Self::build_template_nic(plan, plan.netns.is_some())
    }

    /// [`Sandbox::build_template`] with the template's NIC (`nic`) or without, whatever
    /// the plan's network.
    pub fn build_template_nic(plan: &PodPlan, nic: bool) -> Result<PathBuf, SandboxError> {
        let vm = match nic {
            true => net_template::with_nic(&plan.vm),
            false => plan.vm.clone(),
        };
        let key = template::key(&vm)?;
        let dest = plan.templates.join(&key);
        if dest.join(vmm_api::snapshot::STATE_FILE).is_file() {
            return Ok(dest);
        }
        // Templates are made without the pod's network (a NIC boots in a netns of the
        // build's own, gone with it), and unjailed: the VMM writes the snapshot into the
        // template cache.
        let build_ns = nic.then(net_template::BuildNetns::new).transpose()?;
        let plan = &PodPlan {
            netns: None,
            cgroup: None,
            vm,
            ..plan.clone()
        };
        let netns = build_ns.as_ref().map(|b| b.netns());
        let (sandbox, _) = Self::start(plan, None, false, netns)?;
        let mut agent = sandbox.wait_for_agent(plan.agent_timeout)?;
        prepare_template_agent(&mut agent, plan)?;
        drop(agent);
        let tmp = plan
            .templates
            .join(format!("{key}.tmp-{}", std::process::id()));
        let saved = save_snapshot(&sandbox.paths.api_sock, &tmp);
        sandbox.stop()?;
        let save_err = |msg: String| SandboxError::TemplateSave {
            path: dest.clone(),
            msg,
        };
        saved.map_err(save_err)?;
        match std::fs::rename(&tmp, &dest) {
            Ok(()) => Ok(dest),
            // Another builder finished first: theirs is as good.
            Err(_) if dest.join(vmm_api::snapshot::STATE_FILE).is_file() => {
                let _ = std::fs::remove_dir_all(&tmp);
                Ok(dest)
            }
            Err(e) => Err(save_err(e.to_string())),
        }
    }

    /// Prepares the shares and starts their virtiofsd and the VMM (booting, or restoring
    /// `template`; `jail`ed unless restoring), in the pod's netns or else `own_netns`.
    fn start(
        plan: &PodPlan,
        template: Option<&Path>,
        jail: bool,
        own_netns: Option<&Netns>,
    ) -> Result<(Sandbox, Option<PodNetwork>), SandboxError> {
        let paths = SandboxPaths::in_dir(&plan.dir);
        let jail = jail && template.is_none();
        // The jailed VMM connects to guest → host listeners beside its vsock socket.
        crate::jail::create_vsock_dir(&paths.vsock, jail)?;
        // First made, last undone (locals drop in reverse).
        let cgroup = pod_cgroup(plan, &paths)?;
        let shares = serve_shares(&plan.virtiofsd, &paths, cgroup.as_ref())?;
        let mut vm = plan.vm.clone();
        let (network, pod_net) = match &plan.netns {
            Some(ns) => {
                let guard = NetworkGuard(Some(paths.network_state.clone()));
                let pod = PodNetwork::attach(ns, guard.file())?;
                vm.net.extend(pod.vm_nets());
                (Some(guard), Some(pod))
            }
            None => (None, None),
        };
        let json = serde_json::to_vec_pretty(&vm).expect("VmConfig serializes");
        std::fs::write(&paths.vm_config, json).map_err(|err| SandboxError::Config {
            path: paths.vm_config.clone(),
            err,
        })?;
        let run = &plan.vmm;
        let netns = pod_net.as_ref().map(|p| &p.netns).or(own_netns);
        let vmm = match template {
            Some(dir) => {
                // The pod's interfaces may have changed since the template was chosen.
                if pod_net.is_some() && vm.net.len() != 1 {
                    return Err(NetworkError::TemplateNics(vm.net.len()).into());
                }
                let clone = clone_sockets(&vm, &paths);
                VmmProcess::restore(run, dir, &clone, &paths, netns, cgroup.as_ref())?
            }
            None => VmmProcess::start(run, &paths, netns, jail, cgroup.as_ref())?,
        };
        let parts = Parts {
            vmm,
            network,
            shares,
            cgroup,
        };
        let sandbox = Sandbox {
            handle: SandboxHandle::open(&paths.dir),
            paths,
            parts: Mutex::new(Some(parts)),
            containers: Mutex::new(BTreeSet::new()),
            limits: Mutex::default(),
            control: Mutex::new(None),
        };
        Ok((sandbox, pod_net))
    }

    /// Polls until the agent accepts a control connection (the VMM resets connections
    /// while nothing listens in the guest); fails at once if the VMM or virtiofsd dies.
    fn wait_for_agent(&self, timeout: Duration) -> Result<Client, SandboxError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(why) = self.vm_stopped() {
                return Err(SandboxError::VmStopped(why));
            }
            if let Ok(c) = self.handle.agent() {
                return Ok(c);
            }
            if Instant::now() > deadline {
                return Err(SandboxError::AgentTimeout(
                    timeout,
                    self.paths.console_log.clone(),
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn parts(&self) -> MutexGuard<'_, Option<Parts>> {
        self.parts.lock().expect("poisoned")
    }

    /// Why the VM is no longer usable, if it is not: the VMM process or virtiofsd exited,
    /// or the sandbox was stopped.
    pub fn vm_stopped(&self) -> Option<String> {
        let mut parts = self.parts();
        let Some(p) = parts.as_mut() else {
            return Some("the sandbox was stopped".into());
        };
        if let Some(status) = p.vmm.exited() {
            return Some(describe_exit(status, p.vmm.log(), &self.paths.console_log));
        }
        p.shares.iter_mut().find_map(|s| {
            let (status, last) = s.virtiofsd.died()?;
            Some(format!("virtiofsd exited ({status}): {last}"))
        })
    }

    /// The state directory's files.
    pub fn paths(&self) -> &SandboxPaths {
        &self.paths
    }

    /// The pod's cgroup in each hierarchy, when the plan named one ([`crate::cgroup`]).
    pub fn cgroup_dirs(&self) -> Vec<PathBuf> {
        let parts = self.parts();
        let cg = parts.as_ref().and_then(|p| p.cgroup.as_ref());
        cg.map(|c| c.pod_dirs().map(Path::to_path_buf).collect())
            .unwrap_or_default()
    }

    /// The pids of the host processes this sandbox runs: the VMM, then each share's
    /// virtiofsd (`None` once stopped).
    pub fn host_pids(&self) -> Option<Vec<u32>> {
        self.parts().as_ref().map(|p| {
            let fsds = p.shares.iter().map(|s| s.virtiofsd.pid());
            std::iter::once(p.vmm.pid()).chain(fsds).collect()
        })
    }

    /// Adds a container: its rootfs and bind sources go into the shares, then the agent
    /// creates it (its process waits for [`SandboxOps::start`]) with its streams on `io`.
    /// Returns the guest pid and the copy threads of its output.
    pub fn add_container(
        &self,
        mut plan: ContainerPlan,
        io: HostIo,
    ) -> Result<(i32, Pumps), SandboxError> {
        let id = plan.request.container_id.clone();
        if !self.containers.lock().expect("poisoned").insert(id.clone()) {
            return Err(SandboxError::Exists(id));
        }
        let result = self.add_container_inner(&mut plan, io);
        if result.is_err() {
            let _ = self.forget_container(&id);
        } else if let Some(r) = spec_limits(&plan) {
            self.limits.lock().expect("poisoned").insert(id, r);
        }
        result
    }

    fn add_container_inner(
        &self,
        plan: &mut ContainerPlan,
        io: HostIo,
    ) -> Result<(i32, Pumps), SandboxError> {
        {
            let parts = self.parts();
            let parts = parts.as_ref().ok_or(SandboxError::Stopped)?;
            for b in &plan.binds {
                parts.share(b.share).ok_or(SandboxError::Stopped)?.bind(b)?;
            }
        }
        plan.request.stdio = io.config();
        let id = plan.request.container_id.clone();
        let request = plan.request.clone();
        let pid = self
            .with_agent(|a| a.create_container(request))
            .map_err(|e| match e {
                HandleError::Agent(err) => agent_err("cannot create the container")(err),
                e => e.into(),
            })?;
        let pumps = match stdio::attach(self.handle.endpoint(), &id, None, io) {
            Ok(p) => p,
            Err(e) => {
                let _ = self.with_agent(|a| a.remove_container(&id, true));
                return Err(HandleError::from(e).into());
            }
        };
        Ok((pid, pumps))
    }

    /// Removes a container from the guest (killing it with `force`) and its binds from the
    /// shares.
    pub fn remove_container(&self, container_id: &str, force: bool) -> Result<(), SandboxError> {
        self.with_agent(|a| a.remove_container(container_id, force))?;
        self.forget_container(container_id)
    }

    fn forget_container(&self, id: &str) -> Result<(), SandboxError> {
        self.containers.lock().expect("poisoned").remove(id);
        self.limits.lock().expect("poisoned").remove(id);
        if let Some(parts) = self.parts().as_ref() {
            for share in parts.shares.iter().filter_map(|s| s.share.as_ref()) {
                share.remove(&share_dir(id))?;
            }
        }
        Ok(())
    }

    /// Ends the VM (no guest shutdown: containers' state lives on the host), virtiofsd and
    /// the shares' mounts; returns the VMM's exit status. Stopping a stopped sandbox does
    /// nothing.
    pub fn stop(&self) -> Result<Option<ExitStatus>, SandboxError> {
        let Some(mut parts) = self.parts().take() else {
            return Ok(None);
        };
        self.control.lock().expect("poisoned").take();
        let status = parts.vmm.stop(STOP_GRACE);
        if let Some(net) = parts.network.take() {
            net.detach()?;
        }
        for served in &mut parts.shares {
            served.virtiofsd.stop();
            if let Some(share) = served.share.take() {
                share.teardown()?;
            }
        }
        if let Some(cg) = parts.cgroup.take() {
            for d in cg.remove() {
                log::warn!("cgroup {} is left: it still has processes", d.display());
            }
        }
        Ok(status)
    }

    /// Waits up to `timeout` for the VMM to exit by itself (the guest powered off).
    pub fn wait_vmm(&self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.parts().as_mut().map(|p| p.vmm.exited()) {
                None => return None,
                Some(Some(status)) => return Some(status),
                Some(None) if Instant::now() >= deadline => return None,
                Some(None) => {}
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl SandboxOps for Sandbox {
    fn endpoint(&self) -> &Endpoint {
        self.handle.endpoint()
    }

    fn pod_limits(&self, container_id: &str, update: &LinuxResources) -> Vec<LinuxResources> {
        let mut all = self.limits.lock().expect("poisoned").clone();
        let now = all.remove(container_id).unwrap_or_default();
        all.into_values()
            .chain([crate::resize::merge(&now, update)])
            .collect()
    }

    fn record_limits(&self, container_id: &str, update: &LinuxResources) {
        let mut all = self.limits.lock().expect("poisoned");
        let now = all.get(container_id).cloned().unwrap_or_default();
        all.insert(container_id.into(), crate::resize::merge(&now, update));
    }

    fn api_sock(&self) -> &Path {
        self.handle.api_sock()
    }

    /// On the kept connection when no other call is using it, else on a new one (kept for
    /// later calls if the slot is free by then). A failed call's connection is dropped:
    /// after a timeout or a broken stream it may be mid-frame.
    fn with_agent<T>(
        &self,
        call: impl FnOnce(&mut Client) -> Result<T, ClientError>,
    ) -> Result<T, HandleError> {
        let kept = self.control.lock().expect("poisoned").take();
        let mut client = match kept {
            Some(c) => c,
            None => self.handle.agent()?,
        };
        let result = call(&mut client)?;
        let mut slot = self.control.lock().expect("poisoned");
        if slot.is_none() && self.parts().is_some() {
            *slot = Some(client);
        }
        Ok(result)
    }
}

/// A container's cgroup limits from its spec.
fn spec_limits(plan: &ContainerPlan) -> Option<LinuxResources> {
    plan.request.spec.linux().as_ref()?.resources().clone()
}

/// The template's agent, before its snapshot: the prepared container init first (it keeps
/// one worker thread, see `Request::PrepareInit`), then idle workers with their stacks in
/// memory for every clone (`Request::WarmUp`).
fn prepare_template_agent(agent: &mut Client, plan: &PodPlan) -> Result<(), SandboxError> {
    match agent.prepare_init((*plan.first.request.spec).clone()) {
        Err(e)
            if e.agent_error()
                .is_some_and(|e| e.code == ErrorCode::NotSupported) =>
        {
            log::warn!("template without a prepared container init: {e}")
        }
        r => r.map_err(agent_err("cannot prepare the template's container init"))?,
    }
    agent
        .warm_up(TEMPLATE_WORKERS)
        .map_err(agent_err("cannot warm up the template's agent"))
}

/// Prepares each share and starts its virtiofsd (all started at once, then waited for).
fn serve_shares(
    exe: &Path,
    paths: &SandboxPaths,
    cgroup: Option<&HostCgroup>,
) -> Result<Vec<ServedShare>, SandboxError> {
    let mut served = Vec::new();
    for kind in ShareKind::ALL {
        let files = paths.share_files(kind);
        let share = Share::prepare(files.dir)?;
        let virtiofsd = Virtiofsd::spawn(
            exe,
            files.socket,
            share.root(),
            kind.cache(),
            files.log,
            cgroup,
        )?;
        served.push(ServedShare {
            virtiofsd,
            share: Some(share),
        });
    }
    for s in &mut served {
        s.virtiofsd.wait_ready()?;
    }
    Ok(served)
}

/// This sandbox's own sockets and console, from its VM config.
fn clone_sockets(vm: &VmConfig, paths: &SandboxPaths) -> CloneSockets {
    CloneSockets {
        vsock: vm
            .vsock
            .as_ref()
            .map_or_else(|| paths.vsock.clone(), |v| v.uds_path.clone()),
        console_log: match &vm.serial {
            SerialOutput::File(p) => p.clone(),
            _ => paths.console_log.clone(),
        },
        fs_sockets: vm.fs.iter().map(|f| f.socket.clone()).collect(),
        macs: vm.net.iter().filter_map(|n| n.mac.clone()).collect(),
    }
}

/// The template `plan`'s sandbox may restore, if one matches: for a pod on a network, one
/// with the template NIC when its netns has one interface (else it boots cold, and says
/// why).
fn find_template(plan: &PodPlan) -> Option<PathBuf> {
    let vm = match &plan.netns {
        None => plan.vm.clone(),
        Some(ns) => match net_template::vm_for_pod(&plan.vm, ns) {
            Ok(vm) => vm,
            Err(why) => {
                log::info!("sandbox {}: no template: {why}; booting cold", plan.id);
                return None;
            }
        },
    };
    template::find(&plan.templates, &vm).unwrap_or_else(|e| {
        log::debug!("sandbox {}: no template: {e}", plan.id);
        None
    })
}

/// Fresh host entropy, the host's wall clock and `hostname`, for a restored clone.
fn fresh_identity(hostname: &str) -> Result<CloneIdentity, SandboxError> {
    let mut entropy = vec![0u8; CLONE_ENTROPY_BYTES];
    let mut filled = 0;
    while filled < entropy.len() {
        // SAFETY: getrandom writes at most `len - filled` bytes into the buffer's tail.
        let n = unsafe {
            libc::getrandom(
                entropy[filled..].as_mut_ptr().cast(),
                entropy.len() - filled,
                0,
            )
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(SandboxError::Entropy(e));
            }
            continue;
        }
        filled += n as usize;
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    Ok(CloneIdentity {
        entropy,
        realtime_ns: u64::try_from(now.as_nanos()).unwrap_or(u64::MAX),
        hostname: hostname.to_string(),
    })
}

/// Pauses the VM behind `api_sock` and snapshots it into `dir`.
fn save_snapshot(api_sock: &Path, dir: &Path) -> Result<(), String> {
    let mut c = vmm_api::client::ApiClient::connect(api_sock, Duration::from_secs(5))
        .map_err(|e| e.to_string())?;
    c.set_timeout(Some(Duration::from_secs(120)))
        .map_err(|e| e.to_string())?;
    c.pause().map_err(|e| e.to_string())?;
    c.snapshot(dir).map_err(|e| e.to_string())?;
    Ok(())
}

/// The pod's cgroup of `plan`, made for the sandbox at `paths`; the owner joins it in the
/// shim's role ([`Role::Pod`]: the shim serves this pod alone).
fn pod_cgroup(plan: &PodPlan, paths: &SandboxPaths) -> Result<Option<HostCgroup>, SandboxError> {
    let Some(path) = &plan.cgroup else {
        return Ok(None);
    };
    let layout = Layout::detect(Path::new(crate::cgroup::CGROUP_ROOT))?;
    let mut cg = HostCgroup::create(&layout, path, &paths.cgroup_state)?;
    if plan.role == Role::Pod {
        cg.join_self()?;
    }
    Ok(Some(cg))
}

/// Cleans up after a sandbox whose owner died (SIGKILL, a crash): removes the pod
/// network's taps and filters and detaches every mount left under its state directory. The helper processes are the owner's process group's and
/// are killed with it.
pub fn clean_up_after_owner(dir: &Path) -> Result<usize, SandboxError> {
    crate::network::detach(&SandboxPaths::in_dir(dir).network_state)?;
    crate::jail::remove_cgroup(&dir.join(crate::jail::DIR_NAME));
    crate::cgroup::remove_recorded(&SandboxPaths::in_dir(dir).cgroup_state);
    Ok(crate::share::unmount_under(dir, false)?)
}

/// Removes the pod network's taps and filters when dropped (after the VMM: field order).
#[derive(Debug)]
struct NetworkGuard(Option<PathBuf>);

impl NetworkGuard {
    fn file(&self) -> &Path {
        self.0.as_deref().expect("set until detached")
    }

    fn detach(mut self) -> Result<(), NetworkError> {
        match self.0.take() {
            Some(file) => crate::network::detach(&file),
            None => Ok(()),
        }
    }
}

impl Drop for NetworkGuard {
    fn drop(&mut self) {
        if let Some(file) = self.0.take() {
            if let Err(e) = crate::network::detach(&file) {
                log::warn!("{e}");
            }
        }
    }
}
