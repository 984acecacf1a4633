//! [`Sandbox`]: the owner of one live VM: its share, virtiofsd, the VMM process and the
//! containers added to it. Dropping it (or [`Sandbox::stop`]) ends all of them and leaves
//! no process or mount behind.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use agent_protocol::{Client, ClientError, CreateSandbox, ShareMount};
use vmm::config::VmConfig;

use crate::handle::{HandleError, SandboxHandle};
use crate::oci::translate::{share_dir, ContainerPlan};
use crate::paths::SandboxPaths;
use crate::process::ProcessError;
use crate::share::{Share, ShareError, GUEST_SHARE_DIR, SHARE_TAG};
use crate::stdio::{self, HostIo, Pumps};
use crate::virtiofsd::Virtiofsd;
use crate::vmm_process::{describe_exit, VmmProcess};

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
    /// The binary whose `vmm` subcommand runs the VMM (`sandbox-vm`).
    pub vmm_exe: PathBuf,
    /// The virtiofsd binary ([`crate::virtiofsd::find`]).
    pub virtiofsd: PathBuf,
    /// The guest's hostname.
    pub hostname: Option<String>,
    /// How long the guest may take to boot to its agent.
    pub agent_timeout: Duration,
}

/// One live sandbox. Field order is teardown order: the VMM goes before virtiofsd, which
/// goes before the share's mounts.
#[derive(Debug)]
pub struct Sandbox {
    vmm: VmmProcess,
    virtiofsd: Virtiofsd,
    share: Option<Share>,
    handle: SandboxHandle,
    paths: SandboxPaths,
    containers: Mutex<BTreeSet<String>>,
}

/// How long the VMM gets to stop after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(5);

impl Sandbox {
    /// Prepares the share, starts virtiofsd and the VMM process, and waits until the guest
    /// agent answers and has mounted the share. On error everything started is undone.
    pub fn create(cfg: &SandboxConfig) -> Result<Sandbox, SandboxError> {
        let paths = SandboxPaths::in_dir(&cfg.dir);
        let share = Share::prepare(&paths.share)?;
        let virtiofsd = Virtiofsd::start(
            &cfg.virtiofsd,
            &paths.fs_socket,
            share.root(),
            &paths.fs_log,
        )?;
        let json = serde_json::to_vec_pretty(&cfg.vm).expect("VmConfig serializes");
        std::fs::write(&paths.vm_config, json).map_err(|err| SandboxError::Config {
            path: paths.vm_config.clone(),
            err,
        })?;
        let vmm = VmmProcess::start(
            &cfg.vmm_exe,
            &paths.vm_config,
            &paths.api_sock,
            &paths.vmm_log,
        )?;
        let mut sandbox = Sandbox {
            vmm,
            virtiofsd,
            share: Some(share),
            handle: SandboxHandle::open(&paths.dir),
            paths,
            containers: Mutex::new(BTreeSet::new()),
        };
        let t0 = Instant::now();
        let mut agent = sandbox.wait_for_agent(cfg.agent_timeout)?;
        log::info!(
            "sandbox {}: agent answered after {:.1?}",
            cfg.id,
            t0.elapsed()
        );
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
        Ok(sandbox)
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
        let pid = self
            .handle
            .agent()?
            .create_container(plan.request.clone())
            .map_err(agent_err("cannot create the container"))?;
        let pumps = match stdio::attach(self.handle.endpoint(), &id, None, io) {
            Ok(p) => p,
            Err(e) => {
                let _ = self
                    .handle
                    .agent()
                    .map(|mut a| a.remove_container(&id, true));
                return Err(HandleError::from(e).into());
            }
        };
        Ok((pid, pumps))
    }

    /// Removes a container from the guest (killing it with `force`) and its binds from the
    /// share.
    pub fn remove_container(&self, container_id: &str, force: bool) -> Result<(), SandboxError> {
        self.handle
            .agent()?
            .remove_container(container_id, force)
            .map_err(agent_err("cannot remove the container"))?;
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

/// Cleans up after a sandbox whose owner died (SIGKILL, a crash): detaches every mount left
/// under its state directory. The helper processes are the owner's process group's and
/// are killed with it.
pub fn clean_up_after_owner(dir: &Path) -> Result<usize, SandboxError> {
    Ok(crate::share::unmount_under(dir, false)?)
}
