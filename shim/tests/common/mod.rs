//! The e2e tests' containerd: Debian's containerd 1.6 started by the test with its own
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

/// A containerd of the test's own.
pub struct Containerd {
    child: Option<Child>,
    pub dir: PathBuf,
    pub sock: PathBuf,
    /// Where the shim keeps the pods' VM state (`$SANDBOX_VM_SHIM_ROOT`).
    pub vm_root: PathBuf,
    pub log: PathBuf,
}

fn config(dir: &Path) -> String {
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

/// The directory of containerd 2.1.x's `containerd` and `ctr`: `$SANDBOX_VM_CONTAINERD_2_1`.
pub fn containerd_2_1_dir() -> PathBuf {
    let dir = std::env::var_os("SANDBOX_VM_CONTAINERD_2_1").map(PathBuf::from);
    match dir {
        Some(d) if d.join("containerd").is_file() && d.join("ctr").is_file() => d,
        _ => panic!(
            "cannot run this e2e test: $SANDBOX_VM_CONTAINERD_2_1 does not name a directory with containerd 2.1.x and ctr"
        ),
    }
}

/// CNI config of a containerd without pod networks: loopback only (containerd 1.6 refuses
/// its result for a pod network; the tests' pods use the node network).
const LOOPBACK_CONFLIST: &str =
    r#"{"cniVersion": "0.4.0", "name": "lo-only", "plugins": [{"type": "loopback"}]}"#;

impl Containerd {
    /// Starts containerd in a fresh directory and waits for its socket.
    pub fn start(tag: &str) -> Containerd {
        Self::launch(tag, None, |_| LOOPBACK_CONFLIST.to_string())
    }

    /// Starts containerd inside the network namespace at `netns` (`nsenter --net`, which
    /// keeps the host's mounts, cgroups included), with the CNI network list
    /// `conflist(dir)` (`dir`: the test's directory, for the plugins' state): the pods'
    /// networks and all their traffic stay in that namespace.
    pub fn start_in_netns(
        tag: &str,
        netns: &Path,
        conflist: impl FnOnce(&Path) -> String,
    ) -> Containerd {
        Self::launch(tag, Some(netns), conflist)
    }

    /// [`Containerd::start_in_netns`] with containerd 2.1.x ([`containerd_2_1_dir`]) and
    /// its `version = 3` config, `runtime_extra` in the `sandbox-vm` runtime's table.
    pub fn start_2_1_in_netns(
        tag: &str,
        netns: &Path,
        conflist: impl FnOnce(&Path) -> String,
        runtime_extra: &str,
    ) -> Containerd {
        let bin = containerd_2_1_dir().join("containerd");
        let config = |dir: &Path| config_v3(dir, runtime_extra);
        Self::launch_with(tag, Some(netns), conflist, &bin, config)
    }

    fn launch(
        tag: &str,
        netns: Option<&Path>,
        conflist: impl FnOnce(&Path) -> String,
    ) -> Containerd {
        Self::launch_with(tag, netns, conflist, Path::new("containerd"), config)
    }

    fn launch_with(
        tag: &str,
        netns: Option<&Path>,
        conflist: impl FnOnce(&Path) -> String,
        containerd: &Path,
        config: impl FnOnce(&Path) -> String,
    ) -> Containerd {
        let dir = PathBuf::from(format!("/tmp/shim-e2e-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for sub in ["bin", "cni", "vms", "logs"] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
        }
        std::os::unix::fs::symlink(SHIM, dir.join("bin/containerd-shim-sandbox-vm-v2")).unwrap();
        std::fs::write(dir.join("cni/10-test.conflist"), conflist(&dir)).unwrap();
        std::fs::write(dir.join("config.toml"), config(&dir)).unwrap();
        let path = format!(
            "{}:{}",
            dir.join("bin").display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let log = dir.join("containerd.log");
        // nsenter execs containerd: the child is containerd itself.
        let mut cmd = match netns {
            Some(ns) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net={}", ns.display())).arg(containerd);
                c
            }
            None => Command::new(containerd),
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
            .expect("cannot start containerd");
        let c = Containerd {
            child: Some(child),
            sock: dir.join("containerd.sock"),
            vm_root: dir.join("vms"),
            log,
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !c.ctr("default", &["version"]).status.success() {
            assert!(
                Instant::now() < deadline,
                "containerd did not come up: {}",
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

    /// `ctr --address SOCK -n NS ARGS`.
    pub fn ctr(&self, ns: &str, args: &[&str]) -> Output {
        run(Command::new("ctr")
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

/// A bridge network as a cluster's simplest CNI config gives it: the bridge is the pods'
/// gateway, host-local hands out addresses (its state in the test's directory `dir`).
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
