//! [`Sandbox`]: the owner of one live VM: its share, virtiofsd, the VMM process and the
//! containers added to it. Dropping it (or [`Sandbox::stop`]) ends all of them and leaves
//! no process or mount behind.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use agent_protocol::clone::{CloneIdentity, CLONE_ENTROPY_BYTES};
use agent_protocol::oci_spec::runtime::Spec;
use agent_protocol::{Client, ClientError, CreateSandbox, ErrorCode, ExitInfo, ShareMount};
use vmm_api::config::{SerialOutput, VmConfig};

use crate::handle::{HandleError, SandboxHandle};
use crate::network::{NetworkError, PodNetwork};
use crate::oci::translate::{share_dir, ContainerPlan};
use crate::paths::SandboxPaths;
use crate::process::ProcessError;
use crate::share::{Share, ShareError, GUEST_SHARE_DIR, SHARE_TAG};
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
}

fn agent_err(what: &'static str) -> impl FnOnce(ClientError) -> SandboxError {
    move |err| SandboxError::Agent { what, err }
}

/// What a sandbox is made from.
#[derive(Clone, Debug)]
pub struct SandboxConfig {
    /// Sandbox id (for logs and the guest's hostname default).
    pub id: String,
    /// Its state directory (created if needed; see [`SandboxPaths`]).
    pub dir: PathBuf,
    /// The VM, from [`crate::oci::translate::vm_config`].
    pub vm: VmConfig,
    /// The VMM binary (`sandbox-vm-vmm`, [`crate::vmm_process::find_vmm`]).
    pub vmm_exe: PathBuf,
    /// The virtiofsd binary ([`crate::virtiofsd::find`]).
    pub virtiofsd: PathBuf,
    /// The guest's hostname.
    pub hostname: Option<String>,
    /// The pod's network namespace ([`crate::oci::translate::pod_netns`]): the VM gets a
    /// NIC for each of its interfaces. `None`: the guest has loopback only.
    pub netns: Option<PathBuf>,
    /// How long the guest may take to boot to its agent.
    pub agent_timeout: Duration,
    /// Whether to restore a matching template instead of booting (see [`crate::template`]).
    pub template: TemplateUse,
}

/// One live sandbox. Field order is teardown order: the VMM goes before the pod network's
/// taps, then virtiofsd, then the share's mounts.
#[derive(Debug)]
pub struct Sandbox {
    vmm: VmmProcess,
    network: Option<NetworkGuard>,
    virtiofsd: Virtiofsd,
    share: Option<Share>,
    handle: SandboxHandle,
    paths: SandboxPaths,
    containers: Mutex<BTreeSet<String>>,
    /// The control connection `create` opened, kept for this sandbox's own calls: each
    /// new connection costs the guest an accept, a thread and a handshake (0.4–0.9 s of
    /// emulated kernel work on hosts without hardware virtualization). `None` after a
    /// call on it failed; the next call connects anew.
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
    /// With a matching template (and `cfg.template` not `Off`) the VMM restores it instead
    /// of booting, and the agent is first handed the clone's own entropy, clock and
    /// hostname.
    pub fn create(cfg: &SandboxConfig) -> Result<Sandbox, SandboxError> {
        let template = match cfg.template {
            // A template's VM has no NICs: a pod with a network boots cold.
            TemplateUse::Off => None,
            TemplateUse::Auto if cfg.netns.is_some() => None,
            TemplateUse::Auto => template::find(&template::templates_root(), &cfg.vm)
                .unwrap_or_else(|e| {
                    log::debug!("sandbox {}: no template: {e}", cfg.id);
                    None
                }),
        };
        let t0 = Instant::now();
        let (template, (sandbox, pod_net, mut agent)) = match template {
            None => (None, Self::start_to_agent(cfg, None)?),
            Some(t) => match Self::start_to_agent(cfg, Some(&t)) {
                Ok(up) => (Some(t), up),
                // Everything the failed restore started is gone (dropped): boot cold.
                Err(e) => {
                    log::warn!(
                        "sandbox {}: the template {} did not restore ({e}); booting cold",
                        cfg.id,
                        t.display()
                    );
                    (None, Self::start_to_agent(cfg, None)?)
                }
            },
        };
        log::info!(
            "sandbox {}: agent answered after {:.1?} ({})",
            cfg.id,
            t0.elapsed(),
            if template.is_some() {
                "restored from a template"
            } else {
                "cold boot"
            }
        );
        if template.is_some() {
            let hostname = cfg.hostname.clone().unwrap_or_else(|| cfg.id.clone());
            agent
                .clone_identity(fresh_identity(&hostname)?)
                .map_err(agent_err("cannot make the restored clone unique"))?;
        }
        agent
            .create_sandbox(CreateSandbox {
                sandbox_id: cfg.id.clone(),
                hostname: cfg.hostname.clone(),
                shares: vec![ShareMount {
                    tag: SHARE_TAG.into(),
                    mount_point: GUEST_SHARE_DIR.into(),
                }],
            })
            .map_err(agent_err("cannot set up the sandbox in the guest"))?;
        if let Some(pod) = pod_net {
            agent
                .configure_network(pod.guest)
                .map_err(agent_err("cannot configure the pod network in the guest"))?;
        }
        *sandbox.control.lock().expect("poisoned") = Some(agent);
        Ok(sandbox)
    }

    /// Runs `call` on the kept control connection (connecting if there is none). A failed
    /// call drops the connection: after a timeout or a broken stream it may be mid-frame.
    fn with_agent<T>(
        &self,
        what: &'static str,
        call: impl FnOnce(&mut Client) -> Result<T, ClientError>,
    ) -> Result<T, SandboxError> {
        let mut kept = self.control.lock().expect("poisoned");
        let client = match kept.as_mut() {
            Some(c) => c,
            None => kept.insert(self.handle.agent()?),
        };
        call(client).map_err(|err| {
            *kept = None;
            SandboxError::Agent { what, err }
        })
    }

    /// Runs a created container's process, on the kept connection.
    pub fn start_container(&self, container_id: &str) -> Result<(), SandboxError> {
        self.with_agent("cannot start the container", |a| {
            a.start_container(container_id)
        })
    }

    /// Blocks until the process exits and its output has been delivered, on the kept
    /// connection, which it holds meanwhile: for a caller that has nothing else to ask
    /// this sandbox (other callers use [`SandboxHandle::wait`], which connects anew).
    pub fn wait_on_control(
        &self,
        container_id: &str,
        exec_id: Option<&str>,
    ) -> Result<ExitInfo, SandboxError> {
        self.with_agent("waiting for the exit", |a| a.wait(container_id, exec_id))
    }

    /// Starts the sandbox (restoring `template`, or booting) up to the agent's first answer.
    fn start_to_agent(
        cfg: &SandboxConfig,
        template: Option<&Path>,
    ) -> Result<(Sandbox, Option<PodNetwork>, Client), SandboxError> {
        let (mut sandbox, pod_net) = Self::start(cfg, template, false)?;
        let agent = sandbox.wait_for_agent(cfg.agent_timeout)?;
        Ok((sandbox, pod_net, agent))
    }

    /// Boots `cfg`'s VM cold to agent-ready and saves it as the template for its key under
    /// `root` (see [`crate::template`]); returns the template's directory. A complete
    /// template already there is kept. With `init`, the guest spec of the container the
    /// template is built for, the agent also prepares that container's init ahead
    /// (`Request::PrepareInit`): the first matching container of each clone takes it over.
    /// A spec whose init cannot be prepared only loses that.
    pub fn build_template(
        cfg: &SandboxConfig,
        root: &Path,
        init: Option<&Spec>,
    ) -> Result<PathBuf, SandboxError> {
        let key = template::key(&cfg.vm)?;
        let dest = root.join(&key);
        if dest.join(vmm_api::snapshot::STATE_FILE).is_file() {
            return Ok(dest);
        }
        // Templates are made without a pod network (`cfg.netns` is ignored here), and
        // unjailed: the VMM writes the snapshot into the template cache.
        let cfg = &SandboxConfig {
            netns: None,
            ..cfg.clone()
        };
        let (mut sandbox, _) = Self::start(cfg, None, true)?;
        let mut agent = sandbox.wait_for_agent(cfg.agent_timeout)?;
        // First: the prepared init keeps one worker thread (see Request::PrepareInit).
        if let Some(spec) = init {
            match agent.prepare_init(spec.clone()) {
                Err(e)
                    if e.agent_error()
                        .is_some_and(|e| e.code == ErrorCode::NotSupported) =>
                {
                    log::warn!("template without a prepared container init: {e}")
                }
                r => r.map_err(agent_err("cannot prepare the template's container init"))?,
            }
        }
        // Idle workers with their stacks in memory, for every clone (see Request::WarmUp).
        agent
            .warm_up(TEMPLATE_WORKERS)
            .map_err(agent_err("cannot warm up the template's agent"))?;
        drop(agent);
        let tmp = root.join(format!("{key}.tmp-{}", std::process::id()));
        let saved = save_snapshot(sandbox.vmm.api_sock(), &tmp);
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

    /// Prepares the share and starts virtiofsd and the VMM (booting, or restoring
    /// `template`).
    fn start(
        cfg: &SandboxConfig,
        template: Option<&Path>,
        template_build: bool,
    ) -> Result<(Sandbox, Option<PodNetwork>), SandboxError> {
        let paths = SandboxPaths::in_dir(&cfg.dir);
        // The jailed VMM connects to guest → host listeners beside its vsock socket.
        let jailed = template.is_none()
            && crate::vmm_process::jail_dir(&paths.vm_config, !template_build).is_some();
        crate::jail::create_vsock_dir(&paths.vsock, jailed)?;
        let share = Share::prepare(&paths.share)?;
        let virtiofsd = Virtiofsd::start(
            &cfg.virtiofsd,
            &paths.fs_socket,
            share.root(),
            &paths.fs_log,
        )?;
        let mut vm = cfg.vm.clone();
        let (network, pod_net) = match &cfg.netns {
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
        let vmm = match template {
            Some(dir) => VmmProcess::restore(
                &cfg.vmm_exe,
                dir,
                &clone_sockets(&cfg.vm, &paths),
                &paths.api_sock,
                &paths.vmm_log,
            )?,
            None => VmmProcess::start(
                &cfg.vmm_exe,
                &paths.vm_config,
                &paths.api_sock,
                &paths.vmm_log,
                pod_net.as_ref().map(|p| &p.netns),
                !template_build,
            )?,
        };
        let sandbox = Sandbox {
            vmm,
            network,
            virtiofsd,
            share: Some(share),
            handle: SandboxHandle::open(&paths.dir),
            paths,
            containers: Mutex::new(BTreeSet::new()),
            control: Mutex::new(None),
        };
        Ok((sandbox, pod_net))
    }

    /// Polls until the agent accepts a control connection (the VMM resets connections
    /// while nothing listens in the guest); fails at once if the VMM or virtiofsd dies.
    fn wait_for_agent(&mut self, timeout: Duration) -> Result<Client, SandboxError> {
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

    /// Why the VM is no longer usable, if it is not: the VMM process or virtiofsd exited.
    pub fn vm_stopped(&mut self) -> Option<String> {
        if let Some(status) = self.vmm.exited() {
            return Some(describe_exit(
                status,
                self.vmm.log(),
                &self.paths.console_log,
            ));
        }
        self.virtiofsd
            .died()
            .map(|(status, last)| format!("virtiofsd exited ({status}): {last}"))
    }

    /// Talks to the agent and the VMM.
    pub fn handle(&self) -> &SandboxHandle {
        &self.handle
    }

    /// The state directory's files.
    pub fn paths(&self) -> &SandboxPaths {
        &self.paths
    }

    /// The pids of the host processes this sandbox runs: the VMM and virtiofsd.
    pub fn host_pids(&self) -> [u32; 2] {
        [self.vmm.pid(), self.virtiofsd.pid()]
    }

    /// Adds a container: its rootfs and bind sources go into the share, then the agent
    /// creates it (its process waits for [`SandboxHandle::start`]) with its streams on
    /// `io`. Returns the guest pid and the copy threads of its output.
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
        }
        result
    }

    fn add_container_inner(
        &self,
        plan: &mut ContainerPlan,
        io: HostIo,
    ) -> Result<(i32, Pumps), SandboxError> {
        let share = self
            .share
            .as_ref()
            .expect("share lives as long as the sandbox");
        for b in &plan.binds {
            share.bind(b)?;
        }
        plan.request.stdio = io.config();
        let id = plan.request.container_id.clone();
        let pid = self.with_agent("cannot create the container", |a| {
            a.create_container(plan.request.clone())
        })?;
        let pumps = match stdio::attach(self.handle.endpoint(), &id, None, io) {
            Ok(p) => p,
            Err(e) => {
                let _ = self.with_agent("", |a| a.remove_container(&id, true));
                return Err(HandleError::from(e).into());
            }
        };
        Ok((pid, pumps))
    }

    /// Removes a container from the guest (killing it with `force`) and its binds from the
    /// share.
    pub fn remove_container(&self, container_id: &str, force: bool) -> Result<(), SandboxError> {
        self.with_agent("cannot remove the container", |a| {
            a.remove_container(container_id, force)
        })?;
        self.forget_container(container_id)
    }

    fn forget_container(&self, id: &str) -> Result<(), SandboxError> {
        self.containers.lock().expect("poisoned").remove(id);
        if let Some(share) = &self.share {
            share.remove(&share_dir(id))?;
        }
        Ok(())
    }

    /// Ends the VM (no guest shutdown: containers' state lives on the host), virtiofsd and
    /// the share's mounts; returns the VMM's exit status.
    pub fn stop(mut self) -> Result<Option<ExitStatus>, SandboxError> {
        let status = self.vmm.stop(STOP_GRACE);
        if let Some(net) = self.network.take() {
            net.detach()?;
        }
        self.virtiofsd.stop();
        if let Some(share) = self.share.take() {
            share.teardown()?;
        }
        Ok(status)
    }

    /// Waits up to `timeout` for the VMM to exit by itself (the guest powered off).
    pub fn wait_vmm(&mut self, timeout: Duration) -> Option<ExitStatus> {
        self.vmm.wait_timeout(timeout)
    }
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
    }
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

/// Cleans up after a sandbox whose owner died (SIGKILL, a crash): removes the pod
/// network's taps and filters and detaches every mount left under its state directory. The helper processes are the owner's process group's and
/// are killed with it.
pub fn clean_up_after_owner(dir: &Path) -> Result<usize, SandboxError> {
    crate::network::detach(&SandboxPaths::in_dir(dir).network_state)?;
    crate::jail::remove_cgroup(&dir.join(crate::jail::DIR_NAME));
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
