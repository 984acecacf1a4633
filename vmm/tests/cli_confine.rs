//! The confined VMM process: per-thread seccomp filters, the jail, private sockets.
//! Tiny hand-made guests stand in for a kernel (needs /dev/kvm and root; seconds in all).

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

use test_support::cmd::wait_exit;
use test_support::guests::COUNTING;
use test_support::host::connect_as;
use test_support::runtime::vmm_command;
use test_support::TempDir;

use vmm_api::client::ApiClient;
use vmm_api::config::{SerialOutput, VmConfig, VsockConfig};

const BIN: &str = env!("CARGO_BIN_EXE_sandbox-vm-vmm");

/// The test's directory, open to all (the jail's uid looks into it).
struct Scratch(TempDir);

impl Scratch {
    fn new(name: &str) -> Self {
        let d = TempDir::named(&format!("svm-confine-{name}"));
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
        Self(d)
    }
    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
    /// The counting guest with a vsock device and a serial file; returns the config path.
    fn config(&self) -> PathBuf {
        let kernel = self.path("guest.elf");
        std::fs::write(&kernel, vmm::testing::tiny_elf(0x20_0000, COUNTING, 0x1000)).unwrap();
        let mut c = VmConfig::new(kernel);
        c.mem_mib = 16;
        c.serial = SerialOutput::File(self.path("console.log"));
        c.vsock = Some(VsockConfig {
            guest_cid: 3,
            uds_path: self.path("vsock.sock"),
        });
        let path = self.path("vm.json");
        std::fs::write(&path, serde_json::to_string(&c).unwrap()).unwrap();
        path
    }
}

fn spawn(s: &Scratch, extra: &[&str]) -> Child {
    vmm_command(BIN, &s.path("api.sock"))
        .arg("--config")
        .arg(s.config())
        .args(extra)
        .spawn()
        .unwrap()
}

/// Waits up to `secs` for the VMM to exit; kills it (and fails) otherwise.
fn wait(child: &mut Child, secs: u64) -> ExitStatus {
    wait_exit(child, Duration::from_secs(secs))
}

fn connect(child: &mut Child, sock: &Path) -> ApiClient {
    ApiClient::connect_while(sock, Duration::from_secs(30), || {
        child.try_wait().unwrap().is_none()
    })
    .unwrap()
}

#[test]
fn a_call_outside_each_threads_filter_kills_the_vmm_with_sigsys() {
    for kind in ["main", "vcpu", "devices", "api"] {
        let s = Scratch::new(&format!("sigsys-{kind}"));
        let mut vmm = spawn(&s, &["--seccomp-selftest", kind]);
        let status = wait(&mut vmm, 30);
        assert_eq!(status.signal(), Some(libc::SIGSYS), "{kind}: {status:?}");
    }
}

#[test]
fn the_selftest_call_alone_is_harmless_without_filters() {
    let s = Scratch::new("nofilter");
    let mut vmm = spawn(&s, &["--seccomp", "off", "--seccomp-selftest", "vcpu"]);
    let mut api = connect(&mut vmm, &s.path("api.sock"));
    api.describe().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    api.stop().unwrap();
    assert_eq!(wait(&mut vmm, 30).code(), Some(0));
}

#[test]
fn the_vmms_sockets_are_private() {
    let s = Scratch::new("perm");
    let mut vmm = spawn(&s, &[]);
    let mut api = connect(&mut vmm, &s.path("api.sock"));
    for name in ["api.sock", "vsock.sock"] {
        let p = s.path(name);
        let meta = std::fs::symlink_metadata(&p).unwrap();
        assert!(meta.file_type().is_socket(), "{name}");
        assert_eq!(meta.permissions().mode() & 0o777, 0o600, "{name}");
        // The directory is open to all: only the socket's own mode keeps others out.
        assert_eq!(connect_as(65534, &p), libc::EACCES, "{name}");
    }
    api.stop().unwrap();
    assert_eq!(wait(&mut vmm, 30).code(), Some(0));
}

/// The jailed VMM (the outer process's only child).
fn inner_pid(outer: u32) -> u32 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let children =
            std::fs::read_to_string(format!("/proc/{outer}/task/{outer}/children")).unwrap();
        if let Some(pid) = children.split_whitespace().next() {
            return pid.parse().unwrap();
        }
        assert!(Instant::now() < deadline, "no jailed child");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn status_field(pid: u32, key: &str) -> String {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix(key))
        .map(|v| v.split_whitespace().collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn ns(pid: &str, kind: &str) -> PathBuf {
    std::fs::read_link(format!("/proc/{pid}/ns/{kind}")).unwrap()
}

/// Checks a running jailed VMM `pid` from the host.
fn assert_jailed(pid: u32, s: &Scratch) {
    let root = PathBuf::from(format!("/proc/{pid}/root"));
    // What the VMM can open: its own files, at their own paths, and nothing else.
    assert!(root
        .join(s.path("guest.elf").strip_prefix("/").unwrap())
        .is_file());
    assert!(root.join("dev/kvm").exists());
    for outside in [
        "etc/passwd",
        "bin/sh",
        "usr",
        "root",
        "home",
        "sys",
        "dev/null",
    ] {
        assert!(
            !root.join(outside).exists(),
            "{outside} is visible in the jail"
        );
    }
    let mut top: Vec<String> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    top.sort();
    assert_eq!(top, ["dev", "proc", "tmp", "vsock"], "the jail's top level");
    // The vsock directory is mounted at /vsock, where the VMM made its socket.
    assert!(root.join("vsock/vsock.sock").exists());
    assert_eq!(status_field(pid, "Uid:"), "65534 65534 65534 65534");
    assert_eq!(status_field(pid, "Gid:"), "65534 65534 65534 65534");
    assert_eq!(status_field(pid, "Groups:"), "");
    assert_eq!(status_field(pid, "NoNewPrivs:"), "1");
    assert_eq!(status_field(pid, "Seccomp:"), "2");
    for kind in ["mnt", "pid", "ipc"] {
        assert_ne!(
            ns(&pid.to_string(), kind),
            ns("self", kind),
            "{kind} namespace"
        );
    }
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    assert!(
        limits.contains("Max open files            2048"),
        "{limits}"
    );
    assert!(
        limits.contains("Max file size             268435456"),
        "{limits}"
    );
    let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let name = vmm_api::jail::cgroup_name(&s.path("jail"));
    let line = cgroup
        .lines()
        .find(|l| l.contains("memory"))
        .unwrap_or_default();
    assert!(line.ends_with(&format!("/{name}")), "{cgroup}");
    let limit = std::fs::read_to_string(format!(
        "/sys/fs/cgroup/memory/{name}/memory.limit_in_bytes"
    ))
    .unwrap();
    assert_eq!(
        limit.trim().parse::<u64>().unwrap(),
        (16 + vmm_api::jail::VMM_OVERHEAD_MIB) << 20
    );
}

fn assert_nothing_left(s: &Scratch, inner: u32) {
    let name = vmm_api::jail::cgroup_name(&s.path("jail"));
    assert!(!Path::new("/sys/fs/cgroup/memory").join(&name).exists());
    let deadline = Instant::now() + Duration::from_secs(5);
    // Gone, or a zombie waiting for host init to reap it (its parent is gone).
    while Path::new(&format!("/proc/{inner}")).exists()
        && !status_field(inner, "State:").starts_with('Z')
    {
        assert!(Instant::now() < deadline, "the jailed VMM lives on");
        std::thread::sleep(Duration::from_millis(20));
    }
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!info.contains(s.0.to_str().unwrap()), "a mount is left");
    let left: Vec<_> = std::fs::read_dir(s.path("jail")).unwrap().collect();
    assert!(
        left.is_empty(),
        "the jail directory is not empty on the host"
    );
}

fn jail_args(s: &Scratch) -> Vec<String> {
    vec!["--jail".into(), s.path("jail").display().to_string()]
}

#[test]
fn a_jailed_vmm_sees_only_its_jail_and_leaves_nothing() {
    if !Path::new("/sys/fs/cgroup/memory/memory.limit_in_bytes").exists() {
        panic!("this test reads the cgroup v1 memory controller, which this host lacks");
    }
    let s = Scratch::new("jail");
    let args = jail_args(&s);
    let mut vmm = spawn(&s, &args.iter().map(String::as_str).collect::<Vec<_>>());
    let mut api = connect(&mut vmm, &s.path("api.sock"));
    let inner = inner_pid(vmm.id());
    // The VM runs while jailed (the pause needs every vCPU thread to answer).
    api.pause().unwrap();
    api.resume().unwrap();
    assert_jailed(inner, &s);
    api.stop().unwrap();
    assert_eq!(wait(&mut vmm, 30).code(), Some(0));
    std::thread::sleep(Duration::from_millis(100));
    assert_nothing_left(&s, inner);

    // A SIGKILL of the outer process takes the jailed VMM with it; its cgroup goes with
    // the cleaner's `remove_cgroup`.
    let mut vmm = spawn(&s, &args.iter().map(String::as_str).collect::<Vec<_>>());
    connect(&mut vmm, &s.path("api.sock"));
    let inner = inner_pid(vmm.id());
    vmm.kill().unwrap();
    assert_eq!(wait(&mut vmm, 10).signal(), Some(libc::SIGKILL));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !vmm_api::jail::remove_cgroup(&s.path("jail")) {
        assert!(Instant::now() < deadline, "the cgroup stays busy");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_nothing_left(&s, inner);
}

#[test]
fn a_jailed_vmm_killed_by_its_filter_is_reported_as_such() {
    let s = Scratch::new("jailsigsys");
    let mut args = jail_args(&s);
    args.extend(["--seccomp-selftest".into(), "vcpu".into()]);
    let mut vmm = spawn(&s, &args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(wait(&mut vmm, 30).signal(), Some(libc::SIGSYS));
}
