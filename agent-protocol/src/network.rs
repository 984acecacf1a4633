//! The pod's network as the runtime found it in the pod's network namespace, for the agent
//! to give the guest ([`crate::Request::ConfigureNetwork`]).
//!
//! The runtime joins each interface of the netns to a tap that backs one guest NIC whose
//! MAC is the interface's; the agent finds its NIC by that MAC (or, in a clone restored
//! from a template, by the template's MAC, and gives it the interface's), gives it the
//! interface's name, MTU and addresses, brings it up, then adds the routes. Everything here comes from
//! the host, but the agent still checks it ([`NetworkConfig::validate`]) before it touches
//! the guest's network.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// Longest interface name Linux accepts (IFNAMSIZ - 1).
pub const MAX_IFNAME_LEN: usize = 15;
/// Smallest MTU the guest accepts for an IPv4 interface.
pub const MIN_MTU: u32 = 68;
/// Largest MTU we pass on (virtio-net's own limit).
pub const MAX_MTU: u32 = 65535;

/// The guest's network.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkConfig {
    /// One per guest NIC.
    pub interfaces: Vec<Interface>,
    /// Added after every interface is up: routes without a gateway first, so the
    /// gateways of the others are reachable.
    pub routes: Vec<Route>,
}

/// One interface of the pod's netns, as the guest NIC that stands in for it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Interface {
    /// Its name in the pod netns (`eth0`); the guest NIC is renamed to it.
    pub name: String,
    /// Its MAC, `aa:bb:cc:dd:ee:ff`: also the guest NIC's, which is how the agent finds it.
    pub mac: String,
    /// Its MTU.
    pub mtu: u32,
    /// Its addresses (link-local IPv6 ones are left to the guest kernel).
    pub addresses: Vec<IpPrefix>,
    /// The MAC the guest NIC has now, when it is not yet `mac`: a NIC restored from a
    /// template still has the template's. The agent then finds the NIC by this one and
    /// gives it `mac`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest_mac: Option<String>,
}

/// An address with its prefix length (`10.88.0.2/16`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IpPrefix {
    pub address: IpAddr,
    pub prefix_len: u8,
}

/// One route of the pod netns's main table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// Destination; `None` is the default route of the gateway's family.
    pub destination: Option<IpPrefix>,
    /// Next hop; `None` for a route on the link itself (scope link).
    pub gateway: Option<IpAddr>,
    /// The interface (one of [`NetworkConfig::interfaces`] by name).
    pub interface: String,
    /// Preferred source address.
    #[serde(default)]
    pub source: Option<IpAddr>,
    /// Metric.
    #[serde(default)]
    pub metric: Option<u32>,
}

impl IpPrefix {
    /// Whether the prefix length fits the address family.
    pub fn is_valid(&self) -> bool {
        let max = if self.address.is_ipv4() { 32 } else { 128 };
        self.prefix_len <= max
    }
}

impl std::fmt::Display for IpPrefix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.address, self.prefix_len)
    }
}

impl Route {
    /// The route's address family is IPv6.
    pub fn is_ipv6(&self) -> bool {
        match (&self.destination, &self.gateway) {
            (Some(d), _) => d.address.is_ipv6(),
            (None, Some(g)) => g.is_ipv6(),
            (None, None) => false,
        }
    }
}

/// Parses `aa:bb:cc:dd:ee:ff` (either case).
pub fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for b in mac.iter_mut() {
        let p = parts.next()?;
        if p.len() != 2 {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// Formats a MAC as `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// What is wrong with a [`NetworkConfig`]; one line each.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum NetworkConfigError {
    #[error("interface name {0:?} is not 1-15 bytes without '/', NUL or spaces")]
    BadName(String),
    #[error("interface {name}: MAC {mac:?} is not aa:bb:cc:dd:ee:ff")]
    BadMac { name: String, mac: String },
    #[error("interface {name}: MTU {mtu} is outside 68..=65535")]
    BadMtu { name: String, mtu: u32 },
    #[error("interface {0} appears twice (by name or MAC)")]
    Duplicate(String),
    #[error("interface {name}: prefix {prefix} is too long for its address")]
    BadPrefix { name: String, prefix: IpPrefix },
    #[error("route via {0}: no such interface in the config")]
    UnknownInterface(String),
    #[error("route on {0}: destination, gateway and source mix IPv4 and IPv6")]
    MixedFamilies(String),
}

fn valid_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_IFNAME_LEN
        && name != "."
        && name != ".."
        && !name
            .bytes()
            .any(|b| b == b'/' || b == 0 || b.is_ascii_whitespace())
}

impl NetworkConfig {
    /// Checks names, MACs, MTUs, prefix lengths, that every route names a configured
    /// interface and keeps to one address family.
    pub fn validate(&self) -> Result<(), NetworkConfigError> {
        let mut seen: Vec<(&str, [u8; 6], [u8; 6])> = Vec::new();
        for i in &self.interfaces {
            if !valid_ifname(&i.name) {
                return Err(NetworkConfigError::BadName(i.name.clone()));
            }
            let mac = parse_mac(&i.mac).ok_or_else(|| NetworkConfigError::BadMac {
                name: i.name.clone(),
                mac: i.mac.clone(),
            })?;
            let bad_mac = |mac: &String| NetworkConfigError::BadMac {
                name: i.name.clone(),
                mac: mac.clone(),
            };
            let guest_mac = match &i.guest_mac {
                Some(m) => Some(parse_mac(m).ok_or_else(|| bad_mac(m))?),
                None => None,
            };
            if !(MIN_MTU..=MAX_MTU).contains(&i.mtu) {
                return Err(NetworkConfigError::BadMtu {
                    name: i.name.clone(),
                    mtu: i.mtu,
                });
            }
            // Each NIC is found by the MAC it has now: those must differ too.
            let found_by = guest_mac.unwrap_or(mac);
            if seen
                .iter()
                .any(|(n, m, f)| *n == i.name || *m == mac || *f == found_by)
            {
                return Err(NetworkConfigError::Duplicate(i.name.clone()));
            }
            seen.push((&i.name, mac, found_by));
            if let Some(p) = i.addresses.iter().find(|p| !p.is_valid()) {
                return Err(NetworkConfigError::BadPrefix {
                    name: i.name.clone(),
                    prefix: *p,
                });
            }
        }
        for r in &self.routes {
            if !seen.iter().any(|(n, _, _)| *n == r.interface) {
                return Err(NetworkConfigError::UnknownInterface(r.interface.clone()));
            }
            if let Some(d) = r.destination.filter(|d| !d.is_valid()) {
                return Err(NetworkConfigError::BadPrefix {
                    name: r.interface.clone(),
                    prefix: d,
                });
            }
            let v6 = r.is_ipv6();
            let families = [r.gateway, r.source, r.destination.map(|d| d.address)];
            if families.iter().flatten().any(|a| a.is_ipv6() != v6) {
                return Err(NetworkConfigError::MixedFamilies(r.interface.clone()));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prefix(s: &str, len: u8) -> IpPrefix {
        IpPrefix {
            address: s.parse().unwrap(),
            prefix_len: len,
        }
    }

    fn eth0() -> Interface {
        Interface {
            name: "eth0".into(),
            mac: "0a:58:0A:58:00:02".into(),
            mtu: 1500,
            addresses: vec![prefix("10.88.0.2", 16)],
            guest_mac: None,
        }
    }

    fn default_route(gw: &str) -> Route {
        Route {
            destination: None,
            gateway: Some(gw.parse().unwrap()),
            interface: "eth0".into(),
            source: None,
            metric: None,
        }
    }

    #[test]
    fn mac_round_trip_and_rejects() {
        assert_eq!(
            parse_mac("0a:58:0A:58:00:02"),
            Some([0x0a, 0x58, 0x0a, 0x58, 0, 2])
        );
        assert_eq!(
            format_mac(&[0x0a, 0x58, 0x0a, 0x58, 0, 2]),
            "0a:58:0a:58:00:02"
        );
        for bad in [
            "",
            "0a:58:0a:58:00",
            "0a:58:0a:58:00:02:03",
            "0a:58:0a:58:00:2",
            "zz:58:0a:58:00:02",
        ] {
            assert_eq!(parse_mac(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_pod_network_validates_and_round_trips() {
        let mut cfg = NetworkConfig {
            interfaces: vec![eth0()],
            routes: vec![default_route("10.88.0.1")],
        };
        cfg.validate().unwrap();
        let json = serde_json::to_string(&cfg).unwrap();
        assert!(!json.contains("guest_mac"), "{json}");
        assert_eq!(serde_json::from_str::<NetworkConfig>(&json).unwrap(), cfg);
        // A clone's NIC, found by the template's MAC.
        cfg.interfaces[0].guest_mac = Some("02:73:76:6d:00:01".into());
        cfg.validate().unwrap();
        let json = serde_json::to_string(&cfg).unwrap();
        assert_eq!(serde_json::from_str::<NetworkConfig>(&json).unwrap(), cfg);
    }

    #[test]
    fn bad_values_are_named() {
        let with = |f: &dyn Fn(&mut NetworkConfig)| {
            let mut cfg = NetworkConfig {
                interfaces: vec![eth0()],
                routes: vec![default_route("10.88.0.1")],
            };
            f(&mut cfg);
            cfg.validate().unwrap_err()
        };
        assert!(matches!(
            with(&|c| c.interfaces[0].name = "a/b".into()),
            NetworkConfigError::BadName(_)
        ));
        assert!(matches!(
            with(&|c| c.interfaces[0].name = "x".repeat(16)),
            NetworkConfigError::BadName(_)
        ));
        assert!(matches!(
            with(&|c| c.interfaces[0].mac = "nope".into()),
            NetworkConfigError::BadMac { .. }
        ));
        assert!(matches!(
            with(&|c| c.interfaces[0].guest_mac = Some("02:00:00".into())),
            NetworkConfigError::BadMac { .. }
        ));
        assert!(matches!(
            with(&|c| {
                let mut two = eth0();
                two.name = "eth1".into();
                two.mac = "0a:58:0a:58:00:03".into();
                c.interfaces[0].guest_mac = Some("02:00:00:00:00:01".into());
                two.guest_mac = Some("02:00:00:00:00:01".into());
                c.interfaces.push(two);
            }),
            NetworkConfigError::Duplicate(_)
        ));
        assert!(matches!(
            with(&|c| c.interfaces[0].mtu = 10),
            NetworkConfigError::BadMtu { .. }
        ));
        assert!(matches!(
            with(&|c| c.interfaces[0].addresses[0].prefix_len = 33),
            NetworkConfigError::BadPrefix { .. }
        ));
        assert!(matches!(
            with(&|c| c.interfaces.push(eth0())),
            NetworkConfigError::Duplicate(_)
        ));
        assert!(matches!(
            with(&|c| c.routes[0].interface = "eth9".into()),
            NetworkConfigError::UnknownInterface(_)
        ));
        assert!(matches!(
            with(&|c| c.routes[0].destination = Some(prefix("fd00::", 64))),
            NetworkConfigError::MixedFamilies(_)
        ));
        // IPv6 alone is fine, and a /128 is a valid IPv6 prefix.
        let mut cfg = NetworkConfig {
            interfaces: vec![eth0()],
            routes: vec![default_route("fd00::1")],
        };
        cfg.interfaces[0].addresses.push(prefix("fd00::2", 128));
        cfg.validate().unwrap();
        assert!(cfg.routes[0].is_ipv6());
    }
}
