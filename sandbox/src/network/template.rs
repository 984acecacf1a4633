//! Pod networks for templates, the way Firecracker restores clones onto a network (one TAP
//! name for every clone, each clone in a network namespace of its own): a template's VM
//! has one NIC, on the TAP [`TEMPLATE_TAP`] with the MAC [`TEMPLATE_MAC`].
//!
//! - The template boots in a netns of its own ([`BuildNetns`]) that holds only a TAP of
//!   that name; the netns (and the TAP) go when the build's VMM and the build are done.
//! - A pod with exactly one interface in its netns may restore it: [`PodNetwork::attach`]
//!   names that interface's TAP [`TEMPLATE_TAP`] too, the clone's VMM starts inside the
//!   pod's netns and opens it by that name, with the pod interface's MAC in the device's
//!   config space (`sandbox-vm-vmm --restore … --mac`).
//! - The guest NIC still has the template's MAC (a driver reads the config space once, at
//!   probe), so the agent is told to find it by [`TEMPLATE_MAC`] ([`as_restored`]) and
//!   gives it the pod interface's MAC, name, MTU, addresses and routes.
//!
//! [`PodNetwork::attach`]: super::PodNetwork::attach

use std::path::Path;

use agent_protocol::network::NetworkConfig;
use vmm_api::config::{NetConfig, VmConfig};

use super::{plumb, Netns, NetworkError};

/// The TAP of a template's NIC: the name [`super::PodNetwork::attach`] gives the TAP of a
/// pod's first interface.
pub const TEMPLATE_TAP: &str = "tap_svm0";
/// The MAC of a template's NIC until the agent gives a clone's NIC its pod's (locally
/// administered, unicast).
pub const TEMPLATE_MAC: &str = "02:73:76:6d:00:01";

/// The NIC a template's VM has.
pub fn nic() -> NetConfig {
    NetConfig {
        tap: TEMPLATE_TAP.into(),
        mac: Some(TEMPLATE_MAC.into()),
    }
}

/// `vm` with the template's NIC added (a VM config has no NICs before the pod network
/// is attached).
pub fn with_nic(vm: &VmConfig) -> VmConfig {
    let mut vm = vm.clone();
    vm.net.push(nic());
    vm
}

/// The VM of the template a pod on the network in `netns` may restore: `vm` with the
/// template's NIC when the netns has exactly one interface; else why not, in one line.
pub fn vm_for_pod(vm: &VmConfig, netns: &Path) -> Result<VmConfig, String> {
    match super::interface_count(netns) {
        Ok(1) => Ok(with_nic(vm)),
        Ok(n) => Err(format!(
            "its netns has {n} interfaces and a template has one NIC"
        )),
        Err(e) => Err(e.to_string()),
    }
}

/// Marks the pod's network config as the one of a restored clone: its NIC has the
/// template's MAC until the agent sets the pod interface's.
pub fn as_restored(cfg: &mut NetworkConfig) {
    for itf in &mut cfg.interfaces {
        itf.guest_mac = Some(TEMPLATE_MAC.into());
    }
}

/// A network namespace of a template build's own, with the template's TAP in it. Nothing
/// names it on the host: it lives while this value or a process in it (the build's VMM)
/// does, and its TAP goes with it.
#[derive(Debug)]
pub struct BuildNetns(Netns);

impl BuildNetns {
    /// Makes the netns and the TAP [`TEMPLATE_TAP`] in it.
    pub fn new() -> Result<BuildNetns, NetworkError> {
        let ns = Netns::new_private()?;
        ns.run(|| plumb::create_tap(TEMPLATE_TAP))??;
        Ok(BuildNetns(ns))
    }

    /// The netns (for the VMM to join).
    pub fn netns(&self) -> &Netns {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_template_tap_is_the_one_a_pods_first_interface_gets() {
        assert_eq!(TEMPLATE_TAP, format!("{}0", super::super::TAP_PREFIX));
        let mac = agent_protocol::network::parse_mac(TEMPLATE_MAC).unwrap();
        assert_eq!(mac[0] & 0b11, 0b10, "locally administered unicast");
        let vm = with_nic(&VmConfig::new("/k"));
        assert_eq!(vm.net, vec![nic()]);
        assert_eq!(vm.net[0].mac_bytes().unwrap(), Some(mac));
    }

    #[test]
    fn a_restored_clones_nic_is_found_by_the_template_mac() {
        let mut cfg: NetworkConfig = serde_json::from_value(serde_json::json!({
            "interfaces": [{"name": "eth0", "mac": "0a:58:0a:58:00:02", "mtu": 1500,
                "addresses": []}],
            "routes": []
        }))
        .unwrap();
        as_restored(&mut cfg);
        assert_eq!(cfg.interfaces[0].guest_mac.as_deref(), Some(TEMPLATE_MAC));
        assert_eq!(cfg.interfaces[0].mac, "0a:58:0a:58:00:02");
        cfg.validate().unwrap();
    }

    /// Root only: the build's netns has the TAP and nothing of the host's; it is gone
    /// once dropped.
    #[test]
    fn a_build_netns_holds_the_template_tap_and_goes_when_dropped() {
        assert!(
            nix::unistd::geteuid().is_root(),
            "this test needs root (a network namespace)"
        );
        let b = BuildNetns::new().unwrap();
        assert!(!b.netns().is_current().unwrap());
        let links = b
            .netns()
            .run(|| {
                let dev = std::fs::read_to_string("/proc/thread-self/net/dev").unwrap();
                let mut names: Vec<String> = dev
                    .lines()
                    .skip(2)
                    .filter_map(|l| l.split(':').next())
                    .map(|n| n.trim().to_string())
                    .collect();
                names.sort();
                names
            })
            .unwrap();
        assert_eq!(links, ["lo", TEMPLATE_TAP]);
        let ino = {
            use std::os::unix::fs::MetadataExt;
            b.netns().file().metadata().unwrap().ino()
        };
        drop(b);
        // No process holds it now: nothing on the host refers to that namespace.
        let want = format!("net:[{ino}]");
        let still = std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|e| std::fs::read_link(e.path().join("ns/net")).ok())
            .any(|l| l.to_string_lossy() == want);
        assert!(!still, "the build netns is still in use");
    }
}
