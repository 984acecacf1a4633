//! The agent's state and request handlers: sandbox settings, the container
//! table, event subscribers and shutdown.

use std::collections::{HashMap, HashSet};
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use agent_protocol::oci_spec::runtime::Spec;
use agent_protocol::{
    validate_container_id, write_frame, CreateContainer, CreateSandbox, ErrorCode, ErrorReply,
    Event, IdError, Request, Response, ServerMessage, ShareMount, Stream, StreamId,
};

use crate::cgroup::{CgroupError, CgroupManager};
use crate::container::{self, Container, ContainerError, Env, Publish};
use crate::prepared::{Prepared, PreparedError};
use crate::process::{Proc, ProcError, Reaper};
use crate::sandbox::{self, SandboxError};
use crate::seccomp::SeccompError;

/// Handler failures that are not container errors.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// Unknown container.
    #[error("no container {0}; create it first")]
    NoContainer(String),
    /// Id taken.
    #[error("container {0} already exists")]
    Exists(String),
    /// Malformed id.
    #[error(transparent)]
    BadId(#[from] IdError),
    /// A share could not be mounted.
    #[error(transparent)]
    Share(#[from] SandboxError),
    /// A container operation failed.
    #[error(transparent)]
    Container(#[from] ContainerError),
    /// A stream could not be attached.
    #[error(transparent)]
    Stream(#[from] ProcError),
    /// Resizing failed.
    #[error("cannot resize terminal: {0}")]
    Resize(std::io::Error),
    /// No terminal.
    #[error("the process has no terminal")]
    NoTty,
    /// A clone identity was refused or could not be applied.
    #[error(transparent)]
    Clone(#[from] crate::clone::CloneApplyError),
    /// Only the guest's init may reseed and re-clock its machine.
    #[error("a clone identity is only applied by the agent running as the guest's init")]
    NotInit,
    /// The pod network could not be configured.
    #[error("pod network: {0}")]
    Network(#[from] crate::network::NetError),
    /// Worker threads could not be started.
    #[error("cannot start worker threads: {0}")]
    WarmUp(std::io::Error),
}

impl AgentError {
    fn code(&self) -> ErrorCode {
        match self {
            AgentError::NoContainer(_) => ErrorCode::NotFound,
            AgentError::Exists(_) => ErrorCode::AlreadyExists,
            AgentError::BadId(_) => ErrorCode::InvalidArgument,
            AgentError::Stream(ProcError::AlreadyAttached(_)) => ErrorCode::AlreadyExists,
            AgentError::Stream(ProcError::NotConfigured(_)) => ErrorCode::NotFound,
            AgentError::Resize(_) | AgentError::WarmUp(_) => ErrorCode::Internal,
            AgentError::Share(e) | AgentError::Container(ContainerError::Disk(e)) => {
                sandbox_code(e)
            }
            AgentError::Container(ContainerError::Seccomp(
                SeccompError::UnsupportedAction(_)
                | SeccompError::UnsupportedFlag(_)
                | SeccompError::Listener(_),
            )) => ErrorCode::NotSupported,
            AgentError::Container(ContainerError::Seccomp(_)) => ErrorCode::InvalidArgument,
            AgentError::NoTty | AgentError::NotInit => ErrorCode::InvalidState,
            AgentError::Clone(crate::clone::CloneApplyError::Invalid(_)) => {
                ErrorCode::InvalidArgument
            }
            AgentError::Clone(_) => ErrorCode::Internal,
            AgentError::Network(crate::network::NetError::Invalid(_)) => ErrorCode::InvalidArgument,
            AgentError::Network(_) => ErrorCode::Internal,
            AgentError::Container(c) => match c {
                ContainerError::Invalid(_) | ContainerError::Mount(_) => ErrorCode::InvalidArgument,
                ContainerError::NotSupported(_) => ErrorCode::NotSupported,
                ContainerError::NotFound(_) | ContainerError::Rootfs(_) => ErrorCode::NotFound,
                ContainerError::State(_) => ErrorCode::InvalidState,
                ContainerError::Cgroup(CgroupError::Missing(_)) => ErrorCode::NotSupported,
                ContainerError::Prepared(PreparedError::Unfit(_)) => ErrorCode::NotSupported,
                ContainerError::Prepared(PreparedError::TakenTwice) => ErrorCode::InvalidState,
                _ => ErrorCode::Internal,
            },
        }
    }
}

fn sandbox_code(e: &SandboxError) -> ErrorCode {
    match e {
        SandboxError::BadShare { .. } | SandboxError::BadSerial(_) => ErrorCode::InvalidArgument,
        SandboxError::Clash { .. } => ErrorCode::AlreadyExists,
        SandboxError::NoDisk { .. } => ErrorCode::NotFound,
        SandboxError::Mount { .. } => ErrorCode::Internal,
    }
}

impl From<AgentError> for ErrorReply {
    fn from(e: AgentError) -> Self {
        ErrorReply::new(e.code(), e.to_string())
    }
}

/// Event subscribers: the writer halves of control connections.
#[derive(Default)]
struct EventHub {
    subs: Mutex<Vec<Arc<Mutex<Stream>>>>,
}

impl EventHub {
    fn publish(&self, ev: Event) {
        let msg = ServerMessage::Event(ev);
        self.subs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|w| {
                let mut w = w.lock().unwrap_or_else(|e| e.into_inner());
                write_frame(&mut *w, &msg).is_ok()
            });
    }
}

/// Agent settings from the command line.
#[derive(Clone, Debug)]
pub struct Config {
    /// Running as the guest's init.
    pub pid1: bool,
    /// Where block-device rootfs are mounted.
    pub state_dir: PathBuf,
    /// Enter rootfs with MS_MOVE + chroot instead of pivot_root.
    pub no_pivot: bool,
    /// Where disks are found by serial (`/sys/block`; tests point it elsewhere).
    pub sys_block: PathBuf,
}

/// What to do after the reply has been sent.
#[derive(Debug, PartialEq, Eq)]
pub enum After {
    /// Nothing.
    Continue,
    /// Power off.
    Shutdown,
}

/// The agent.
pub struct Agent {
    cfg: Config,
    /// Process table (shared with the signal thread).
    pub reaper: Arc<Reaper>,
    cgroups: CgroupManager,
    containers: Mutex<HashMap<String, Arc<Container>>>,
    creating: Mutex<HashSet<String>>,
    events: Arc<EventHub>,
    sandbox: Mutex<Option<CreateSandbox>>,
    /// virtio-fs shares mounted so far.
    shares: Mutex<Vec<ShareMount>>,
    /// A container init made ahead of time (see [`crate::prepared`]).
    prepared: Mutex<Option<Prepared>>,
}

impl Agent {
    /// A new agent (detects cgroup hierarchies).
    pub fn new(cfg: Config) -> Self {
        Agent {
            cfg,
            reaper: Arc::new(Reaper::default()),
            cgroups: CgroupManager::detect(),
            containers: Mutex::default(),
            creating: Mutex::default(),
            events: Arc::default(),
            sandbox: Mutex::default(),
            shares: Mutex::default(),
            prepared: Mutex::default(),
        }
    }

    fn env(&self) -> Env<'_> {
        let hub = self.events.clone();
        let publish: Publish = Arc::new(move |e| hub.publish(e));
        Env {
            reaper: &self.reaper,
            cgroups: &self.cgroups,
            publish,
            state_dir: &self.cfg.state_dir,
            sys_block: &self.cfg.sys_block,
            no_pivot: self.cfg.no_pivot,
            prepared: &self.prepared,
        }
    }

    fn container(&self, id: &str) -> Result<Arc<Container>, AgentError> {
        self.containers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .cloned()
            .ok_or_else(|| AgentError::NoContainer(id.to_string()))
    }

    fn proc(&self, id: &str, exec_id: Option<&str>) -> Result<Arc<Proc>, AgentError> {
        Ok(self.container(id)?.process(exec_id)?)
    }

    /// Adds a connection to the event subscribers.
    pub fn subscribe(&self, writer: Arc<Mutex<Stream>>) {
        // A subscriber that stops reading must not stall event delivery to
        // the others for long: its writes time out and it is dropped.
        if let Ok(w) = writer.lock() {
            let _ = w.set_write_timeout(Some(std::time::Duration::from_secs(5)));
        }
        self.events
            .subs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(writer);
    }

    /// Handles one request (Wait blocks until the process is done).
    pub fn handle(&self, req: Request) -> (Result<Response, ErrorReply>, After) {
        let after = if req == Request::Shutdown {
            After::Shutdown
        } else {
            After::Continue
        };
        (self.dispatch(req).map_err(ErrorReply::from), after)
    }

    fn dispatch(&self, req: Request) -> Result<Response, AgentError> {
        match req {
            Request::Ping => Ok(Response::Pong {
                agent_version: env!("CARGO_PKG_VERSION").to_string(),
                rss_kib: own_rss_kib(),
            }),
            Request::CreateSandbox(sb) => self.create_sandbox(sb),
            Request::WarmUp { threads } => {
                self.cgroups.prepare();
                crate::pool::warm(threads as usize).map_err(AgentError::WarmUp)?;
                Ok(Response::Done)
            }
            Request::PrepareInit(spec) => self.prepare_init(&spec),
            Request::CloneIdentity(id) => {
                crate::trace::mark("request: clone identity");
                if !self.cfg.pid1 {
                    return Err(AgentError::NotInit);
                }
                Ok(Response::CloneApplied(crate::clone::apply(&id)?))
            }
            Request::ConfigureNetwork(cfg) => {
                crate::network::configure(&cfg)?;
                Ok(Response::Done)
            }
            Request::CreateContainer(req) => self.create_container(req),
            Request::StartContainer { container_id } => {
                crate::trace::mark("request: start container");
                self.container(&container_id)?.start()?;
                Ok(Response::Done)
            }
            Request::Exec(req) => {
                let c = self.container(&req.container_id)?;
                let p = c.exec(&self.env(), req)?;
                Ok(Response::Process { pid: p.pid })
            }
            Request::Signal(s) => {
                self.container(&s.container_id)?
                    .signal(s.exec_id.as_deref(), s.signal, s.all)?;
                Ok(Response::Done)
            }
            Request::Wait {
                container_id,
                exec_id,
            } => {
                let p = self.proc(&container_id, exec_id.as_deref())?;
                Ok(Response::Exited(p.wait_final()))
            }
            Request::ListProcesses { container_id } => Ok(Response::Processes(
                self.container(&container_id)?.processes(),
            )),
            Request::Stats { container_id } => {
                Ok(Response::Stats(self.container(&container_id)?.stats()))
            }
            Request::UpdateContainer(u) => {
                self.container(&u.container_id)?
                    .update(&self.cgroups, &u.resources)?;
                Ok(Response::Done)
            }
            Request::RemoveContainer {
                container_id,
                force,
            } => self.remove_container(&container_id, force),
            Request::ResizeTty {
                container_id,
                exec_id,
                rows,
                cols,
            } => {
                let p = self.proc(&container_id, exec_id.as_deref())?;
                let tty = p.tty().ok_or(AgentError::NoTty)?;
                crate::stdio::resize(&tty, rows, cols).map_err(AgentError::Resize)?;
                Ok(Response::Done)
            }
            // Handled by the connection (it owns the writer).
            Request::SubscribeEvents => Ok(Response::Done),
            Request::Shutdown => Ok(Response::Done),
        }
    }

    fn create_sandbox(&self, sb: CreateSandbox) -> Result<Response, AgentError> {
        self.mount_shares(&sb.shares)?;
        if let (true, Some(h)) = (self.cfg.pid1, &sb.hostname) {
            nix::unistd::sethostname(h).map_err(|e| ContainerError::Sys {
                op: "sethostname",
                cause: e.into(),
            })?;
        }
        if self.cfg.pid1 {
            // Containers of the sandbox may share the guest's root netns.
            crate::network::loopback_up()?;
        }
        *self.sandbox.lock().unwrap_or_else(|e| e.into_inner()) = Some(sb);
        Ok(Response::Done)
    }

    fn prepare_init(&self, spec: &Spec) -> Result<Response, AgentError> {
        let mut slot = self.prepared.lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_some() {
            return Err(
                ContainerError::State("a container init is prepared already".into()).into(),
            );
        }
        *slot = Some(
            crate::prepared::prepare(
                &self.reaper,
                spec,
                &self.cfg.state_dir,
                self.cgroups.is_v2(),
                self.cfg.pid1,
            )
            .map_err(ContainerError::from)?,
        );
        Ok(Response::Done)
    }

    fn create_container(&self, req: CreateContainer) -> Result<Response, AgentError> {
        crate::trace::mark("request: create container");
        let id = req.container_id.clone();
        validate_container_id(&id)?;
        {
            let containers = self.containers.lock().unwrap_or_else(|e| e.into_inner());
            let mut creating = self.creating.lock().unwrap_or_else(|e| e.into_inner());
            if containers.contains_key(&id) || !creating.insert(id.clone()) {
                return Err(AgentError::Exists(id));
            }
        }
        let r = container::create(&self.env(), req);
        let mut containers = self.containers.lock().unwrap_or_else(|e| e.into_inner());
        self.creating
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
        let c = r?;
        let pid = c.init.pid;
        containers.insert(id, Arc::new(c));
        Ok(Response::Process { pid })
    }

    fn remove_container(&self, id: &str, force: bool) -> Result<Response, AgentError> {
        let c = self.container(id)?;
        c.destroy(force)?;
        self.containers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
        Ok(Response::Done)
    }

    /// Mounts the shares not mounted yet (each once; a share already mounted at the same
    /// place is fine, a tag or mount point reused differently is an error).
    fn mount_shares(&self, wanted: &[ShareMount]) -> Result<(), AgentError> {
        let mut mounted = self.shares.lock().unwrap_or_else(|e| e.into_inner());
        for s in sandbox::new_shares(wanted, &mounted)? {
            sandbox::mount_share(s)?;
            mounted.push(s.clone());
        }
        Ok(())
    }

    /// Finds a process's stream for a stdio connection.
    pub fn take_stream(&self, id: &StreamId) -> Result<(Arc<Proc>, OwnedFd), ErrorReply> {
        let p = self.proc(&id.container_id, id.exec_id.as_deref())?;
        let fd = p.take_stream(id.stream).map_err(AgentError::from)?;
        Ok((p, fd))
    }

    /// Kills and removes every container.
    pub fn remove_all(&self) {
        let all: Vec<Arc<Container>> = self
            .containers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
            .map(|(_, c)| c)
            .collect();
        for c in all {
            let _ = c.destroy(true);
        }
    }

    /// Removes all containers, syncs, and powers off (reboot as PID 1, which
    /// the VMM treats as a clean exit) or exits (host mode).
    pub fn power_off(&self) -> ! {
        self.remove_all();
        nix::unistd::sync();
        if self.cfg.pid1 {
            crate::pid1::reboot()
        }
        std::process::exit(0)
    }
}

/// VmRSS of this process from /proc/self/status, in KiB (0 if unreadable).
fn own_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}
