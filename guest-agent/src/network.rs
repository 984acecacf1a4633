//! The guest's side of pod networking: the runtime found the pod's interfaces, addresses
//! and routes in the pod netns and joined each interface to a tap that backs one of our
//! NICs, with the interface's MAC. Here each NIC is found by that MAC (a NIC restored from
//! a template by the template's, and then given the interface's MAC) and given the
//! interface's name, MTU and addresses, then the routes are added, over a blocking
//! rtnetlink socket (NICs are listed from sysfs). Containers of a pod with a network stay in the guest's root netns
//! (the runtime drops the spec's network namespace), so they all see these interfaces.
//!
//! The guest kernel may have no IPv6: IPv6 addresses and routes are then skipped.

use std::net::IpAddr;

use agent_protocol::network::{parse_mac, NetworkConfig, NetworkConfigError, Route};
use netlink_packet_core::{Emitable, NLM_F_ACK, NLM_F_CREATE, NLM_F_REPLACE, NLM_F_REQUEST};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use netlink_packet_route::route::{
    RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::AddressFamily;
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

/// Errors configuring the guest's network; one line each.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("invalid network config: {0}")]
    Invalid(#[from] NetworkConfigError),
    #[error("netlink socket: {0}")]
    Socket(std::io::Error),
    #[error("cannot {what}: {err}")]
    Kernel { what: String, err: std::io::Error },
    #[error("bad netlink reply: {0}")]
    Decode(String),
    #[error("no guest NIC has MAC {mac} (for pod interface {name})")]
    NoNic { name: String, mac: String },
}

/// `nlmsghdr` length, and the offset of `nlmsgerr.error` after it.
const NLMSG_HDR_LEN: usize = 16;
/// `NLMSG_ERROR`: an ack (error 0) or a failure (-errno).
const NLMSG_ERROR: u16 = 2;

/// A blocking rtnetlink client that only sends requests and reads their acks: the
/// messages are built with `netlink-packet-route`, the acks are read by hand, so none of
/// that crate's (large) parsers end up in the static agent.
struct Rtnl {
    sock: Socket,
    seq: u32,
}

/// The message type of a request (`RTM_*`).
const RTM_SETLINK: u16 = 19;
const RTM_NEWADDR: u16 = 20;
const RTM_NEWROUTE: u16 = 24;

impl Rtnl {
    fn open() -> Result<Rtnl, NetError> {
        let mut sock = Socket::new(NETLINK_ROUTE).map_err(NetError::Socket)?;
        sock.bind_auto().map_err(NetError::Socket)?;
        sock.connect(&SocketAddr::new(0, 0))
            .map_err(NetError::Socket)?;
        Ok(Rtnl { sock, seq: 0 })
    }

    /// Sends `body` as a `kind` request with an ack asked for, and waits for the ack.
    fn call(
        &mut self,
        what: &dyn Fn() -> String,
        kind: u16,
        body: &dyn Emitable,
        flags: u16,
    ) -> Result<(), NetError> {
        self.seq += 1;
        let len = NLMSG_HDR_LEN + body.buffer_len();
        let mut buf = vec![0u8; len];
        buf[0..4].copy_from_slice(&(len as u32).to_ne_bytes());
        buf[4..6].copy_from_slice(&kind.to_ne_bytes());
        buf[6..8].copy_from_slice(&(NLM_F_REQUEST | NLM_F_ACK | flags).to_ne_bytes());
        buf[8..12].copy_from_slice(&self.seq.to_ne_bytes());
        body.emit(&mut buf[NLMSG_HDR_LEN..]);
        self.sock.send(&buf, 0).map_err(NetError::Socket)?;
        loop {
            let (data, _) = self.sock.recv_from_full().map_err(NetError::Socket)?;
            if let Some(errno) = find_ack(&data, self.seq)? {
                return match errno {
                    0 => Ok(()),
                    e => Err(NetError::Kernel {
                        what: what(),
                        err: std::io::Error::from_raw_os_error(e),
                    }),
                };
            }
        }
    }
}

/// The errno (0 for success) of the ack to request `seq` in `data`, if it is there.
fn find_ack(data: &[u8], seq: u32) -> Result<Option<i32>, NetError> {
    let mut off = 0;
    while off + NLMSG_HDR_LEN <= data.len() {
        let at = |i: usize, n: usize| &data[off + i..off + i + n];
        let len = u32::from_ne_bytes(at(0, 4).try_into().expect("4 bytes")) as usize;
        if len < NLMSG_HDR_LEN || off + len > data.len() {
            return Err(NetError::Decode(format!("message length {len}")));
        }
        let kind = u16::from_ne_bytes(at(4, 2).try_into().expect("2 bytes"));
        let this = u32::from_ne_bytes(at(8, 4).try_into().expect("4 bytes"));
        if kind == NLMSG_ERROR && this == seq {
            if len < NLMSG_HDR_LEN + 4 {
                return Err(NetError::Decode("short error message".into()));
            }
            let code = i32::from_ne_bytes(at(NLMSG_HDR_LEN, 4).try_into().expect("4 bytes"));
            return Ok(Some(-code));
        }
        off += len.next_multiple_of(4);
    }
    Ok(None)
}

/// A guest link: index, name, MAC.
type Link = (u32, String, Option<[u8; 6]>);

/// The guest's links, from sysfs.
fn links() -> Result<Vec<Link>, NetError> {
    let read = |p: std::path::PathBuf| std::fs::read_to_string(p).unwrap_or_default();
    let dir = std::fs::read_dir("/sys/class/net").map_err(|err| NetError::Kernel {
        what: "list /sys/class/net".into(),
        err,
    })?;
    Ok(dir
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let index = read(e.path().join("ifindex")).trim().parse().ok()?;
            let mac = parse_mac(read(e.path().join("address")).trim());
            Some((index, name, mac))
        })
        .collect())
}

fn set_link(
    nl: &mut Rtnl,
    index: u32,
    attrs: Vec<LinkAttribute>,
    up: bool,
) -> Result<(), NetError> {
    let mut m = LinkMessage::default();
    m.header.index = index;
    if up {
        m.header.flags = LinkFlags::Up;
        m.header.change_mask = LinkFlags::Up;
    }
    m.attributes = attrs;
    let what = || format!("configure link {index}");
    nl.call(&what, RTM_SETLINK, &m, 0)
}

/// Brings the loopback up (containers of the sandbox share the guest's root netns).
pub fn loopback_up() -> Result<(), NetError> {
    let mut nl = Rtnl::open()?;
    let lo = links()?.into_iter().find(|(_, name, _)| name == "lo");
    match lo {
        Some((index, _, _)) => set_link(&mut nl, index, Vec::new(), true),
        None => Ok(()),
    }
}

fn family(ip: &IpAddr) -> AddressFamily {
    if ip.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    }
}

fn add_address(nl: &mut Rtnl, index: u32, ip: IpAddr, prefix_len: u8) -> Result<(), NetError> {
    let mut m = AddressMessage::default();
    m.header.family = family(&ip);
    m.header.prefix_len = prefix_len;
    m.header.index = index;
    if ip.is_ipv4() {
        m.attributes.push(AddressAttribute::Local(ip));
    }
    m.attributes.push(AddressAttribute::Address(ip));
    let what = || format!("add address {ip}/{prefix_len}");
    nl.call(&what, RTM_NEWADDR, &m, NLM_F_CREATE | NLM_F_REPLACE)
}

/// The netlink message for `r` through link `index`.
fn route_message(r: &Route, index: u32) -> RouteMessage {
    let mut m = RouteMessage::default();
    let v6 = r.is_ipv6();
    m.header.address_family = if v6 {
        AddressFamily::Inet6
    } else {
        AddressFamily::Inet
    };
    m.header.table = RouteHeader::RT_TABLE_MAIN;
    m.header.protocol = RouteProtocol::Boot;
    m.header.kind = RouteType::Unicast;
    m.header.scope = match r.gateway {
        Some(_) => RouteScope::Universe,
        None => RouteScope::Link,
    };
    if let Some(d) = r.destination {
        m.header.destination_prefix_length = d.prefix_len;
        m.attributes
            .push(RouteAttribute::Destination(d.address.into()));
    }
    if let Some(g) = r.gateway {
        m.attributes.push(RouteAttribute::Gateway(g.into()));
    }
    if let Some(s) = r.source {
        m.attributes.push(RouteAttribute::PrefSource(s.into()));
    }
    if let Some(p) = r.metric {
        m.attributes.push(RouteAttribute::Priority(p));
    }
    m.attributes.push(RouteAttribute::Oif(index));
    m
}

/// Configures the guest's NICs and routes from `cfg` (validated first).
pub fn configure(cfg: &NetworkConfig) -> Result<(), NetError> {
    cfg.validate()?;
    let ipv6 = std::path::Path::new("/proc/sys/net/ipv6").exists();
    let mut nl = Rtnl::open()?;
    let present = links()?;
    let mut indexes = Vec::new();
    for itf in &cfg.interfaces {
        let mac = parse_mac(&itf.mac).expect("validate() checked the MAC");
        // A clone's NIC still has the template's MAC: found by it, then given the pod's.
        let now = itf.guest_mac.as_deref().unwrap_or(&itf.mac);
        let found = parse_mac(now);
        let Some((index, name, _)) = present.iter().find(|(_, _, m)| m.is_some() && *m == found)
        else {
            return Err(NetError::NoNic {
                name: itf.name.clone(),
                mac: now.to_string(),
            });
        };
        // Renaming needs the link down, which a NIC nobody configured yet is.
        let mut attrs = vec![LinkAttribute::Mtu(itf.mtu)];
        if *name != itf.name {
            attrs.push(LinkAttribute::IfName(itf.name.clone()));
        }
        if found != Some(mac) {
            attrs.push(LinkAttribute::Address(mac.to_vec()));
        }
        set_link(&mut nl, *index, attrs, false)?;
        set_link(&mut nl, *index, Vec::new(), true)?;
        for a in itf.addresses.iter().filter(|a| ipv6 || a.address.is_ipv4()) {
            add_address(&mut nl, *index, a.address, a.prefix_len)?;
        }
        indexes.push((itf.name.as_str(), *index));
    }
    // On-link routes first: the gateways of the others must be reachable.
    let mut routes: Vec<&Route> = cfg.routes.iter().filter(|r| ipv6 || !r.is_ipv6()).collect();
    routes.sort_by_key(|r| r.gateway.is_some());
    for r in routes {
        let index = indexes
            .iter()
            .find(|(n, _)| *n == r.interface)
            .map(|(_, i)| *i)
            .expect("validate() checked every route's interface");
        let what = || match (r.destination, r.gateway) {
            (Some(d), _) => format!("add route to {d} on {}", r.interface),
            (None, g) => format!("add default route via {g:?} on {}", r.interface),
        };
        let msg = route_message(r, index);
        nl.call(&what, RTM_NEWROUTE, &msg, NLM_F_CREATE | NLM_F_REPLACE)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use agent_protocol::network::IpPrefix;

    use super::*;

    fn nlmsg(kind: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
        let len = NLMSG_HDR_LEN + payload.len();
        let mut m = (len as u32).to_ne_bytes().to_vec();
        m.extend(kind.to_ne_bytes());
        m.extend(0u16.to_ne_bytes());
        m.extend(seq.to_ne_bytes());
        m.extend(0u32.to_ne_bytes());
        m.extend(payload);
        m.resize(len.next_multiple_of(4), 0);
        m
    }

    #[test]
    fn acks_are_found_by_sequence_and_bad_lengths_refused() {
        let mut data = nlmsg(16, 7, &[0; 20]); // some other message first
        data.extend(nlmsg(NLMSG_ERROR, 6, &(-1i32).to_ne_bytes()));
        data.extend(nlmsg(NLMSG_ERROR, 7, &(-17i32).to_ne_bytes()));
        assert_eq!(find_ack(&data, 7).unwrap(), Some(17));
        assert_eq!(find_ack(&data, 6).unwrap(), Some(1));
        assert_eq!(find_ack(&data, 8).unwrap(), None);
        let ok = nlmsg(NLMSG_ERROR, 3, &0i32.to_ne_bytes());
        assert_eq!(find_ack(&ok, 3).unwrap(), Some(0));
        let mut bad = nlmsg(NLMSG_ERROR, 3, &0i32.to_ne_bytes());
        bad[0..4].copy_from_slice(&4000u32.to_ne_bytes());
        assert!(find_ack(&bad, 3).is_err());
        bad[0..4].copy_from_slice(&3u32.to_ne_bytes());
        assert!(
            find_ack(&bad, 3).is_err(),
            "a zero-progress length must not loop"
        );
        let short = nlmsg(NLMSG_ERROR, 3, &[]);
        assert!(find_ack(&short, 3).is_err());
    }

    #[test]
    fn route_messages_carry_scope_table_and_attributes() {
        let r = Route {
            destination: Some(IpPrefix {
                address: "192.168.77.0".parse().unwrap(),
                prefix_len: 24,
            }),
            gateway: None,
            interface: "eth0".into(),
            source: Some("10.0.0.2".parse().unwrap()),
            metric: Some(7),
        };
        let m = route_message(&r, 3);
        assert_eq!(m.header.address_family, AddressFamily::Inet);
        assert_eq!(m.header.scope, RouteScope::Link);
        assert_eq!(m.header.table, RouteHeader::RT_TABLE_MAIN);
        assert_eq!(m.header.destination_prefix_length, 24);
        assert!(m.attributes.contains(&RouteAttribute::Oif(3)));
        assert!(m.attributes.contains(&RouteAttribute::Priority(7)));
        let default = Route {
            destination: None,
            gateway: Some("fd00::1".parse().unwrap()),
            source: None,
            metric: None,
            ..r
        };
        let m = route_message(&default, 3);
        assert_eq!(m.header.address_family, AddressFamily::Inet6);
        assert_eq!(m.header.scope, RouteScope::Universe);
        assert_eq!(m.header.destination_prefix_length, 0);
    }

    /// Root only: a veth NIC in a new netns of this thread's own gets its name, MTU,
    /// address and routes.
    #[test]
    fn configure_finds_the_nic_by_mac_and_sets_it_up() {
        assert!(
            nix::unistd::geteuid().is_root(),
            "this test needs root (a network namespace)"
        );
        let t = std::thread::spawn(|| {
            use nix::mount::{mount, MsFlags};
            use nix::sched::{unshare, CloneFlags};
            // A netns of this thread's own, and a sysfs that shows it (NICs are listed
            // from sysfs), in a private mount namespace.
            unshare(CloneFlags::CLONE_NEWNET | CloneFlags::CLONE_NEWNS).unwrap();
            let none: Option<&str> = None;
            mount(none, "/", none, MsFlags::MS_REC | MsFlags::MS_PRIVATE, none).unwrap();
            mount(Some("sysfs"), "/sys", Some("sysfs"), MsFlags::empty(), none).unwrap();
            let ok = std::process::Command::new("ip")
                .args([
                    "link",
                    "add",
                    "nic9",
                    "address",
                    "0a:58:0a:58:00:02",
                    "type",
                    "veth",
                    "peer",
                    "name",
                    "nic9p",
                ])
                .status()
                .unwrap();
            assert!(ok.success());
            let cfg: NetworkConfig = serde_json::from_value(serde_json::json!({
                "interfaces": [{"name": "eth0", "mac": "0A:58:0a:58:00:02", "mtu": 1400,
                    "addresses": [{"address": "10.231.0.2", "prefix_len": 24}]}],
                "routes": [
                    {"destination": null, "gateway": "10.231.0.1", "interface": "eth0"},
                    {"destination": {"address": "10.9.0.0", "prefix_len": 16},
                     "gateway": null, "interface": "eth0"}]
            }))
            .unwrap();
            configure(&cfg).unwrap();
            // Twice is fine (replace semantics).
            configure(&cfg).unwrap();
            loopback_up().unwrap();
            let show = |args: &[&str]| {
                let o = std::process::Command::new("ip")
                    .args(args)
                    .output()
                    .unwrap();
                String::from_utf8(o.stdout).unwrap()
            };
            let link = show(&["link", "show", "eth0"]);
            assert!(link.contains("mtu 1400") && link.contains(",UP"), "{link}");
            assert!(show(&["addr", "show", "eth0"]).contains("10.231.0.2/24"));
            let routes = show(&["route", "show"]);
            assert!(
                routes.contains("default via 10.231.0.1 dev eth0"),
                "{routes}"
            );
            assert!(routes.contains("10.9.0.0/16 dev eth0"), "{routes}");
            assert!(show(&["link", "show", "lo"]).contains(",UP"));

            let mut other = cfg.clone();
            other.interfaces[0].mac = "02:00:00:00:00:01".into();
            let e = configure(&other).unwrap_err();
            assert!(e.to_string().contains("no guest NIC has MAC"), "{e}");

            // A clone's NIC: found by the template's MAC, given the pod's. Renaming and
            // changing the MAC need it down first.
            let ok = std::process::Command::new("ip")
                .args(["link", "set", "eth0", "down", "name", "nic9"])
                .status()
                .unwrap();
            assert!(ok.success());
            let mut clone = cfg.clone();
            clone.interfaces[0].guest_mac = Some("0a:58:0a:58:00:02".into());
            clone.interfaces[0].mac = "02:11:22:33:44:55".into();
            configure(&clone).unwrap();
            let link = show(&["link", "show", "eth0"]);
            assert!(link.contains("link/ether 02:11:22:33:44:55"), "{link}");
            assert!(show(&["addr", "show", "eth0"]).contains("10.231.0.2/24"));
        });
        t.join().unwrap();
    }
}
