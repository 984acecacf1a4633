//! A small blocking client for the host runtime and tests.
//!
//! One [`Client`] is one control connection; requests on it are sent one at a
//! time. [`Client::wait`] blocks until the process exits, so a runtime that
//! waits while doing other work opens a second client for the wait. Standard
//! streams are separate connections opened with [`attach_stdio`].

use std::collections::VecDeque;
use std::time::Duration;

use oci_spec::runtime::{LinuxResources, Process, Spec};

use crate::frame::{read_frame, write_frame, FrameError};
use crate::messages::{
    Channel, ContainerStats, CreateContainer, CreateSandbox, ErrorReply, Event, ExecProcess,
    ExitInfo, Hello, HelloReply, ProcessInfo, Request, RequestFrame, Response, ServerMessage,
    SignalProcess, StdioConfig, StreamId, UpdateContainer, MIN_PROTOCOL_VERSION,
};
use crate::transport::{Endpoint, Stream, TransportError};

/// Why a client call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Could not connect.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The connection failed or carried garbage.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The agent refused the handshake.
    #[error("agent refused the connection: {0}")]
    Rejected(ErrorReply),
    /// The agent answered the request with an error.
    #[error("agent error: {0}")]
    Agent(ErrorReply),
    /// The agent answered something this client did not expect.
    #[error("unexpected answer from agent: {0}")]
    Unexpected(String),
}

impl ClientError {
    /// The agent's error reply, if this is one.
    pub fn agent_error(&self) -> Option<&ErrorReply> {
        match self {
            ClientError::Agent(e) | ClientError::Rejected(e) => Some(e),
            _ => None,
        }
    }
}

/// Performs the handshake on a fresh connection; returns the agreed version.
pub fn handshake(stream: &mut Stream, channel: Channel) -> Result<u32, ClientError> {
    write_frame(stream, &Hello::new(channel))?;
    match read_frame::<_, HelloReply>(stream)? {
        HelloReply::Accepted { version } if version >= MIN_PROTOCOL_VERSION => Ok(version),
        HelloReply::Accepted { version } => Err(ClientError::Unexpected(format!(
            "agent chose protocol version {version}, older than this client supports"
        ))),
        HelloReply::Rejected(e) => Err(ClientError::Rejected(e)),
    }
}

/// Opens one standard stream of a process. For `Stdout`/`Stderr`, read until
/// EOF; for `Stdin`, write and then call [`Stream::shutdown_write`] (or drop)
/// to close the process's stdin.
pub fn attach_stdio(endpoint: &Endpoint, id: StreamId) -> Result<Stream, ClientError> {
    let mut s = endpoint.connect()?;
    handshake(&mut s, Channel::Stdio(id))?;
    Ok(s)
}

/// What a ping tells about the agent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentInfo {
    /// Agent build version.
    pub version: String,
    /// The agent's resident set size in KiB (0 if unknown).
    pub rss_kib: u64,
}

/// A control connection to the agent.
#[derive(Debug)]
pub struct Client {
    stream: Stream,
    version: u32,
    next_id: u64,
    events: VecDeque<Event>,
}

fn unexpected(what: &str, r: Response) -> ClientError {
    ClientError::Unexpected(format!("{what}: {r:?}"))
}

impl Client {
    /// Connects and performs the handshake.
    pub fn connect(endpoint: &Endpoint) -> Result<Client, ClientError> {
        Self::from_stream(endpoint.connect()?)
    }

    /// Performs the handshake on an already connected stream.
    pub fn from_stream(mut stream: Stream) -> Result<Client, ClientError> {
        let version = handshake(&mut stream, Channel::Control)?;
        Ok(Client {
            stream,
            version,
            next_id: 1,
            events: VecDeque::new(),
        })
    }

    /// Agreed protocol version.
    pub fn version(&self) -> u32 {
        self.version
    }

    /// Read timeout for replies. After a timeout the connection may be in the
    /// middle of a frame: drop the client.
    pub fn set_timeout(&self, t: Option<Duration>) -> std::io::Result<()> {
        self.stream.set_read_timeout(t)
    }

    /// Sends one request and waits for its reply; events that arrive meanwhile
    /// are queued for [`Client::next_event`].
    pub fn call(&mut self, request: Request) -> Result<Response, ClientError> {
        let id = self.next_id;
        self.next_id += 1;
        write_frame(&mut self.stream, &RequestFrame { id, request })?;
        loop {
            match read_frame::<_, ServerMessage>(&mut self.stream)? {
                ServerMessage::Reply { id: rid, result } if rid == id => {
                    return result.map_err(ClientError::Agent)
                }
                ServerMessage::Reply { id: rid, .. } => {
                    return Err(ClientError::Unexpected(format!(
                        "reply to request {rid} while waiting for {id}"
                    )))
                }
                ServerMessage::Event(e) => self.events.push_back(e),
                ServerMessage::Error(e) => return Err(ClientError::Agent(e)),
            }
        }
    }

    fn call_done(&mut self, request: Request) -> Result<(), ClientError> {
        match self.call(request)? {
            Response::Done => Ok(()),
            r => Err(unexpected("expected Done", r)),
        }
    }

    fn call_pid(&mut self, request: Request) -> Result<i32, ClientError> {
        match self.call(request)? {
            Response::Process { pid } => Ok(pid),
            r => Err(unexpected("expected a pid", r)),
        }
    }

    /// Liveness check; returns the agent's version string.
    pub fn ping(&mut self) -> Result<AgentInfo, ClientError> {
        match self.call(Request::Ping)? {
            Response::Pong {
                agent_version,
                rss_kib,
            } => Ok(AgentInfo {
                version: agent_version,
                rss_kib,
            }),
            r => Err(unexpected("expected Pong", r)),
        }
    }

    /// After a restore from a template: gives the clone its own entropy, clock and
    /// hostname (see [`crate::clone`]).
    pub fn clone_identity(
        &mut self,
        id: crate::clone::CloneIdentity,
    ) -> Result<crate::clone::CloneApplied, ClientError> {
        match self.call(Request::CloneIdentity(id))? {
            Response::CloneApplied(a) => Ok(a),
            r => Err(unexpected("expected CloneApplied", r)),
        }
    }

    /// Before a template's snapshot: has the agent start `threads` idle workers (see
    /// [`Request::WarmUp`]).
    pub fn warm_up(&mut self, threads: u32) -> Result<(), ClientError> {
        self.call_done(Request::WarmUp { threads })
    }

    /// Before a template's snapshot: has the agent make a container init for `spec`
    /// ahead of time (see [`Request::PrepareInit`]).
    pub fn prepare_init(&mut self, spec: Spec) -> Result<(), ClientError> {
        self.call_done(Request::PrepareInit(Box::new(spec)))
    }

    /// Sandbox-wide settings.
    pub fn create_sandbox(&mut self, req: CreateSandbox) -> Result<(), ClientError> {
        self.call_done(Request::CreateSandbox(req))
    }

    /// Gives the guest the pod's network.
    pub fn configure_network(&mut self, cfg: crate::NetworkConfig) -> Result<(), ClientError> {
        self.call_done(Request::ConfigureNetwork(cfg))
    }

    /// Creates a container; returns the pid of its (waiting) init process.
    pub fn create_container(&mut self, req: CreateContainer) -> Result<i32, ClientError> {
        self.call_pid(Request::CreateContainer(req))
    }

    /// Starts the container's process.
    pub fn start_container(&mut self, container_id: &str) -> Result<(), ClientError> {
        self.call_done(Request::StartContainer {
            container_id: container_id.into(),
        })
    }

    /// Runs an extra process in a running container; returns its pid.
    pub fn exec(
        &mut self,
        container_id: &str,
        exec_id: &str,
        process: Process,
        stdio: StdioConfig,
    ) -> Result<i32, ClientError> {
        self.call_pid(Request::Exec(ExecProcess {
            container_id: container_id.into(),
            exec_id: exec_id.into(),
            process: Box::new(process),
            stdio,
        }))
    }

    /// Sends `signal` to a process (or, with `all`, to the whole container).
    pub fn signal(
        &mut self,
        container_id: &str,
        exec_id: Option<&str>,
        signal: i32,
        all: bool,
    ) -> Result<(), ClientError> {
        self.call_done(Request::Signal(SignalProcess {
            container_id: container_id.into(),
            exec_id: exec_id.map(Into::into),
            signal,
            all,
        }))
    }

    /// Blocks until the process has exited and its output was delivered.
    pub fn wait(
        &mut self,
        container_id: &str,
        exec_id: Option<&str>,
    ) -> Result<ExitInfo, ClientError> {
        match self.call(Request::Wait {
            container_id: container_id.into(),
            exec_id: exec_id.map(Into::into),
        })? {
            Response::Exited(e) => Ok(e),
            r => Err(unexpected("expected Exited", r)),
        }
    }

    /// Processes in the container.
    pub fn list_processes(&mut self, container_id: &str) -> Result<Vec<ProcessInfo>, ClientError> {
        match self.call(Request::ListProcesses {
            container_id: container_id.into(),
        })? {
            Response::Processes(p) => Ok(p),
            r => Err(unexpected("expected Processes", r)),
        }
    }

    /// cgroup statistics.
    pub fn stats(&mut self, container_id: &str) -> Result<ContainerStats, ClientError> {
        match self.call(Request::Stats {
            container_id: container_id.into(),
        })? {
            Response::Stats(s) => Ok(s),
            r => Err(unexpected("expected Stats", r)),
        }
    }

    /// Sets new cgroup limits on a container (all or nothing).
    pub fn update_container(
        &mut self,
        container_id: &str,
        resources: LinuxResources,
    ) -> Result<(), ClientError> {
        self.call_done(Request::UpdateContainer(Box::new(UpdateContainer {
            container_id: container_id.into(),
            resources,
        })))
    }

    /// Removes a container.
    pub fn remove_container(&mut self, container_id: &str, force: bool) -> Result<(), ClientError> {
        self.call_done(Request::RemoveContainer {
            container_id: container_id.into(),
            force,
        })
    }

    /// Sets a terminal's size.
    pub fn resize_tty(
        &mut self,
        container_id: &str,
        exec_id: Option<&str>,
        rows: u16,
        cols: u16,
    ) -> Result<(), ClientError> {
        self.call_done(Request::ResizeTty {
            container_id: container_id.into(),
            exec_id: exec_id.map(Into::into),
            rows,
            cols,
        })
    }

    /// Asks for [`Event`]s on this connection.
    pub fn subscribe_events(&mut self) -> Result<(), ClientError> {
        self.call_done(Request::SubscribeEvents)
    }

    /// Next event (queued, or blocking on the connection).
    pub fn next_event(&mut self) -> Result<Event, ClientError> {
        if let Some(e) = self.events.pop_front() {
            return Ok(e);
        }
        match read_frame::<_, ServerMessage>(&mut self.stream)? {
            ServerMessage::Event(e) => Ok(e),
            ServerMessage::Error(e) => Err(ClientError::Agent(e)),
            ServerMessage::Reply { id, .. } => Err(ClientError::Unexpected(format!(
                "reply to request {id} while waiting for an event"
            ))),
        }
    }

    /// Asks the agent to sync and power the guest off. The agent may go away
    /// before the reply arrives; that counts as success.
    pub fn shutdown(&mut self) -> Result<(), ClientError> {
        match self.call(Request::Shutdown) {
            Ok(Response::Done) | Err(ClientError::Frame(FrameError::Closed)) => Ok(()),
            Err(ClientError::Frame(FrameError::Io(e)))
                if e.kind() == std::io::ErrorKind::ConnectionReset =>
            {
                Ok(())
            }
            Ok(r) => Err(unexpected("expected Done", r)),
            Err(e) => Err(e),
        }
    }
}
