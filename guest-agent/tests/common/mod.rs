//! The agent suite's helpers: an agent on a Unix socket, specs, and a "run a container
//! and collect its output" helper (scratch directories and the busybox rootfs come from
//! test-support).

#![allow(dead_code)]

use std::io::Read;
use std::path::Path;
use std::process::{Child, Command};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use agent_protocol::oci_spec::runtime::{LinuxResources, Process, Spec};
use agent_protocol::{
    attach_stdio, Client, CreateContainer, Endpoint, ExitInfo, Rootfs, StdioConfig, Stream,
    StreamId, StreamKind,
};

use test_support::cmd::poll_until;
pub use test_support::{unique, TempDir};

/// Fails (never skips) when not root: CI runs as root.
pub fn require_root() {
    test_support::host::require_root("these tests create namespaces, mounts and cgroups");
}

const APPLETS: &[&str] = &[
    "sh", "echo", "sleep", "cat", "hostname", "dd", "yes", "head", "ls", "id", "true", "false",
    "tty", "stty", "wc", "ps", "grep", "ulimit", "touch", "mkdir",
];

/// A rootfs with Debian's static busybox and a few applet links.
pub fn busybox_rootfs() -> TempDir {
    let d = TempDir::new("bbroot");
    test_support::rootfs::busybox_rootfs(&d, APPLETS);
    d
}

/// The agent binary: `$GUEST_AGENT_BIN` runs the suite against another build (e.g. the
/// static release binary from build-static.sh), else this build's.
pub fn agent_bin() -> String {
    std::env::var("GUEST_AGENT_BIN").unwrap_or(env!("CARGO_BIN_EXE_guest-agent").into())
}

/// A guest agent serving on a Unix socket; killed (SIGTERM) on drop.
pub struct Agent {
    pub child: Child,
    pub endpoint: Endpoint,
    pub dir: TempDir,
}

impl Agent {
    pub fn start() -> Agent {
        Self::start_with(&[])
    }

    /// Starts the agent with extra arguments.
    pub fn start_with(extra: &[&str]) -> Agent {
        require_root();
        let dir = TempDir::new("agent");
        let sock = dir.path().join("agent.sock");
        let child = Command::new(agent_bin())
            .arg("--unix")
            .arg(&sock)
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .args(extra)
            .spawn()
            .expect("start guest-agent");
        let endpoint = Endpoint::Unix(sock);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(mut c) = Client::connect(&endpoint) {
                c.ping().unwrap();
                break;
            }
            assert!(Instant::now() < deadline, "agent did not come up");
            std::thread::sleep(Duration::from_millis(20));
        }
        Agent {
            child,
            endpoint,
            dir,
        }
    }

    pub fn client(&self) -> Client {
        client(&self.endpoint)
    }

    pub fn attach(&self, id: &str, exec_id: Option<&str>, stream: StreamKind) -> Stream {
        attach(&self.endpoint, id, exec_id, stream)
    }
}

/// Opens one stdio stream.
pub fn attach(ep: &Endpoint, id: &str, exec_id: Option<&str>, stream: StreamKind) -> Stream {
    let sid = StreamId {
        container_id: id.into(),
        exec_id: exec_id.map(Into::into),
        stream,
    };
    attach_stdio(ep, sid).unwrap()
}

/// A control connection with a generous reply timeout.
pub fn client(ep: &Endpoint) -> Client {
    let c = Client::connect(ep).unwrap();
    c.set_timeout(Some(Duration::from_secs(60))).unwrap();
    c
}

impl Drop for Agent {
    fn drop(&mut self) {
        // SAFETY: kill on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let child = &mut self.child;
        let gone = poll_until(Duration::from_secs(20), Duration::from_millis(20), || {
            matches!(child.try_wait(), Ok(Some(_)))
        });
        if gone {
            return;
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A process running `args` with the default environment.
pub fn process(args: &[&str]) -> Process {
    let mut p = Process::default();
    p.set_args(Some(args.iter().map(|s| s.to_string()).collect()));
    p
}

/// The default OCI spec with `args`, `hostname` and optional resources.
pub fn spec(args: &[&str], hostname: &str, resources: Option<LinuxResources>) -> Spec {
    let mut s = Spec::default();
    s.set_process(Some(process(args)));
    s.set_hostname(Some(hostname.into()));
    if let Some(r) = resources {
        let mut l = s.linux().clone().unwrap();
        l.set_resources(Some(r));
        s.set_linux(Some(l));
    }
    s
}

pub fn create_req(id: &str, spec: Spec, rootfs: &Path, stdio: StdioConfig) -> CreateContainer {
    CreateContainer {
        container_id: id.into(),
        spec: Box::new(spec),
        rootfs: Rootfs::Directory {
            path: rootfs.to_str().unwrap().into(),
        },
        stdio,
    }
}

/// Reads a stream to EOF in a thread.
pub fn reader(mut s: Stream) -> JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut v = vec![];
        s.read_to_end(&mut v).unwrap();
        v
    })
}

/// Output of a finished process.
pub struct Run {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub exit: ExitInfo,
}

impl Run {
    pub fn out(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
}

/// Creates, starts and waits for a container; removes it afterwards.
pub fn run(agent: &Agent, id: &str, spec: Spec, rootfs: &Path) -> Run {
    run_at(&agent.endpoint, id, spec, rootfs)
}

/// [`run`] against any endpoint.
pub fn run_at(ep: &Endpoint, id: &str, spec: Spec, rootfs: &Path) -> Run {
    run_inspect(ep, id, spec, rootfs, |_| {})
}

/// [`run_at`], calling `inspect` with the init's pid right after the create.
pub fn run_inspect(
    ep: &Endpoint,
    id: &str,
    spec: Spec,
    rootfs: &Path,
    inspect: impl FnOnce(i32),
) -> Run {
    let mut c = client(ep);
    let pid = c
        .create_container(create_req(id, spec, rootfs, StdioConfig::OUTPUT))
        .unwrap();
    inspect(pid);
    let out = reader(attach(ep, id, None, StreamKind::Stdout));
    let err = reader(attach(ep, id, None, StreamKind::Stderr));
    c.start_container(id).unwrap();
    let exit = c.wait(id, None).unwrap();
    let run = Run {
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
        exit,
    };
    c.remove_container(id, false).unwrap();
    run
}
