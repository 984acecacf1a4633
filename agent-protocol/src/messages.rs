//! Every message that crosses an agent connection.
//!
//! Connection life: the client sends a [`Hello`] frame, the agent answers with
//! a [`HelloReply`]. On a [`Channel::Control`] connection the client then sends
//! [`RequestFrame`]s and the agent sends [`ServerMessage`]s (replies, tagged
//! with the request id, possibly out of order, and events once subscribed). On
//! a [`Channel::Stdio`] connection the stream is raw bytes after the reply.

use oci_spec::runtime::{Process, Spec};
use serde::{Deserialize, Serialize};

/// Identifies this protocol in the handshake.
pub const MAGIC: &str = "sandbox-vm-agent";
/// Newest protocol version this crate speaks. 2: `CreateSandbox::shares`, block-device
/// rootfs named by serial.
pub const PROTOCOL_VERSION: u32 = 2;
/// Oldest protocol version this crate accepts. The host runtime and the agent image are
/// built from one tree and ship together, so there is no mixed-version fleet to serve: a
/// version-1 peer gets a clear `unsupported_version` instead of a field error later.
pub const MIN_PROTOCOL_VERSION: u32 = 2;
/// vsock port the agent listens on inside the guest.
pub const AGENT_VSOCK_PORT: u32 = 1024;

/// First frame on every connection, from the client.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hello {
    /// Must equal [`MAGIC`].
    pub magic: String,
    /// Newest version the client speaks.
    pub version: u32,
    /// What the connection is for.
    pub channel: Channel,
}

impl Hello {
    /// A hello for this crate's version.
    pub fn new(channel: Channel) -> Self {
        Hello {
            magic: MAGIC.to_string(),
            version: PROTOCOL_VERSION,
            channel,
        }
    }
}

/// Purpose of a connection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Channel {
    /// Requests, replies and events.
    Control,
    /// One standard stream of one process.
    Stdio(StreamId),
}

/// Names one standard stream of one process.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamId {
    /// Container id.
    pub container_id: String,
    /// `None` for the container's main process, else the exec id.
    pub exec_id: Option<String>,
    /// Which stream.
    pub stream: StreamKind,
}

/// Which standard stream. With a terminal, `Stdout` carries the terminal
/// output and `Stdin` its input; `Stderr` is not used.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StreamKind {
    /// Client to process.
    Stdin,
    /// Process to client.
    Stdout,
    /// Process to client.
    Stderr,
}

/// The agent's answer to a [`Hello`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum HelloReply {
    /// The connection is open, speaking `version`.
    Accepted {
        /// Version both sides will speak.
        version: u32,
    },
    /// The connection will be closed.
    Rejected(ErrorReply),
}

/// One request on a control connection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestFrame {
    /// Chosen by the client; echoed in the reply.
    pub id: u64,
    /// The request.
    pub request: Request,
}

/// What the client asks for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Liveness check; answered with [`Response::Pong`].
    Ping,
    /// Sandbox-wide settings; call once before creating containers.
    CreateSandbox(CreateSandbox),
    /// Sets up a container up to (not including) running its process.
    CreateContainer(CreateContainer),
    /// Runs the container's process.
    StartContainer {
        /// Container id.
        container_id: String,
    },
    /// Runs an extra process in a running container.
    Exec(ExecProcess),
    /// Sends a signal.
    Signal(SignalProcess),
    /// Blocks until the process exits and its output has been delivered.
    Wait {
        /// Container id.
        container_id: String,
        /// `None` for the main process.
        exec_id: Option<String>,
    },
    /// Processes of a container.
    ListProcesses {
        /// Container id.
        container_id: String,
    },
    /// cgroup statistics of a container.
    Stats {
        /// Container id.
        container_id: String,
    },
    /// Sets new cgroup limits on a created or running container; answered with
    /// [`Response::Done`]. All or nothing: on an error the old limits stay.
    UpdateContainer(Box<UpdateContainer>),
    /// Removes a stopped container (or kills it first with `force`).
    RemoveContainer {
        /// Container id.
        container_id: String,
        /// Kill the container if it is still running.
        force: bool,
    },
    /// Sets a terminal's window size.
    ResizeTty {
        /// Container id.
        container_id: String,
        /// `None` for the main process.
        exec_id: Option<String>,
        /// Rows.
        rows: u16,
        /// Columns.
        cols: u16,
    },
    /// Sends [`Event`]s on this connection from now on.
    SubscribeEvents,
    /// The VM was just restored from a template: make this clone its own machine
    /// (entropy + CRNG reseed, wall clock, hostname; see [`crate::clone`]). Answered with
    /// [`Response::CloneApplied`].
    CloneIdentity(crate::clone::CloneIdentity),
    /// Before a template's snapshot: start `threads` idle worker threads with their
    /// stacks touched, so that each clone of the template serves its first connections
    /// and processes without starting threads (each costs about 0.2 s where the guest
    /// kernel is emulated), and prepare the parent of containers' cgroups. Answered with
    /// [`Response::Done`] once done.
    WarmUp {
        /// Worker threads to have idle (the agent caps it).
        threads: u32,
    },
    /// Before a template's snapshot: make the init process of a container with this spec
    /// ahead of time, in its new namespaces and with the kernel filesystems the spec
    /// mounts first (proc, sysfs, `/dev` with its devices, devpts, mqueue, tmpfs) and its
    /// masked and read-only paths, staged outside any root filesystem. The next
    /// [`Request::CreateContainer`] whose spec asks for the same takes that process over,
    /// moves the staged mounts into its rootfs and does only the rest; any other spec is
    /// created as usual. The spec's process and rootfs do not matter. Answered with
    /// [`Response::Done`] once the process is ready.
    PrepareInit(Box<Spec>),
    /// Syncs and powers the guest off (reboot, which the VMM treats as exit).
    Shutdown,
    /// Gives the guest the pod's network (its NICs, addresses, routes); sent once, after
    /// [`Request::CreateSandbox`], when the pod has a network namespace.
    ConfigureNetwork(crate::network::NetworkConfig),
}

/// Sandbox-wide settings.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateSandbox {
    /// Sandbox id (for logs).
    pub sandbox_id: String,
    /// Guest hostname; set only when the agent is PID 1.
    pub hostname: Option<String>,
    /// virtio-fs shares to mount, each once per sandbox.
    #[serde(default)]
    pub shares: Vec<ShareMount>,
}

/// Longest virtio-fs tag (the device's config space field), in bytes.
pub const MAX_SHARE_TAG_LEN: usize = 36;

/// A virtio-fs share the agent mounts (`mount -t virtiofs TAG MOUNT_POINT`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShareMount {
    /// The device's tag (1 to 36 bytes), e.g. `sandbox`.
    pub tag: String,
    /// Absolute guest path, created if missing, e.g. `/run/sandbox-fs`.
    pub mount_point: String,
}

/// Longest virtio-blk serial (GET_ID answer), in bytes.
pub const MAX_DISK_SERIAL_LEN: usize = 20;

/// Where a container's root filesystem comes from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Rootfs {
    /// An existing directory in the guest, e.g. on a virtio-fs share
    /// (`<mount point>/<container id>/rootfs`).
    Directory {
        /// Absolute path.
        path: String,
    },
    /// A block device the agent mounts (read-write; a read-only root is made read-only in
    /// the container's view after its mount points exist).
    BlockDevice {
        /// The virtio-blk serial (the VMM's disk id, answered to GET_ID; 1 to 20 bytes),
        /// e.g. `rootfs`: the agent finds the disk whose `/sys/block/*/serial` matches,
        /// whatever order the disks were attached in.
        serial: String,
        /// Filesystem type, e.g. `ext4`.
        fstype: String,
        /// Extra mount data, e.g. `["noatime"]` is not data but flags are
        /// accepted too.
        options: Vec<String>,
    },
}

/// Which standard streams the client will attach. A stream not attached is
/// connected to `/dev/null`. An attached output stream must be read: the
/// exit of a process is reported only after its output has been delivered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StdioConfig {
    /// Attach stdin.
    pub stdin: bool,
    /// Attach stdout (or the terminal).
    pub stdout: bool,
    /// Attach stderr (ignored with a terminal).
    pub stderr: bool,
}

impl StdioConfig {
    /// No streams: everything goes to `/dev/null`.
    pub const NONE: StdioConfig = StdioConfig {
        stdin: false,
        stdout: false,
        stderr: false,
    };
    /// stdout and stderr attached, stdin from `/dev/null`.
    pub const OUTPUT: StdioConfig = StdioConfig {
        stdin: false,
        stdout: true,
        stderr: true,
    };
    /// All three attached.
    pub const ALL: StdioConfig = StdioConfig {
        stdin: true,
        stdout: true,
        stderr: true,
    };
}

/// Creates a container.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateContainer {
    /// Unique container id (`[A-Za-z0-9_.-]`, at most 64 bytes).
    pub container_id: String,
    /// The OCI runtime spec (`root.path` is ignored: see `rootfs`).
    pub spec: Box<Spec>,
    /// Root filesystem.
    pub rootfs: Rootfs,
    /// Streams of the main process.
    pub stdio: StdioConfig,
}

/// New cgroup limits for a container (runc's `update`, CRI's
/// `UpdateContainerResources`). The agent applies the memory limit, reservation and
/// swap (memory + swap, as OCI counts it), the CPU shares, quota and period and the pids
/// limit; a field left out keeps its current value. `cpu.cpus`/`cpu.mems` name host
/// CPUs and memory nodes: the host sizes the VM from them and the agent ignores them,
/// as at create (the guest's vCPUs are not the host's CPUs). Other fields (devices,
/// block I/O, hugepages, network) are ignored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateContainer {
    /// Container id.
    pub container_id: String,
    /// The new limits.
    pub resources: oci_spec::runtime::LinuxResources,
}

/// Runs an extra process in a container.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecProcess {
    /// Container id.
    pub container_id: String,
    /// Unique within the container.
    pub exec_id: String,
    /// The OCI process.
    pub process: Box<Process>,
    /// Streams of the process.
    pub stdio: StdioConfig,
}

/// Sends a signal.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignalProcess {
    /// Container id.
    pub container_id: String,
    /// `None` for the main process.
    pub exec_id: Option<String>,
    /// Signal number.
    pub signal: i32,
    /// Signal every process of the container.
    pub all: bool,
}

/// Successful answers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Response {
    /// Request done, nothing to report.
    Done,
    /// Answer to [`Request::Ping`].
    Pong {
        /// Agent build version.
        agent_version: String,
        /// The agent's resident set size in KiB (0 if unknown).
        #[serde(default)]
        rss_kib: u64,
    },
    /// A process exists (created container or started exec).
    Process {
        /// Its pid in the agent's PID namespace.
        pid: i32,
    },
    /// Answer to [`Request::Wait`].
    Exited(ExitInfo),
    /// Answer to [`Request::ListProcesses`].
    Processes(Vec<ProcessInfo>),
    /// Answer to [`Request::Stats`].
    Stats(ContainerStats),
    /// Answer to [`Request::CloneIdentity`].
    CloneApplied(crate::clone::CloneApplied),
}

/// How a process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum ExitStatus {
    /// `exit(code)`.
    Code(i32),
    /// Killed by a signal.
    Signal(i32),
}

impl ExitStatus {
    /// Shell-style status: the code, or 128 + signal.
    pub fn as_shell_status(self) -> i32 {
        match self {
            ExitStatus::Code(c) => c,
            ExitStatus::Signal(s) => 128 + s,
        }
    }
}

/// A process's exit, reported after all its output has been delivered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExitInfo {
    /// Status.
    pub status: ExitStatus,
    /// The container's memory cgroup recorded an OOM kill.
    pub oom_killed: bool,
}

/// One process of a container.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessInfo {
    /// Pid in the agent's PID namespace.
    pub pid: i32,
    /// `/proc/PID/comm`.
    pub command: String,
}

/// cgroup statistics (absent when the controller is not available).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerStats {
    /// Current memory use, bytes.
    pub memory_usage: Option<u64>,
    /// Memory limit, bytes (`None` if unlimited or unknown).
    pub memory_limit: Option<u64>,
    /// OOM kills so far.
    pub oom_kills: Option<u64>,
    /// CPU time used, nanoseconds.
    pub cpu_usage_ns: Option<u64>,
    /// Current number of tasks.
    pub pids_current: Option<u64>,
    /// Task limit (`None` if unlimited or unknown).
    pub pids_limit: Option<u64>,
}

/// What went wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The frame is not a valid message.
    BadFrame,
    /// The frame exceeds the size limit.
    FrameTooLarge,
    /// The hello is wrong (magic, channel).
    BadHandshake,
    /// No common protocol version.
    UnsupportedVersion,
    /// No such container, process or stream.
    NotFound,
    /// The id is taken, or the stream is already attached.
    AlreadyExists,
    /// The request or spec is invalid.
    InvalidArgument,
    /// The object is not in a state that allows the request.
    InvalidState,
    /// The agent does not implement this.
    NotSupported,
    /// The operation failed in the guest.
    Internal,
}

/// An error answer; the connection stays usable unless it was a framing or
/// handshake error.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(deny_unknown_fields)]
#[error("{message} ({code:?})")]
pub struct ErrorReply {
    /// Category.
    pub code: ErrorCode,
    /// One line saying what failed.
    pub message: String,
}

impl ErrorReply {
    /// Builds an error reply.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ErrorReply {
            code,
            message: message.into(),
        }
    }
}

/// Unsolicited notifications (after [`Request::SubscribeEvents`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Event {
    /// A process exited and its output has been delivered.
    Exit {
        /// Container id.
        container_id: String,
        /// `None` for the main process.
        exec_id: Option<String>,
        /// How it ended.
        exit: ExitInfo,
    },
}

/// Everything the agent sends on a control connection after the handshake.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum ServerMessage {
    /// Answer to the request with this id.
    Reply {
        /// Request id.
        id: u64,
        /// Outcome.
        result: Result<Response, ErrorReply>,
    },
    /// A notification.
    Event(Event),
    /// A frame that could not be parsed (so its id is unknown).
    Error(ErrorReply),
}

/// The agent's reading of one control-connection frame body: the request, or the message
/// to answer with (an error reply carrying the request id when the body at least has a
/// numeric `id`, so the client can match it).
pub fn decode_request(body: &[u8]) -> Result<RequestFrame, ServerMessage> {
    #[derive(Deserialize)]
    struct IdOnly {
        id: u64,
    }
    serde_json::from_slice(body).map_err(|e| {
        let err = ErrorReply::new(ErrorCode::BadFrame, format!("malformed request: {e}"));
        match serde_json::from_slice::<IdOnly>(body) {
            Ok(IdOnly { id }) => ServerMessage::Reply {
                id,
                result: Err(err),
            },
            Err(_) => ServerMessage::Error(err),
        }
    })
}

/// The agent's side of version negotiation: the version to speak, or why not.
pub fn negotiate(hello: &Hello) -> Result<u32, ErrorReply> {
    if hello.magic != MAGIC {
        return Err(ErrorReply::new(
            ErrorCode::BadHandshake,
            format!("bad magic {:?}: not a sandbox-vm agent client", hello.magic),
        ));
    }
    if hello.version < MIN_PROTOCOL_VERSION {
        return Err(ErrorReply::new(
            ErrorCode::UnsupportedVersion,
            format!(
                "protocol version {} is not supported (agent speaks {}..={}); upgrade the runtime",
                hello.version, MIN_PROTOCOL_VERSION, PROTOCOL_VERSION
            ),
        ));
    }
    Ok(hello.version.min(PROTOCOL_VERSION))
}
