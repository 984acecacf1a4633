//! Pod networking end to end (Kata's tcfilter model), with the real guest kernel and agent.
//! Every address used lives in network namespaces the test creates; nothing leaves them.
//!
//! - `oci_container_in_a_pod_netns_...` (one boot): a "pod" netns as CNI would leave it
//!   (veth `eth0`, address, MTU 1400, default route) and a "peer" netns with the gateway and
//!   an HTTP server. The container fetches the page through its default gateway; then the
//!   monitor and the VMM are SIGKILLed and `delete` still removes the tap and the filters,
//!   leaving the pod netns as it was.
//! - `podman_bridge_network_in_a_test_netns` (four boots): podman with its default bridge
//!   network, run inside a netns the test makes (`nsenter --net`, so the bridge and all
//!   traffic stay there): the container fetches a page from the test's HTTP server through
//!   its default gateway; `-p 18080:80` reaches busybox httpd in the container;
//!   `--network none` and `--network host` give loopback only.
//! - `a_missing_netns_is_one_clear_error_at_create` (no boot).
//!
//! Needs root, /dev/kvm, podman, python3 (the HTTP server), the guest kernel and images.

#[path = "common/bundle.rs"]
mod bundle;
mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A scratch directory, removed when dropped.
struct Scratch(PathBuf);

impl std::ops::Deref for Scratch {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn scratch(name: &str) -> Scratch {
    let d = std::env::temp_dir().join(format!("svm-e2e-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    Scratch(d)
}

fn ok(out: Output, what: &str) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{what}: {:?}\nstdout: {stdout}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn sh(args: &[&str]) -> String {
    ok(
        Command::new(args[0]).args(&args[1..]).output().unwrap(),
        &args.join(" "),
    )
}

/// A network namespace of the test's own, deleted on drop.
struct TestNetns(String);

impl TestNetns {
    fn new(name: &str) -> TestNetns {
        assert!(
            nix::unistd::geteuid().is_root(),
            "this test needs root (network namespaces)"
        );
        let n = format!("svm-{name}-{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &n]).output();
        sh(&["ip", "netns", "add", &n]);
        sh(&["ip", "-n", &n, "link", "set", "lo", "up"]);
        TestNetns(n)
    }

    fn path(&self) -> String {
        format!("/run/netns/{}", self.0)
    }

    /// A command run inside the netns (mounts and cgroups stay the host's).
    fn cmd(&self, prog: &str) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", self.path())).arg(prog);
        c
    }
}

impl Drop for TestNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

/// `python3 -m http.server` on `addr:port` in `ns`, serving a directory with `hello.txt`.
struct HttpServer(Child);

impl HttpServer {
    fn start(ns: &TestNetns, dir: &Path, addr: &str, port: u16, body: &str) -> HttpServer {
        let www = dir.join("www");
        std::fs::create_dir_all(&www).unwrap();
        std::fs::write(www.join("hello.txt"), body).unwrap();
        let child = ns
            .cmd("python3")
            .args([
                "-m",
                "http.server",
                &port.to_string(),
                "--bind",
                addr,
                "--directory",
            ])
            .arg(&www)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let server = HttpServer(child);
        let url = format!("http://{addr}:{port}/hello.txt");
        wait_for(Duration::from_secs(20), "the test's HTTP server", || {
            fetch(ns, &url).as_deref() == Some(body)
        });
        server
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// GET `url` from inside `ns`.
fn fetch(ns: &TestNetns, url: &str) -> Option<String> {
    let out = ns.cmd("curl").args(["-sf", "-m", "5", url]).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn wait_for(timeout: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Adds busybox applets to a bundle's rootfs.
fn add_applets(rootfs: &Path, applets: &[&str]) {
    for a in applets {
        let _ = std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(a));
    }
}

fn runtime(root: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_sandbox-vm"));
    c.env("SANDBOX_VM_KERNEL", common::kernel())
        .env(
            "SANDBOX_VM_AGENT_DISK",
            common::image("SANDBOX_VM_AGENT_DISK", "agent.ext4"),
        )
        .arg("--root")
        .arg(root);
    c
}

/// Sets the bundle's network namespace to `path`.
fn set_netns(bundle: &Path, path: &str) {
    let file = bundle.join("config.json");
    let mut c: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    let nss = c["linux"]["namespaces"].as_array_mut().unwrap();
    nss.retain(|n| n["type"] != "network");
    nss.push(serde_json::json!({"type": "network", "path": path}));
    std::fs::write(&file, serde_json::to_string_pretty(&c).unwrap()).unwrap();
}

/// Deletes the container however the test ends.
struct Reap<'a> {
    root: &'a Path,
    id: &'a str,
}

impl Drop for Reap<'_> {
    fn drop(&mut self) {
        let _ = Command::new(env!("CARGO_BIN_EXE_sandbox-vm"))
            .arg("--root")
            .arg(self.root)
            .args(["delete", "--force", self.id])
            .output();
    }
}

/// Links, qdiscs and ingress filters of a netns: what teardown must restore.
fn snapshot(ns: &str) -> String {
    let mut s = sh(&["ip", "-n", ns, "-o", "link", "show"]);
    s += &sh(&["tc", "-n", ns, "qdisc", "show"]);
    s += &sh(&["tc", "-n", ns, "filter", "show", "dev", "eth0", "ingress"]);
    s
}

#[test]
fn a_missing_netns_is_one_clear_error_at_create() {
    let dir = scratch("netns-missing");
    let b = bundle::busybox_bundle(&dir.join("bundle"), &["true"]);
    set_netns(&b, "/run/netns/svm-never-made");
    let root = dir.join("root");
    let out = runtime(&root)
        .args(["create", "--bundle"])
        .arg(&b)
        .arg("netns-missing")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("network namespace /run/netns/svm-never-made does not exist"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert!(!root.join("netns-missing").exists(), "nothing left behind");
}

#[test]
fn oci_container_in_a_pod_netns_reaches_its_gateway_and_delete_cleans_up_after_a_killed_vmm() {
    let dir = scratch("net-oci");
    let pod = TestNetns::new("pod");
    let peer = TestNetns::new("peer");
    let (p, q) = (pod.0.as_str(), peer.0.as_str());
    sh(&[
        "ip", "-n", p, "link", "add", "eth0", "mtu", "1400", "type", "veth", "peer", "name",
        "peer0", "netns", q,
    ]);
    sh(&["ip", "-n", p, "addr", "add", "10.231.7.2/24", "dev", "eth0"]);
    sh(&["ip", "-n", p, "link", "set", "eth0", "up"]);
    sh(&[
        "ip",
        "-n",
        p,
        "route",
        "add",
        "default",
        "via",
        "10.231.7.1",
    ]);
    sh(&[
        "ip",
        "-n",
        q,
        "addr",
        "add",
        "10.231.7.1/24",
        "dev",
        "peer0",
    ]);
    sh(&["ip", "-n", q, "link", "set", "peer0", "up"]);
    let _http = HttpServer::start(&peer, &dir, "10.231.7.1", 8088, "hello from the peer\n");
    let before = snapshot(p);

    let b = bundle::busybox_bundle(
        &dir.join("bundle"),
        &[
            "sh",
            "-c",
            "ip -o -4 addr show eth0; ip -o link show eth0; ip route; \
             wget -q -O - http://10.231.7.1:8088/hello.txt; echo fetched; sleep 1000",
        ],
    );
    add_applets(&b.join("rootfs"), &["ip", "wget"]);
    set_netns(&b, &pod.path());
    let root = dir.join("root");
    let id = "net-oci";
    let _reap = Reap { root: &root, id };
    let stdout_file = dir.join("stdout");
    ok(
        runtime(&root)
            .args(["create", "--bundle"])
            .arg(&b)
            .arg(id)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout_file).unwrap())
            .stderr(Stdio::inherit())
            .output()
            .unwrap(),
        "create",
    );
    ok(
        runtime(&root).args(["start", id]).output().unwrap(),
        "start",
    );
    wait_for(Duration::from_secs(120), "the container's fetch", || {
        std::fs::read_to_string(&stdout_file).is_ok_and(|s| s.contains("fetched"))
    });
    let out = std::fs::read_to_string(&stdout_file).unwrap();
    eprintln!("{out}");
    assert!(out.contains("inet 10.231.7.2/24"), "{out}");
    assert!(out.contains("mtu 1400"), "{out}");
    assert!(out.contains("default via 10.231.7.1 dev eth0"), "{out}");
    assert!(out.contains("hello from the peer"), "{out}");
    let f = sh(&["tc", "-n", p, "filter", "show", "dev", "eth0", "ingress"]);
    assert!(f.contains("Redirect to device tap_svm0"), "{f}");

    // Kill the monitor's process group (the monitor, the VMM, virtiofsd): nobody is left
    // to tear the network down but `delete`.
    let state: serde_json::Value = serde_json::from_str(&ok(
        runtime(&root).args(["state", id]).output().unwrap(),
        "state",
    ))
    .unwrap();
    let pid = state["pid"].as_i64().unwrap() as i32;
    nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGKILL).unwrap();
    wait_for(Duration::from_secs(10), "the monitor to die", || {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_err()
    });
    assert!(
        sh(&["ip", "-n", p, "-o", "link", "show"]).contains("tap_svm0"),
        "the persistent tap outlives the VMM"
    );
    ok(
        runtime(&root)
            .args(["delete", "--force", id])
            .output()
            .unwrap(),
        "delete",
    );
    assert_eq!(snapshot(p), before, "delete leaves the pod netns as it was");
}

/// A busybox image with `ip`, `wget`, `httpd` and `/www/index.html`, imported into podman.
struct Image {
    tag: String,
    /// Removed when the image is dropped.
    dir: Scratch,
}

impl Image {
    fn import(name: &str) -> Image {
        let dir = scratch(name);
        let b = bundle::busybox_bundle(&dir.join("bundle"), &["true"]);
        let rootfs = b.join("rootfs");
        add_applets(&rootfs, &["ip", "wget", "httpd"]);
        std::fs::create_dir_all(rootfs.join("www")).unwrap();
        std::fs::write(rootfs.join("www/index.html"), "served from the guest\n").unwrap();
        let tar = dir.join("rootfs.tar");
        sh(&[
            "tar",
            "-C",
            rootfs.to_str().unwrap(),
            "-cf",
            tar.to_str().unwrap(),
            ".",
        ]);
        let tag = format!("localhost/{name}");
        sh(&["podman", "import", "--quiet", tar.to_str().unwrap(), &tag]);
        Image { tag, dir }
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        let _ = Command::new("podman")
            .args(["rmi", "-f", &self.tag])
            .output();
    }
}

/// podman inside `ns`, with sandbox-vm as its runtime.
fn podman(ns: &TestNetns) -> Command {
    let mut c = ns.cmd("podman");
    c.env("SANDBOX_VM_KERNEL", common::kernel())
        .env(
            "SANDBOX_VM_AGENT_DISK",
            common::image("SANDBOX_VM_AGENT_DISK", "agent.ext4"),
        )
        .arg("--runtime")
        .arg(env!("CARGO_BIN_EXE_sandbox-vm"))
        .stdin(Stdio::null());
    c
}

/// The interfaces `ip -o link` lists.
fn link_names(out: &str) -> Vec<String> {
    out.lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_string())
        .collect()
}

#[test]
fn podman_bridge_network_in_a_test_netns() {
    if Command::new("podman").arg("--version").output().is_err() {
        panic!("podman is not installed (apt-get install podman)");
    }
    let ns = TestNetns::new("podman");
    let img = Image::import("sandbox-vm-e2e-net");
    let _http = HttpServer::start(
        &ns,
        &img.dir,
        "0.0.0.0",
        8089,
        "hello from the test netns\n",
    );

    // 1. The default gateway (podman's bridge, in our netns) reaches our HTTP server.
    let script = "ip -o -4 addr show eth0; set -- $(ip route show default); echo gw=$3; \
                  wget -q -O - http://$3:8089/hello.txt";
    let out = ok(
        podman(&ns)
            .args(["run", "--rm", &img.tag, "sh", "-c", script])
            .output()
            .unwrap(),
        "podman run (bridge)",
    );
    eprintln!("{out}");
    assert!(
        out.contains("inet 10.88."),
        "the bridge network's address: {out}"
    );
    assert!(out.contains("gw=10.88.0.1"), "{out}");
    assert!(out.contains("hello from the test netns"), "{out}");

    // 2. Port publishing: the test netns's port 18080 reaches httpd in the guest.
    let name = format!("svm-net-httpd-{}", std::process::id());
    struct Rm<'a>(&'a TestNetns, &'a str);
    impl Drop for Rm<'_> {
        fn drop(&mut self) {
            let _ = self.0.cmd("podman").args(["rm", "-f", self.1]).output();
        }
    }
    let _rm = Rm(&ns, &name);
    let httpd = ["httpd", "-f", "-p", "80", "-h", "/www"];
    ok(
        podman(&ns)
            .args(["run", "-d", "--name", &name, "-p", "18080:80", &img.tag])
            .args(httpd)
            .output()
            .unwrap(),
        "podman run -d -p",
    );
    let mut page = None;
    wait_for(Duration::from_secs(120), "the published port", || {
        page = fetch(&ns, "http://127.0.0.1:18080/index.html");
        page.is_some()
    });
    assert_eq!(page.as_deref(), Some("served from the guest\n"));
    ok(
        podman(&ns).args(["rm", "-f", &name]).output().unwrap(),
        "podman rm",
    );

    // 3. and 4. No pod network: loopback only.
    for mode in ["none", "host"] {
        let out = ok(
            podman(&ns)
                .args([
                    "run",
                    "--rm",
                    "--network",
                    mode,
                    &img.tag,
                    "ip",
                    "-o",
                    "link",
                ])
                .output()
                .unwrap(),
            &format!("podman run --network {mode}"),
        );
        assert_eq!(link_names(&out), ["lo"], "--network {mode}: {out}");
    }
}
