//! Talking to a live sandbox: its guest agent (containers and processes) and its VMM's
//! control socket (pause, resume), through [`SandboxOps`]. The [`crate::Sandbox`] owner
//! implements it, and so does a [`SandboxHandle`], which is only paths, so that any
//! process can open one from the state directory (the OCI CLI's `start`, `kill`, `exec`,
//! `pause` run as processes of their own).

use std::path::{Path, PathBuf};
use std::time::Duration;

use agent_protocol::{Client, ClientError, ContainerStats, Endpoint, ExitInfo, ProcessInfo};
use oci_spec::runtime::{LinuxResources, Process};

use crate::paths::SandboxPaths;
use crate::resize::{self, ResizeError, VmSize};
use crate::stdio::{self, HostIo, Pumps, StdioError};

/// How long a control-socket connection may take (the VMM answers at once; a pause waits
/// for every vCPU to park).
const API_TIMEOUT: Duration = Duration::from_secs(5);

/// Errors talking to a sandbox.
#[derive(Debug, thiserror::Error)]
pub enum HandleError {
    #[error("guest agent: {0}")]
    Agent(#[from] ClientError),
    #[error(transparent)]
    Stdio(#[from] StdioError),
    #[error("VMM control socket {path}: {err}")]
    Api { path: PathBuf, err: String },
    #[error(transparent)]
    Resize(#[from] ResizeError),
}

/// What a front end asks of a live sandbox's guest and VMM, written once for both the
/// sandbox's owner ([`crate::Sandbox`], which keeps an agent connection) and any other
/// process ([`SandboxHandle`], which connects for each call).
pub trait SandboxOps {
    /// The guest agent's endpoint (for the streams of a process).
    fn endpoint(&self) -> &Endpoint;

    /// The VMM's control socket.
    fn api_sock(&self) -> &Path;

    /// Runs `call` on an agent connection.
    fn with_agent<T>(
        &self,
        call: impl FnOnce(&mut Client) -> Result<T, ClientError>,
    ) -> Result<T, HandleError>;

    /// Runs a created container's process.
    fn start(&self, container_id: &str) -> Result<(), HandleError> {
        self.with_agent(|a| a.start_container(container_id))
    }

    /// Runs `process` in a running container with its streams on `io`; returns its guest
    /// pid and the copy threads.
    fn exec(
        &self,
        container_id: &str,
        exec_id: &str,
        process: Process,
        io: HostIo,
    ) -> Result<(i32, Pumps), HandleError> {
        let pid = self.with_agent(|a| a.exec(container_id, exec_id, process, io.config()))?;
        let pumps = stdio::attach(self.endpoint(), container_id, Some(exec_id), io)?;
        Ok((pid, pumps))
    }

    /// Sends `signal` to a process, or with `all` to every process of the container.
    fn signal(
        &self,
        container_id: &str,
        exec_id: Option<&str>,
        signal: i32,
        all: bool,
    ) -> Result<(), HandleError> {
        self.with_agent(|a| a.signal(container_id, exec_id, signal, all))
    }

    /// Blocks until the process exits and its output has been delivered.
    fn wait(&self, container_id: &str, exec_id: Option<&str>) -> Result<ExitInfo, HandleError> {
        self.with_agent(|a| a.wait(container_id, exec_id))
    }

    /// The container's processes (guest pids).
    fn processes(&self, container_id: &str) -> Result<Vec<ProcessInfo>, HandleError> {
        self.with_agent(|a| a.list_processes(container_id))
    }

    /// The container's cgroup statistics.
    fn stats(&self, container_id: &str) -> Result<ContainerStats, HandleError> {
        self.with_agent(|a| a.stats(container_id))
    }

    /// Sets the size of a process's terminal.
    fn resize_tty(
        &self,
        container_id: &str,
        exec_id: Option<&str>,
        rows: u16,
        cols: u16,
    ) -> Result<(), HandleError> {
        self.with_agent(|a| a.resize_tty(container_id, exec_id, rows, cols))
    }

    /// The limits of every container of the pod once `update` is in force on
    /// `container_id`: what the pod's VM must hold.
    fn pod_limits(&self, container_id: &str, update: &LinuxResources) -> Vec<LinuxResources>;

    /// Records that `update` is in force on `container_id` (after [`SandboxOps::update`]).
    fn record_limits(&self, _container_id: &str, _update: &LinuxResources) {}

    /// Sets new cgroup limits on a container in the guest (fields left out, or 0, keep
    /// their value, as with runc). The pod's VM must hold its containers' limits with
    /// this change ([`resize::pod_needs`]); if it cannot ([`SandboxOps::make_room`]),
    /// nothing changes. The agent applies them all or nothing.
    fn update(&self, container_id: &str, resources: &LinuxResources) -> Result<(), HandleError> {
        // The host's CPUs cap a VM's vCPUs at create; the same cap here.
        let host_cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let need = resize::pod_needs(
            &self.pod_limits(container_id, resources),
            u32::try_from(host_cpus).unwrap_or(u32::MAX),
        )
        .map_err(ResizeError::from)?;
        self.make_room(need)?;
        self.with_agent(|a| a.update_container(container_id, resources.clone()))?;
        self.record_limits(container_id, resources);
        Ok(())
    }

    /// Makes sure the VM has at least `need` before an update's limits are set: the one
    /// place where a running VM will grow (online vCPUs, plug memory). Until the VMM can,
    /// a VM smaller than `need` refuses the update.
    fn make_room(&self, need: VmSize) -> Result<(), HandleError> {
        let vm = api(self.api_sock(), |c| c.describe())?;
        let have = VmSize {
            vcpus: u32::from(vm.vcpus),
            mem_mib: vm.mem_mib,
        };
        Ok(resize::fits(have, need)?)
    }

    /// Stops the VM's vCPUs (the guest's clock stops with them).
    fn pause(&self) -> Result<(), HandleError> {
        api(self.api_sock(), |c| c.pause()).map(drop)
    }

    /// Lets a paused VM run again.
    fn resume(&self) -> Result<(), HandleError> {
        api(self.api_sock(), |c| c.resume()).map(drop)
    }
}

/// One call on the VMM's control socket.
fn api<T, E: std::fmt::Display>(
    api_sock: &Path,
    call: impl FnOnce(&mut vmm_api::client::ApiClient) -> Result<T, E>,
) -> Result<T, HandleError> {
    let err = |e: &dyn std::fmt::Display| HandleError::Api {
        path: api_sock.to_path_buf(),
        err: e.to_string(),
    };
    let mut client =
        vmm_api::client::ApiClient::connect(api_sock, API_TIMEOUT).map_err(|e| err(&e))?;
    call(&mut client).map_err(|e| err(&e))
}

/// The addresses of one sandbox, for a process that does not own it.
#[derive(Clone, Debug)]
pub struct SandboxHandle {
    endpoint: Endpoint,
    api_sock: PathBuf,
}

impl SandboxHandle {
    /// The sandbox whose state directory is `dir`.
    pub fn open(dir: &Path) -> SandboxHandle {
        let paths = SandboxPaths::in_dir(dir);
        SandboxHandle {
            endpoint: paths.agent_endpoint(),
            api_sock: paths.api_sock,
        }
    }

    /// A new control connection to the agent.
    pub fn agent(&self) -> Result<Client, HandleError> {
        Ok(Client::connect(&self.endpoint)?)
    }
}

impl SandboxOps for SandboxHandle {
    fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    fn api_sock(&self) -> &Path {
        &self.api_sock
    }

    /// A handle knows no other container and no limits in force: `update` is taken as the
    /// container's complete limits (the OCI CLI's sandboxes hold one container, and it
    /// passes its recorded limits merged with the update: [`resize::merge`]).
    fn pod_limits(&self, _container_id: &str, update: &LinuxResources) -> Vec<LinuxResources> {
        vec![update.clone()]
    }

    /// Each call gets a connection of its own, so a `wait` never holds up another call.
    fn with_agent<T>(
        &self,
        call: impl FnOnce(&mut Client) -> Result<T, ClientError>,
    ) -> Result<T, HandleError> {
        Ok(call(&mut self.agent()?)?)
    }
}
