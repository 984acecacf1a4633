//! Templates with a NIC end to end, with the real guest kernel and agent (Firecracker's
//! network-for-clones: one TAP name, each clone in its own netns). Two pod netns as CNI
//! leaves them (veth `eth0` with its own MAC and address, a default route), their far
//! ends on a bridge in a "node" netns that holds the gateway. One cold boot builds the
//! NIC template (in a netns of the build's own); two sandboxes then restore it, one in
//! each pod netns, and each guest must have its own pod's MAC and IP and reach the gateway
//! and the other clone (ping). Afterwards the pod netns are as CNI left them (no tap),
//! and the template build left no netns or tap on the host.
//!
//! Needs root, /dev/kvm, virtiofsd, `ip`, the guest kernel and the guest image (see
//! `scripts/setup.sh`).

mod plan_host;

use std::path::Path;
use std::time::Instant;

use sandbox::network::template::TEMPLATE_MAC;
use sandbox::oci::translate::{self, probe_host};
use sandbox::template::TemplateUse;
use sandbox::{PodPlan, RealHost, Role, Sandbox};
use test_support::cmd::run_ok;
use test_support::fresh_dir;
use test_support::netns::TestNetns;
use test_support::rootfs::{add_applets, busybox_bundle, edit_config};

const GATEWAY: &str = "10.231.40.1";
/// The pods' addresses and their veths' MACs.
const PODS: [(&str, &str); 2] = [
    ("10.231.40.2", "0a:58:0a:e7:28:02"),
    ("10.231.40.3", "0a:58:0a:e7:28:03"),
];

fn bin() -> String {
    test_support::artifacts::built_binary("sandbox-vm")
        .display()
        .to_string()
}

/// The node netns with bridge `br0` (the gateway) and one pod netns per [`PODS`] entry,
/// `eth0` in each a veth whose far end is on the bridge.
fn pod_network() -> (TestNetns, Vec<TestNetns>) {
    let node = TestNetns::new("tplnet-node");
    let n = node.name();
    run_ok(&["ip", "-n", n, "link", "add", "br0", "type", "bridge"]);
    run_ok(&[
        "ip",
        "-n",
        n,
        "addr",
        "add",
        &format!("{GATEWAY}/24"),
        "dev",
        "br0",
    ]);
    run_ok(&["ip", "-n", n, "link", "set", "br0", "up"]);
    let pods = PODS
        .iter()
        .enumerate()
        .map(|(i, (ip, mac))| {
            let pod = TestNetns::new(&format!("tplnet-pod{i}"));
            let p = pod.name();
            let far = format!("vpod{i}");
            run_ok(&[
                "ip", "-n", p, "link", "add", "eth0", "address", mac, "type", "veth", "peer",
                "name", &far, "netns", n,
            ]);
            run_ok(&["ip", "-n", n, "link", "set", &far, "master", "br0", "up"]);
            run_ok(&[
                "ip",
                "-n",
                p,
                "addr",
                "add",
                &format!("{ip}/24"),
                "dev",
                "eth0",
            ]);
            run_ok(&["ip", "-n", p, "link", "set", "eth0", "up"]);
            run_ok(&["ip", "-n", p, "route", "add", "default", "via", GATEWAY]);
            pod
        })
        .collect();
    (node, pods)
}

/// A bundle whose container reports its NIC and pings the gateway and `other`, in the
/// pod netns `ns` (with CAP_NET_RAW for ping).
fn bundle(dir: &Path, ns: &TestNetns, other: &str) -> std::path::PathBuf {
    let script = format!(
        "cat /sys/class/net/eth0/address; ip -o -4 addr show eth0; \
         ping -c 2 -W 30 {GATEWAY} >/dev/null; echo gateway=$?; \
         ping -c 2 -W 30 {other} >/dev/null; echo other=$?; echo done"
    );
    let b = busybox_bundle(&bin(), dir, &["sh", "-c", &script]);
    add_applets(&b.join("rootfs"), &["ip", "ping"]);
    let netns = ns.path().display().to_string();
    edit_config(&b, |c| {
        for ns in c["linux"]["namespaces"].as_array_mut().unwrap() {
            if ns["type"] == "network" {
                ns["path"] = netns.clone().into();
            }
        }
        for set in ["bounding", "effective", "permitted"] {
            c["process"]["capabilities"][set]
                .as_array_mut()
                .unwrap()
                .push("CAP_NET_RAW".into());
        }
    });
    b
}

fn spec_of(bundle: &Path) -> oci_spec::runtime::Spec {
    serde_json::from_str(&std::fs::read_to_string(bundle.join("config.json")).unwrap()).unwrap()
}

fn plan(dir: &Path, id: &str, b: &Path, t: TemplateUse) -> PodPlan {
    let mut host = plan_host::host();
    host.templates = dir.join("templates");
    let state = dir.join(id);
    let mut plan = PodPlan::new(
        id,
        &spec_of(b),
        &b.join("rootfs"),
        Role::Pod,
        &state,
        &host,
        &RealHost,
    )
    .unwrap();
    plan.template = t;
    plan
}

/// Runs the bundle's container in `sb` to its end; its output.
fn run_container(sb: &Sandbox, bundle: &Path) -> String {
    let plan = translate::container_request(
        "c",
        &spec_of(bundle),
        &bundle.join("rootfs"),
        translate::RootfsMode::Share,
        &probe_host,
    )
    .unwrap();
    plan_host::run_to_end(sb, "c", plan)
}

#[test]
fn clones_of_a_nic_template_get_their_pods_mac_and_ip_and_reach_each_other() {
    let dir = fresh_dir("svm-e2e-tplnet");
    let (_node, pods) = pod_network();
    let bundles: Vec<_> = pods
        .iter()
        .enumerate()
        .map(|(i, ns)| bundle(&dir.join(format!("bundle{i}")), ns, PODS[1 - i].0))
        .collect();

    let t = Instant::now();
    let tplan = plan(&dir, "tpl", &bundles[0], TemplateUse::Off);
    let template = Sandbox::build_template(&tplan).unwrap();
    eprintln!("NIC template built in {:.1} s", t.elapsed().as_secs_f64());
    let saved = std::fs::read_to_string(template.join(vmm_api::snapshot::STATE_FILE)).unwrap();
    assert!(saved.contains(TEMPLATE_MAC), "the template NIC's MAC");
    for (ip, mac) in PODS {
        assert!(
            !saved.contains(mac) && !saved.contains(ip),
            "a pod's MAC or IP"
        );
    }
    assert_eq!(
        pods[0].links(),
        ["lo", "eth0"],
        "the build used its own netns"
    );

    let plans: Vec<PodPlan> = (0..2)
        .map(|i| plan(&dir, &format!("clone{i}"), &bundles[i], TemplateUse::Auto))
        .collect();
    let t = Instant::now();
    let sbs: Vec<Sandbox> = plans.iter().map(|p| Sandbox::create(p).unwrap()).collect();
    eprintln!("two clones ready in {:.1} s", t.elapsed().as_secs_f64());
    for sb in &sbs {
        let log = std::fs::read_to_string(&sb.paths().vmm_log).unwrap_or_default();
        assert!(
            log.contains("restored"),
            "not restored from the template: {log}"
        );
    }
    let outs: Vec<String> = std::thread::scope(|s| {
        let hs: Vec<_> = sbs
            .iter()
            .zip(&bundles)
            .map(|(sb, b)| s.spawn(move || run_container(sb, b)))
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (i, out) in outs.iter().enumerate() {
        eprintln!("clone{i}:\n{out}");
        let (ip, mac) = PODS[i];
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.last(), Some(&"done"), "{out}");
        assert_eq!(lines[0], mac, "clone{i}'s NIC has its pod's MAC: {out}");
        assert!(
            lines[1].contains(&format!("inet {ip}/24")),
            "clone{i}'s IP is its pod's: {out}"
        );
        assert!(lines.contains(&"gateway=0"), "clone{i} -> gateway: {out}");
        assert!(
            lines.contains(&"other=0"),
            "clone{i} -> the other clone: {out}"
        );
    }
    for sb in &sbs {
        sb.stop().unwrap();
    }
    for pod in &pods {
        assert_eq!(
            pod.links(),
            ["lo", "eth0"],
            "a tap is left in {}",
            pod.name()
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
