//! Shared helpers: a busybox rootfs, an agent on a Unix socket, specs, and a
//! "run a container and collect its output" helper.

#![allow(dead_code)]

use std::io::Read;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use agent_protocol::oci_spec::runtime::{LinuxResources, Process, Spec};
use agent_protocol::{
    attach_stdio, Client, CreateContainer, Endpoint, ExitInfo, Rootfs, StdioConfig, Stream,
    StreamId, StreamKind,
};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Fails (never skips) when not root: CI runs as root.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "these tests create namespaces, mounts and cgroups: run them as root (CI does)"
    );
}

/// A unique name for ids and temp dirs.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::SeqCst)
    )
}

/// A directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(prefix: &str) -> TempDir {
        let p = std::env::temp_dir().join(unique(prefix));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

const APPLETS: &[&str] = &[
    "sh", "echo", "sleep", "cat", "hostname", "dd", "yes", "head", "ls", "id", "true", "false",
    "tty", "stty", "wc", "ps", "grep", "ulimit", "touch", "mkdir",
];

/// A rootfs with Debian's static busybox and a few applet links.
pub fn busybox_rootfs() -> TempDir {
    let bb = Path::new("/bin/busybox");
    assert!(
        bb.exists(),
        "/bin/busybox missing: apt-get install busybox-static"
    );
    let d = TempDir::new("bbroot");
    for dir in ["bin", "proc", "sys", "dev", "tmp", "etc", "root"] {
        std::fs::create_dir_all(d.path().join(dir)).unwrap();
    }
    std::fs::copy(bb, d.path().join("bin/busybox")).unwrap();
    for a in APPLETS {
        symlink("busybox", d.path().join("bin").join(a)).unwrap();
    }
    d
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
        // GUEST_AGENT_BIN runs the suite against another build (e.g. the
        // static release binary from build-static.sh).
        let bin =
            std::env::var("GUEST_AGENT_BIN").unwrap_or(env!("CARGO_BIN_EXE_guest-agent").into());
        let child = Command::new(bin)
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
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
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
