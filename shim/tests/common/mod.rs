//! The e2e tests' containerd: Debian's containerd 1.6, or 1.7 / 2.1 from
//! `scripts/fetch-containerd.sh` ([`Version`]), started by the test with its own
//! root, state, sockets, config and PATH (holding this build's shim), images imported from
//! a docker-archive tar made here from busybox-static, and the checks that nothing is left
//! behind. Anything missing fails the test with the reason.

#![allow(dead_code)]

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use test_support::cmd::{poll_until, which};
use test_support::host::{mounts_mentioning, processes};
use test_support::{run, text};

/// The shim under test.
pub const SHIM: &str = env!("CARGO_BIN_EXE_containerd-shim-sandbox-vm-v2");
/// The runtime type.
pub const RUNTIME: &str = "io.containerd.sandbox-vm.v2";
/// The images the tar holds.
pub const BUSYBOX: &str = "localhost/busybox:1";
pub const PAUSE: &str = "localhost/pause:1";

fn need(ok: bool, why: &str) {
    assert!(ok, "cannot run this e2e test: {why}");
}

/// Fails (never skips) unless the host has what the test needs.
pub fn require_host() {
    need(nix::unistd::geteuid().is_root(), "it must run as root");
    need(Path::new("/dev/kvm").exists(), "/dev/kvm is missing");
    for bin in ["containerd", "ctr"] {
        need(
            which(bin).is_some(),
            &format!("{bin} is not installed (apt-get install containerd)"),
        );
    }
    need(
        Path::new("/bin/busybox").is_file(),
        "/bin/busybox is missing (apt-get install busybox-static)",
    );
}

/// The VMM binary the shim runs (`sandbox-vm-vmm`): `$SANDBOX_VM_VMM`, else the newer of
/// this target directory's debug and release builds.
pub fn vmm_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("SANDBOX_VM_VMM") {
        return PathBuf::from(p);
    }
    let target = Path::new(SHIM)
        .parent()
        .and_then(Path::parent)
        .expect("target dir");
    let mtime = |p: &Path| p.metadata().and_then(|m| m.modified()).ok();
    let found = ["debug", "release"]
        .iter()
        .map(|p| target.join(p).join("sandbox-vm-vmm"))
        .filter_map(|p| mtime(&p).map(|t| (t, p)))
        .max();
    match found {
        Some((_, p)) => p,
        None => panic!(
            "cannot run this e2e test: no sandbox-vm-vmm binary in {} (cargo build -p vmm, or set SANDBOX_VM_VMM)",
            target.display()
        ),
    }
}

fn sh(script: &str) {
    let out = run(Command::new("sh").arg("-ec").arg(script));
    assert!(out.status.success(), "{script}: {}", text(&out.stderr));
}

/// The CRI client's package, pinned.
const CRI_API: &str = "container-runtime-interface-api==2.0.1";

/// A venv with the CRI client, made once per target directory (pip needs the network the
/// first time; without it the test fails saying so).
pub fn venv_python() -> PathBuf {
    let target = Path::new(SHIM)
        .parent()
        .and_then(Path::parent)
        .expect("target dir");
    let venv = target.join("cri-venv");
    let python = venv.join("bin/python");
    let ready = |p: &Path| {
        Command::new(p)
            .args(["-c", "import cri_api.v1.api_pb2_grpc, grpc"])
            .status()
            .is_ok_and(|s| s.success())
    };
    if ready(&python) {
        return python;
    }
    let out = run(Command::new("python3").arg("-m").arg("venv").arg(&venv));
    assert!(
        out.status.success(),
        "cannot run this e2e test: python3 -m venv failed (apt-get install python3-venv): {}",
        text(&out.stderr)
    );
    let out = run(Command::new(venv.join("bin/pip")).args(["install", "-q", CRI_API]));
    assert!(
        out.status.success(),
        "cannot run this e2e test: pip install {CRI_API} failed: {}",
        text(&out.stderr)
    );
    assert!(
        ready(&python),
        "cannot run this e2e test: the CRI client does not import"
    );
    python
}

/// A docker-archive tar with two images on one busybox layer: `BUSYBOX` (`sh`) and
/// `PAUSE` (sleeps forever, CRI's sandbox image).
pub fn build_images(dir: &Path) -> PathBuf {
    let d = dir.join("image");
    test_support::rootfs::busybox_rootfs(
        &d.join("rootfs"),
        &[
            "sh", "cat", "echo", "uname", "sleep", "head", "ls", "true", "ps", "dd",
        ],
    );
    sh(&format!(
        "cd {d}; tar --numeric-owner --owner=0 --group=0 -C rootfs -cf layer.tar .",
        d = d.display()
    ));
    let digest = |f: &Path| -> String {
        let out = run(Command::new("sha256sum").arg(f));
        text(&out.stdout)
            .split_whitespace()
            .next()
            .unwrap()
            .to_string()
    };
    let layer = digest(&d.join("layer.tar"));
    let mut manifest = Vec::new();
    for (name, cmd) in [(BUSYBOX, vec!["sh"]), (PAUSE, vec!["sleep", "2147483647"])] {
        let config = serde_json::json!({
            "architecture": "amd64",
            "os": "linux",
            "config": {"Cmd": cmd, "Env": ["PATH=/bin"]},
            "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{layer}")]},
        });
        let tmp = d.join("config.tmp");
        std::fs::write(&tmp, serde_json::to_vec(&config).unwrap()).unwrap();
        let cfg = format!("{}.json", digest(&tmp));
        std::fs::rename(&tmp, d.join(&cfg)).unwrap();
        manifest.push(serde_json::json!({
            "Config": cfg, "RepoTags": [name], "Layers": ["layer.tar"],
        }));
    }
    std::fs::write(
        d.join("manifest.json"),
        serde_json::to_vec(&manifest).unwrap(),
    )
    .unwrap();
    sh(&format!(
        "cd {d}; tar -cf ../images.tar manifest.json *.json layer.tar",
        d = d.display()
    ));
    dir.join("images.tar")
}

/// The containerd versions the e2e tests run against: Debian 12's own (1.6.20, on PATH)
/// and those `scripts/fetch-containerd.sh` unpacks into a private prefix (trixie's 1.7.24,
/// sid's 2.1.x), found through `$SANDBOX_VM_CONTAINERD_1_7` / `$SANDBOX_VM_CONTAINERD_2_1`
/// (the directories holding `containerd` and `ctr`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    V1_6,
    V1_7,
    V2_1,
}

impl Version {
    pub const ALL: [Version; 3] = [Version::V1_6, Version::V1_7, Version::V2_1];

    /// "1.6", "1.7", "2.1".
    pub fn name(self) -> &'static str {
        match self {
            Version::V1_6 => "1.6",
            Version::V1_7 => "1.7",
            Version::V2_1 => "2.1",
        }
    }

    /// The directory holding this version's `containerd`, `ctr` and
    /// `containerd-shim-runc-v2`; fails the test when it is not there.
    pub fn bin_dir(self) -> PathBuf {
        let var = match self {
            Version::V1_6 => {
                let bin = which("containerd").expect("containerd is on PATH (require_host)");
                return bin.parent().expect("containerd's directory").to_path_buf();
            }
            Version::V1_7 => "SANDBOX_VM_CONTAINERD_1_7",
            Version::V2_1 => "SANDBOX_VM_CONTAINERD_2_1",
        };
        let dir = std::env::var_os(var).map(PathBuf::from);
        match dir {
            Some(d) if d.join("containerd").is_file() && d.join("ctr").is_file() => d,
            _ => panic!(
                "cannot run this e2e test: ${var} does not name a directory with containerd {} and ctr (eval \"$(scripts/fetch-containerd.sh)\")",
                self.name()
            ),
        }
    }

    /// The config's schema: `version = 3` (CRI split into `io.containerd.cri.v1.runtime`
    /// and `io.containerd.cri.v1.images`) for 2.x, `version = 2` before.
    pub fn config_version(self) -> u32 {
        match self {
            Version::V1_6 | Version::V1_7 => 2,
            Version::V2_1 => 3,
        }
    }
}

/// How a test's containerd is set up beyond its version (`Setup::default()`: Debian's
/// 1.6, the host's network namespace, nothing extra).
#[derive(Clone, Debug)]
pub struct Setup {
    pub version: Version,
    /// Run containerd in this network namespace (`nsenter --net`).
    pub netns: Option<PathBuf>,
    /// TOML lines added to the `sandbox-vm` runtime's table (e.g. `sandboxer = "shim"`).
    pub runtime_extra: String,
}

impl Default for Setup {
    fn default() -> Setup {
        Setup {
            version: Version::V1_6,
            netns: None,
            runtime_extra: String::new(),
        }
    }
}

/// A containerd of the test's own.
pub struct Containerd {
    child: Option<Child>,
    pub version: Version,
    /// Where this version's `containerd` and `ctr` are.
    pub bin_dir: PathBuf,
    pub dir: PathBuf,
    pub sock: PathBuf,
    /// Where the shim keeps the pods' VM state (`$SANDBOX_VM_SHIM_ROOT`).
    pub vm_root: PathBuf,
    pub log: PathBuf,
}

/// The config of a 1.x containerd (`version = 2`).
fn config_v2(dir: &Path, runtime_extra: &str) -> String {
    format!(
        r#"version = 2
root = "{d}/root"
state = "{d}/state"
[grpc]
  address = "{d}/containerd.sock"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE}"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    default_runtime_name = "runc"
    snapshotter = "overlayfs"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.sandbox-vm]
      runtime_type = "{RUNTIME}"
      pod_annotations = ["io.sandbox-vm.*"]
      {runtime_extra}
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{d}/cni"
"#,
        d = dir.display()
    )
}

/// The config of a 2.x containerd (`version = 3`) with `runtime_extra` in the
/// `sandbox-vm` runtime's table (e.g. `sandboxer = "shim"`). NRI is off: its socket is a
/// host-wide path that containerds of other tests would share.
fn config_v3(dir: &Path, runtime_extra: &str) -> String {
    format!(
        r#"version = 3
root = "{d}/root"
state = "{d}/state"
[grpc]
  address = "{d}/containerd.sock"
[plugins.'io.containerd.cri.v1.images']
  snapshotter = "overlayfs"
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = "{PAUSE}"
[plugins.'io.containerd.cri.v1.runtime']
  [plugins.'io.containerd.cri.v1.runtime'.containerd]
    default_runtime_name = "runc"
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.sandbox-vm]
      runtime_type = "{RUNTIME}"
      pod_annotations = ["io.sandbox-vm.*"]
      {runtime_extra}
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dirs = ["/usr/lib/cni"]
    conf_dir = "{d}/cni"
[plugins.'io.containerd.nri.v1.nri']
  disable = true
"#,
        d = dir.display()
    )
}

fn config(dir: &Path, setup: &Setup) -> String {
    match setup.version.config_version() {
        2 => config_v2(dir, &setup.runtime_extra),
        _ => config_v3(dir, &setup.runtime_extra),
    }
}

/// CNI config of a containerd without pod networks: loopback only (containerd 1.6 refuses
/// its result for a pod network; the tests' pods use the node network).
const LOOPBACK_CONFLIST: &str =
    r#"{"cniVersion": "0.4.0", "name": "lo-only", "plugins": [{"type": "loopback"}]}"#;

impl Containerd {
    /// Starts containerd 1.6 in a fresh directory and waits for its socket.
    pub fn start(tag: &str) -> Containerd {
        Self::launch(tag, Setup::default(), |_| LOOPBACK_CONFLIST.to_string())
    }

    /// Starts containerd 1.6 inside the network namespace at `netns` (`nsenter --net`,
    /// which keeps the host's mounts, cgroups included), with the CNI network list
    /// `conflist(dir)` (`dir`: the test's directory, for the plugins' state): the pods'
    /// networks and all their traffic stay in that namespace.
    pub fn start_in_netns(
        tag: &str,
        netns: &Path,
        conflist: impl FnOnce(&Path) -> String,
    ) -> Containerd {
        let setup = Setup {
            netns: Some(netns.to_path_buf()),
            ..Setup::default()
        };
        Self::launch(tag, setup, conflist)
    }

    /// Starts the containerd `setup` describes, with the CNI network list `conflist(dir)`.
    pub fn launch(tag: &str, setup: Setup, conflist: impl FnOnce(&Path) -> String) -> Containerd {
        let bin_dir = setup.version.bin_dir();
        let dir = PathBuf::from(format!("/tmp/shim-e2e-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for sub in ["bin", "cni", "vms", "logs"] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
        }
        std::os::unix::fs::symlink(SHIM, dir.join("bin/containerd-shim-sandbox-vm-v2")).unwrap();
        std::fs::write(dir.join("cni/10-test.conflist"), conflist(&dir)).unwrap();
        std::fs::write(dir.join("config.toml"), config(&dir, &setup)).unwrap();
        // This version's own runc shim first, then ours.
        let path = format!(
            "{}:{}:{}",
            bin_dir.display(),
            dir.join("bin").display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let log = dir.join("containerd.log");
        let containerd = bin_dir.join("containerd");
        // nsenter execs containerd: the child is containerd itself.
        let mut cmd = match &setup.netns {
            Some(ns) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net={}", ns.display())).arg(&containerd);
                c
            }
            None => Command::new(&containerd),
        };
        let child = cmd
            .arg("--config")
            .arg(dir.join("config.toml"))
            .arg("--log-level")
            .arg("info")
            .env("PATH", path)
            .env("SANDBOX_VM_SHIM_ROOT", dir.join("vms"))
            .env("SANDBOX_VM_VMM", vmm_bin())
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::options().append(true).open(&log).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", containerd.display()));
        let c = Containerd {
            child: Some(child),
            version: setup.version,
            bin_dir,
            sock: dir.join("containerd.sock"),
            vm_root: dir.join("vms"),
            log,
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !c.ctr("default", &["version"]).status.success() {
            assert!(
                Instant::now() < deadline,
                "containerd {} did not come up: {}",
                c.version.name(),
                c.log_tail()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        c
    }

    /// Stops containerd (SIGTERM, as systemd does) with its shims left running, and starts
    /// it again as it was (same command line, environment and network namespace: same
    /// root, state and config); waits for its socket.
    pub fn restart(&mut self) {
        let mut old = self.child.take().expect("containerd is running");
        let pid = old.id();
        let proc_file = |f: &str| std::fs::read(format!("/proc/{pid}/{f}")).unwrap();
        let split = |b: Vec<u8>| -> Vec<String> {
            b.split(|c| *c == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect()
        };
        let argv = split(proc_file("cmdline"));
        let env = split(proc_file("environ"));
        let netns = std::fs::File::open(format!("/proc/{pid}/ns/net")).unwrap();
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        assert!(
            poll_until(Duration::from_secs(30), Duration::from_millis(100), || {
                old.try_wait().ok().flatten().is_some()
            }),
            "containerd did not stop on SIGTERM"
        );
        let log = || {
            std::fs::File::options()
                .append(true)
                .open(&self.log)
                .unwrap()
        };
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..])
            .env_clear()
            .envs(env.iter().filter_map(|kv| kv.split_once('=')))
            .stdin(Stdio::null())
            .stdout(log())
            .stderr(log());
        let fd = std::os::fd::AsRawFd::as_raw_fd(&netns);
        // SAFETY: setns is async-signal-safe and `fd` (the old containerd's network
        // namespace) stays open in the parent until spawn returns.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || {
                if libc::setns(fd, libc::CLONE_NEWNET) == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
        }
        self.child = Some(cmd.spawn().expect("cannot start containerd again"));
        drop(netns);
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.ctr("default", &["version"]).status.success() {
            assert!(
                Instant::now() < deadline,
                "containerd did not come up again: {}",
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn log_tail(&self) -> String {
        let t = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = t.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// `ctr --address SOCK -n NS ARGS`, with this version's `ctr`.
    pub fn ctr(&self, ns: &str, args: &[&str]) -> Output {
        run(Command::new(self.bin_dir.join("ctr"))
            .arg("--address")
            .arg(&self.sock)
            .arg("-n")
            .arg(ns)
            .args(args))
    }

    /// Imports the test images into namespace `ns`.
    pub fn import_images(&self, ns: &str) {
        let tar = build_images(&self.dir);
        let out = self.ctr(ns, &["image", "import", tar.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "ctr image import: {}",
            text(&out.stderr)
        );
    }

    /// Runs the CRI client script `tests/<script>` with `python` (see [`venv_python`])
    /// against this containerd: its arguments are the socket, the CRI log directory, the VM
    /// state root, the busybox image and then `extra`. Passes its stderr on, prints its
    /// stdout and returns it; fails the test with the containerd log if it failed.
    pub fn run_cri_script(
        &self,
        python: &Path,
        script: &str,
        extra: &[&OsStr],
        what: &str,
    ) -> String {
        let script = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests")
            .join(script);
        let out = run(Command::new(python)
            .arg(&script)
            .arg(&self.sock)
            .arg(self.dir.join("logs"))
            .arg(&self.vm_root)
            .arg(BUSYBOX)
            .args(extra));
        eprintln!("{}", text(&out.stderr));
        let stdout = text(&out.stdout);
        println!("{stdout}");
        assert!(
            out.status.success(),
            "{what} failed\ncontainerd log:\n{}",
            self.log_tail()
        );
        stdout
    }

    /// What the shims of this containerd left: processes (shims, VMMs, virtiofsd), mounts
    /// and VM state directories.
    pub fn leftovers(&self) -> Vec<String> {
        let mut left = Vec::new();
        let vm_root = format!("{}/", self.vm_root.display());
        for (pid, cmd) in processes() {
            let ours = cmd.contains(&vm_root)
                || (cmd.contains("containerd-shim-sandbox-vm-v2")
                    && cmd.contains(self.sock.to_str().unwrap()));
            if ours {
                left.push(format!("process {pid}: {cmd}"));
            }
        }
        for m in mounts_mentioning(self.dir.to_str().unwrap()) {
            left.push(format!("mount: {m}"));
        }
        for ns in std::fs::read_dir(&self.vm_root)
            .into_iter()
            .flatten()
            .flatten()
        {
            for pod in std::fs::read_dir(ns.path()).into_iter().flatten().flatten() {
                left.push(format!("state directory {}", pod.path().display()));
            }
        }
        left
    }

    /// Waits up to `timeout` for nothing to be left behind; returns what still is.
    pub fn wait_clean(&self, timeout: Duration) -> Vec<String> {
        poll_until(timeout, Duration::from_millis(200), || {
            self.leftovers().is_empty()
        });
        self.leftovers()
    }
}

impl Drop for Containerd {
    /// Stops containerd, kills whatever a failed test left, unmounts and removes the
    /// directory.
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let deadline = Instant::now() + Duration::from_secs(10);
            while c.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        for l in self.leftovers() {
            if let Some(pid) = l.strip_prefix("process ").and_then(|r| r.split(':').next()) {
                let _ = Command::new("kill").args(["-9", pid]).status();
            }
        }
        std::thread::sleep(Duration::from_millis(500));
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let dir = self.dir.to_str().unwrap().to_string();
        let mut points: Vec<&str> = mounts
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|p| p.starts_with(&dir))
            .collect();
        points.sort_by_key(|p| std::cmp::Reverse(p.len()));
        for p in points {
            let _ = nix::mount::umount2(p, nix::mount::MntFlags::MNT_DETACH);
        }
        if std::env::var_os("SHIM_E2E_KEEP").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// A bridge network as a cluster's simplest CNI config gives it: bridge `bridge` is the
/// pods' gateway, host-local hands out addresses of `subnet` (its state under `dir`).
pub fn bridge_conflist(
    dir: &Path,
    network: &str,
    bridge: &str,
    subnet: &str,
    gateway: &str,
) -> String {
    serde_json::json!({
        "cniVersion": "0.4.0",
        "name": network,
        "plugins": [{
            "type": "bridge",
            "bridge": bridge,
            "isGateway": true,
            "ipMasq": false,
            "ipam": {
                "type": "host-local",
                "ranges": [[{"subnet": subnet, "gateway": gateway}]],
                "routes": [{"dst": "0.0.0.0/0"}],
                "dataDir": dir.join("ipam"),
            },
        }],
    })
    .to_string()
}

/// Fails the test unless the host has the CNI plugins the bridge network needs.
pub fn require_cni() {
    for plugin in ["bridge", "host-local", "loopback"] {
        need(
            Path::new("/usr/lib/cni").join(plugin).is_file(),
            &format!(
                "/usr/lib/cni/{plugin} is missing (apt-get install containernetworking-plugins)"
            ),
        );
    }
}

/// Names in a directory (empty if it does not exist).
fn names(dir: &str) -> Vec<String> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

/// A pod network test's end: nothing of the pods `pod_ids` (with netns `pod_netns`) is
/// left — no shim, VMM or virtiofsd, mount or state, no veth or tap beside `bridge` in
/// `ns`, no CNI cache entry; then containerd is stopped, no process is left in `ns`, and
/// `ns` is deleted with the pods' netns gone too.
pub fn assert_pod_network_clean(
    c: Containerd,
    ns: &test_support::netns::TestNetns,
    bridge: &str,
    pod_netns: &[&str],
    pod_ids: &[&str],
) {
    let left = c.wait_clean(Duration::from_secs(30));
    assert!(
        left.is_empty(),
        "left behind after RemovePodSandbox: {left:#?}"
    );
    assert_eq!(
        ns.links(),
        ["lo", bridge],
        "only the CNI bridge stays in the test netns (no veth, no tap)"
    );
    let cache: Vec<String> = names("/var/lib/cni/results")
        .into_iter()
        .filter(|n| pod_ids.iter().any(|id| n.contains(id)))
        .collect();
    assert!(cache.is_empty(), "CNI cache entries left: {cache:?}");
    drop(c);
    let inside = ns.processes();
    assert!(
        inside.is_empty(),
        "processes left in the test netns: {inside:#?}"
    );
    let out = run(Command::new("ip").args(["netns", "del", ns.name()]));
    assert!(out.status.success(), "ip netns del: {}", text(&out.stderr));
    for p in pod_netns
        .iter()
        .copied()
        .chain([ns.path().to_str().unwrap()])
    {
        assert!(!Path::new(p).exists(), "netns {p} is left");
    }
}

/// The strings of the JSON array `v[key]`.
pub fn json_strs<'a>(v: &'a serde_json::Value, key: &str) -> Vec<&'a str> {
    v[key]
        .as_array()
        .unwrap_or_else(|| panic!("no {key} in {v}"))
        .iter()
        .filter_map(|p| p.as_str())
        .collect()
}
