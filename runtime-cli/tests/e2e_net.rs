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

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use test_support::artifacts::with_guest;
use test_support::cmd::{run_ok, KillOnDrop};
use test_support::netns::{fetch, link_names, TestNetns};
use test_support::podman::PodmanImage;
use test_support::rootfs::{add_applets, busybox_bundle, edit_config, BUNDLE_APPLETS};
use test_support::runtime::{oci_command, Reap};
use test_support::{ok, wait_for, TempDir};

const BIN: &str = env!("CARGO_BIN_EXE_sandbox-vm");

fn scratch(name: &str) -> TempDir {
    TempDir::named(&format!("svm-e2e-{name}"))
}

/// `python3 -m http.server` on `addr:port` in `ns`, serving a directory with `hello.txt`;
/// killed when dropped.
fn http_server(ns: &TestNetns, dir: &Path, addr: &str, port: u16, body: &str) -> KillOnDrop {
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
    let server = KillOnDrop(child);
    let url = format!("http://{addr}:{port}/hello.txt");
    wait_for(Duration::from_secs(20), "the test's HTTP server", || {
        fetch(ns, &url).as_deref() == Some(body)
    });
    server
}

fn runtime(root: &Path) -> Command {
    oci_command(BIN, root)
}

/// Sets the bundle's network namespace to `path`.
fn set_netns(bundle: &Path, path: &str) {
    edit_config(bundle, |c| {
        let nss = c["linux"]["namespaces"].as_array_mut().unwrap();
        nss.retain(|n| n["type"] != "network");
        nss.push(serde_json::json!({"type": "network", "path": path}));
    });
}

/// Links, qdiscs and ingress filters of a netns: what teardown must restore.
fn snapshot(ns: &str) -> String {
    let mut s = run_ok(&["ip", "-n", ns, "-o", "link", "show"]);
    s += &run_ok(&["tc", "-n", ns, "qdisc", "show"]);
    s += &run_ok(&["tc", "-n", ns, "filter", "show", "dev", "eth0", "ingress"]);
    s
}

#[test]
fn a_missing_netns_is_one_clear_error_at_create() {
    let dir = scratch("netns-missing");
    let b = busybox_bundle(BIN, &dir.join("bundle"), &["true"]);
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
    let (p, q) = (pod.name(), peer.name());
    run_ok(&[
        "ip", "-n", p, "link", "add", "eth0", "mtu", "1400", "type", "veth", "peer", "name",
        "peer0", "netns", q,
    ]);
    run_ok(&["ip", "-n", p, "addr", "add", "10.231.7.2/24", "dev", "eth0"]);
    run_ok(&["ip", "-n", p, "link", "set", "eth0", "up"]);
    run_ok(&[
        "ip",
        "-n",
        p,
        "route",
        "add",
        "default",
        "via",
        "10.231.7.1",
    ]);
    run_ok(&[
        "ip",
        "-n",
        q,
        "addr",
        "add",
        "10.231.7.1/24",
        "dev",
        "peer0",
    ]);
    run_ok(&["ip", "-n", q, "link", "set", "peer0", "up"]);
    let _http = http_server(&peer, &dir, "10.231.7.1", 8088, "hello from the peer\n");
    let before = snapshot(p);

    let b = busybox_bundle(
        BIN,
        &dir.join("bundle"),
        &[
            "sh",
            "-c",
            "ip -o -4 addr show eth0; ip -o link show eth0; ip route; \
             wget -q -O - http://10.231.7.1:8088/hello.txt; echo fetched; sleep 1000",
        ],
    );
    add_applets(&b.join("rootfs"), &["ip", "wget"]);
    set_netns(&b, pod.path().to_str().unwrap());
    let root = dir.join("root");
    let id = "net-oci";
    let _reap = Reap::new(BIN, &root, id);
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
    let f = run_ok(&["tc", "-n", p, "filter", "show", "dev", "eth0", "ingress"]);
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
        run_ok(&["ip", "-n", p, "-o", "link", "show"]).contains("tap_svm0"),
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

/// podman inside `ns`, with sandbox-vm as its runtime.
fn podman(ns: &TestNetns) -> Command {
    let mut c = ns.cmd("podman");
    with_guest(&mut c)
        .arg("--runtime")
        .arg(BIN)
        .stdin(Stdio::null());
    c
}

#[test]
fn podman_bridge_network_in_a_test_netns() {
    if Command::new("podman").arg("--version").output().is_err() {
        panic!("podman is not installed (apt-get install podman)");
    }
    let ns = TestNetns::new("podman");
    let img = PodmanImage::import(
        "sandbox-vm-e2e-net",
        &[BUNDLE_APPLETS, &["ip", "wget", "httpd"]].concat(),
        |rootfs| {
            std::fs::create_dir_all(rootfs.join("www")).unwrap();
            std::fs::write(rootfs.join("www/index.html"), "served from the guest\n").unwrap();
        },
    );
    let _http = http_server(
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
