//! Talking to a live sandbox: its guest agent (containers and processes) and its VMM's
//! control socket (pause, resume). A [`SandboxHandle`] is only paths, so any process can
//! open one from the state directory (the OCI CLI's `start`, `kill`, `exec`, `pause` run as
//! processes of their own); the [`crate::Sandbox`] owner has one too.

use std::path::{Path, PathBuf};
use std::time::Duration;

use agent_protocol::{Client, ClientError, ContainerStats, Endpoint, ExitInfo, ProcessInfo};
use oci_spec::runtime::Process;

use crate::paths::SandboxPaths;
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
}

/// The addresses of one sandbox.
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

    /// The guest agent's endpoint.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// A new control connection to the agent (each blocking call gets its own, so a `wait`
    /// never holds up another call).
    pub fn agent(&self) -> Result<Client, HandleError> {
        Ok(Client::connect(&self.endpoint)?)
    }

    /// Runs a created container's process.
    pub fn start(&self, container_id: &str) -> Result<(), HandleError> {
        Ok(self.agent()?.start_container(container_id)?)
    }

    /// Runs `process` in a running container with its streams on `io`; returns its guest
    /// pid and the copy threads.
    pub fn exec(
        &self,
        container_id: &str,
        exec_id: &str,
        process: Process,
        io: HostIo,
    ) -> Result<(i32, Pumps), HandleError> {
        let pid = self
            .agent()?
            .exec(container_id, exec_id, process, io.config())?;
        let pumps = stdio::attach(&self.endpoint, container_id, Some(exec_id), io)?;
        Ok((pid, pumps))
    }

    /// Sends `signal` to a process, or with `all` to every process of the container.
    pub fn signal(
        &self,
        container_id: &str,
        exec_id: Option<&str>,
        signal: i32,
        all: bool,
    ) -> Result<(), HandleError> {
        Ok(self.agent()?.signal(container_id, exec_id, signal, all)?)
    }

    /// Blocks until the process exits and its output has been delivered.
    pub fn wait(&self, container_id: &str, exec_id: Option<&str>) -> Result<ExitInfo, HandleError> {
        Ok(self.agent()?.wait(container_id, exec_id)?)
    }

    /// The container's processes (guest pids).
    pub fn processes(&self, container_id: &str) -> Result<Vec<ProcessInfo>, HandleError> {
        Ok(self.agent()?.list_processes(container_id)?)
    }

    /// The container's cgroup statistics.
    pub fn stats(&self, container_id: &str) -> Result<ContainerStats, HandleError> {
        Ok(self.agent()?.stats(container_id)?)
    }

    /// Stops the VM's vCPUs (the guest's clock stops with them).
    pub fn pause(&self) -> Result<(), HandleError> {
        self.api(|c| c.pause()).map(drop)
    }

    /// Lets a paused VM run again.
    pub fn resume(&self) -> Result<(), HandleError> {
        self.api(|c| c.resume()).map(drop)
    }

    fn api<T, E: std::fmt::Display>(
        &self,
        call: impl FnOnce(&mut vmm_api::client::ApiClient) -> Result<T, E>,
    ) -> Result<T, HandleError> {
        let err = |e: &dyn std::fmt::Display| HandleError::Api {
            path: self.api_sock.clone(),
            err: e.to_string(),
        };
        let mut client = vmm_api::client::ApiClient::connect(&self.api_sock, API_TIMEOUT)
            .map_err(|e| err(&e))?;
        call(&mut client).map_err(|e| err(&e))
    }
}
