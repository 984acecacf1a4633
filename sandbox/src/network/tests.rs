//! Root only: real network namespaces made by the test (the setup uses `ip`/`tc`; the code
//! under test does not). All traffic stays inside them.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::process::Command;
use std::time::{Duration, Instant};

use super::*;

fn sh(args: &[&str]) -> String {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Two namespaces: `pod` (what CNI would give a pod: eth0 with an address, a default
/// route and an extra route; eth1 with its own ingress qdisc already) and `peer` (the far
/// ends of both veths, where the "gateway" lives). Deleted on drop.
struct TestNets {
    pod: String,
    peer: String,
}

impl TestNets {
    fn new(tag: &str) -> TestNets {
        assert!(
            nix::unistd::geteuid().is_root(),
            "this test needs root (network namespaces)"
        );
        let pod = format!("svm-{tag}-{}", std::process::id());
        let peer = format!("{pod}-p");
        let t = TestNets { pod, peer };
        let (pod, peer) = (t.pod.as_str(), t.peer.as_str());
        sh(&["ip", "netns", "add", pod]);
        sh(&["ip", "netns", "add", peer]);
        for (i, mtu) in [(0, "1400"), (1, "1500")] {
            let (eth, far) = (format!("eth{i}"), format!("peer{i}"));
            sh(&[
                "ip", "-n", pod, "link", "add", &eth, "mtu", mtu, "type", "veth", "peer", "name",
                &far, "netns", peer,
            ]);
            sh(&["ip", "-n", pod, "link", "set", &eth, "up"]);
            sh(&["ip", "-n", peer, "link", "set", &far, "up"]);
        }
        sh(&[
            "ip",
            "-n",
            pod,
            "addr",
            "add",
            "10.231.0.2/24",
            "dev",
            "eth0",
        ]);
        sh(&[
            "ip",
            "-n",
            peer,
            "addr",
            "add",
            "10.231.0.1/24",
            "dev",
            "peer0",
        ]);
        sh(&[
            "ip",
            "-n",
            pod,
            "addr",
            "add",
            "10.232.0.2/16",
            "dev",
            "eth1",
        ]);
        sh(&[
            "ip",
            "-n",
            pod,
            "route",
            "add",
            "default",
            "via",
            "10.231.0.1",
        ]);
        sh(&[
            "ip",
            "-n",
            pod,
            "route",
            "add",
            "192.168.77.0/24",
            "via",
            "10.232.0.1",
            "metric",
            "7",
        ]);
        sh(&["tc", "-n", pod, "qdisc", "add", "dev", "eth1", "ingress"]);
        t
    }

    fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.pod)
    }

    /// Everything teardown must restore: links, qdiscs, filters of the pod netns.
    fn snapshot(&self) -> String {
        let p = self.pod.as_str();
        let mut s = sh(&["ip", "-n", p, "-o", "link", "show"]);
        s += &sh(&["tc", "-n", p, "qdisc", "show"]);
        for dev in ["eth0", "eth1"] {
            s += &sh(&["tc", "-n", p, "filter", "show", "dev", dev, "ingress"]);
        }
        s
    }
}

impl Drop for TestNets {
    fn drop(&mut self) {
        for ns in [&self.pod, &self.peer] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// The network state file of a test, in a directory of its own that goes when dropped.
struct StateFile(PathBuf);

impl std::ops::Deref for StateFile {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for StateFile {
    fn drop(&mut self) {
        if let Some(dir) = self.0.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn state_file(tag: &str) -> StateFile {
    let dir = std::env::temp_dir().join(format!("svm-net-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    StateFile(dir.join(STATE_FILE))
}

/// Opens a tap the way the VMM does (with a virtio-net header), non-blocking.
fn open_tap(ns: &Netns, name: &str) -> File {
    ns.run(|| {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open("/dev/net/tun")
            .unwrap();
        // SAFETY: ifreq is plain old data; all-zero is valid.
        let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
        for (d, &b) in ifr.ifr_name.iter_mut().zip(name.as_bytes()) {
            *d = b as libc::c_char;
        }
        ifr.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as _;
        // SAFETY: TUNSETIFF reads and writes one ifreq.
        let r = unsafe { libc::ioctl(f.as_raw_fd(), libc::TUNSETIFF, &mut ifr) };
        assert!(r >= 0, "{}", std::io::Error::last_os_error());
        f
    })
    .unwrap()
}

/// virtio-net header length the VMM sets (`TUNSETVNETHDRSZ` default is 10; the tap
/// default is what we see here, as nothing set it).
const HDR: usize = 10;

fn mac_of(ns: &str, dev: &str) -> String {
    sh(&[
        "ip",
        "netns",
        "exec",
        ns,
        "cat",
        &format!("/sys/class/net/{dev}/address"),
    ])
    .trim()
    .to_string()
}

/// Frames both ways through the redirects: an ARP request from the peer reaches the tap,
/// a frame written to the tap reaches the peer.
fn check_traffic(nets: &TestNets, ns: &Netns) {
    let mut tap = open_tap(ns, "tap_svm0");
    let peer_mac = agent_protocol::network::parse_mac(&mac_of(&nets.peer, "peer0")).unwrap();
    // The peer's ping makes it ARP for 10.231.0.2: the request crosses eth0 to the tap.
    let _ = Command::new("ip")
        .args([
            "netns",
            "exec",
            &nets.peer,
            "ping",
            "-c",
            "1",
            "-W",
            "1",
            "10.231.0.2",
        ])
        .output();
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut buf = [0u8; 2048];
    let mut seen = false;
    while !seen && Instant::now() < deadline {
        match tap.read(&mut buf) {
            Ok(n) if n >= HDR + 14 => seen = buf[HDR + 6..HDR + 12] == peer_mac,
            _ => std::thread::sleep(Duration::from_millis(20)),
        }
    }
    assert!(seen, "no frame from peer0 reached the tap");

    let rx = || -> u64 {
        sh(&[
            "ip",
            "netns",
            "exec",
            &nets.peer,
            "cat",
            "/sys/class/net/peer0/statistics/rx_packets",
        ])
        .trim()
        .parse()
        .unwrap()
    };
    let before = rx();
    let mut frame = vec![0u8; HDR];
    frame.extend_from_slice(&[0xff; 6]);
    frame.extend_from_slice(&[0x02, 0, 0, 0, 0, 1]);
    frame.extend_from_slice(&[0x88, 0xb5]);
    frame.extend_from_slice(&[0u8; 46]);
    tap.write_all(&frame).unwrap();
    let deadline = Instant::now() + Duration::from_secs(3);
    while rx() == before {
        assert!(
            Instant::now() < deadline,
            "a frame written to the tap never reached peer0"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn attach_joins_every_interface_to_a_tap_and_detach_restores_the_netns() {
    let nets = TestNets::new("attach");
    let file = state_file("attach");
    let before = nets.snapshot();
    // Two interfaces: such a pod cannot restore a template (it has one NIC).
    assert_eq!(interface_count(&nets.path()).unwrap(), 2);
    let vm = vmm_api::config::VmConfig::new("/k");
    let why = template::vm_for_pod(&vm, &nets.path()).unwrap_err();
    assert!(why.contains("2 interfaces"), "{why}");
    let net = PodNetwork::attach(&nets.path(), &file).unwrap();
    // Our taps are not counted as the pod's.
    assert_eq!(interface_count(&nets.path()).unwrap(), 2);

    // What the guest gets.
    let g = &net.guest;
    g.validate().unwrap();
    assert_eq!(g.interfaces.len(), 2, "{g:?}");
    let eth0 = &g.interfaces[0];
    assert_eq!((eth0.name.as_str(), eth0.mtu), ("eth0", 1400));
    assert_eq!(eth0.mac, mac_of(&nets.pod, "eth0"));
    assert_eq!(eth0.addresses[0].to_string(), "10.231.0.2/24");
    assert_eq!(g.interfaces[1].addresses[0].to_string(), "10.232.0.2/16");
    let default = g.routes.iter().find(|r| r.destination.is_none()).unwrap();
    assert_eq!(default.gateway, Some("10.231.0.1".parse().unwrap()));
    assert_eq!(default.interface, "eth0");
    let extra = g.routes.iter().find(|r| r.destination.is_some()).unwrap();
    assert_eq!(extra.destination.unwrap().to_string(), "192.168.77.0/24");
    assert_eq!((extra.interface.as_str(), extra.metric), ("eth1", Some(7)));
    assert_eq!(
        g.routes.len(),
        2,
        "kernel prefix routes are left out: {:?}",
        g.routes
    );
    let nets_cfg = net.vm_nets();
    assert_eq!(nets_cfg[0].tap, "tap_svm0");
    assert_eq!(
        nets_cfg[1].mac.as_deref(),
        Some(g.interfaces[1].mac.as_str())
    );

    // What the netns got.
    let tap = sh(&["ip", "-n", &nets.pod, "-d", "link", "show", "tap_svm0"]);
    assert!(tap.contains("mtu 1400") && tap.contains("tap"), "{tap}");
    let f = sh(&[
        "tc", "-n", &nets.pod, "filter", "show", "dev", "eth0", "ingress",
    ]);
    assert!(
        f.contains("protocol all") && f.contains("Redirect to device tap_svm0"),
        "{f}"
    );
    let f = sh(&[
        "tc", "-n", &nets.pod, "filter", "show", "dev", "tap_svm1", "ingress",
    ]);
    assert!(f.contains("Redirect to device eth1"), "{f}");
    let saved = NetworkState::read(&file).unwrap().unwrap();
    assert_eq!(saved, net.state);
    assert!(saved.links[0].own_veth_qdisc && !saved.links[1].own_veth_qdisc);

    check_traffic(&nets, &net.netns);

    detach(&file).unwrap();
    assert!(!file.exists());
    assert_eq!(
        nets.snapshot(),
        before,
        "teardown leaves the netns as it was"
    );
    detach(&file).unwrap();
}

#[test]
fn detach_after_the_netns_is_gone_and_attach_to_a_missing_one() {
    let nets = TestNets::new("gone");
    let file = state_file("gone");
    let net = PodNetwork::attach(&nets.path(), &file).unwrap();
    drop(net);
    sh(&["ip", "netns", "del", &nets.pod]);
    detach(&file).unwrap();
    assert!(!file.exists());

    let e = PodNetwork::attach(&nets.path(), &file).unwrap_err();
    assert!(e.to_string().contains("does not exist"), "{e}");
    assert!(!file.exists(), "a failed attach leaves no state");
}

#[test]
fn the_runtimes_own_netns_is_refused() {
    let file = state_file("own");
    let e = PodNetwork::attach(Path::new("/proc/self/ns/net"), &file).unwrap_err();
    assert!(matches!(e, NetworkError::OwnNetns(_)), "{e}");
    assert!(!file.exists());
}
