//! Reading a pod netns: its Ethernet interfaces (the veths CNI or netavark made), their
//! addresses and the routes of the main table that use them. The `*_of` functions are the
//! pure choice of what to keep, one netlink message at a time.

use std::collections::BTreeMap;
use std::net::IpAddr;

use agent_protocol::network::{format_mac, Interface, IpPrefix, Route};
use futures_util::TryStreamExt;
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage};
use rtnetlink::packet_route::link::{
    InfoKind, LinkAttribute, LinkFlags, LinkInfo, LinkLayerType, LinkMessage,
};
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteType,
};
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::Handle;

use super::{NetworkError, TAP_PREFIX};

/// An interface of the pod netns that gets a tap.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct FoundLink {
    pub index: u32,
    pub name: String,
    pub mac: [u8; 6],
    pub mtu: u32,
}

/// The link, if it is one the guest should stand in for: Ethernet with a MAC, not the
/// loopback, not a bridge, not a tap (ours or anyone's).
pub(super) fn link_of(msg: &LinkMessage) -> Option<FoundLink> {
    if msg.header.link_layer_type != LinkLayerType::Ether
        || msg.header.flags.contains(LinkFlags::Loopback)
    {
        return None;
    }
    let mut name = None;
    let mut mac = None;
    let mut mtu = None;
    for a in &msg.attributes {
        match a {
            LinkAttribute::IfName(n) => name = Some(n.clone()),
            LinkAttribute::Address(m) => mac = <[u8; 6]>::try_from(m.as_slice()).ok(),
            LinkAttribute::Mtu(m) => mtu = Some(*m),
            LinkAttribute::LinkInfo(infos) => {
                let skip = infos
                    .iter()
                    .any(|i| matches!(i, LinkInfo::Kind(InfoKind::Tun | InfoKind::Bridge)));
                if skip {
                    return None;
                }
            }
            _ => {}
        }
    }
    let name = name.filter(|n| !n.starts_with(TAP_PREFIX))?;
    Some(FoundLink {
        index: msg.header.index,
        name,
        mac: mac?,
        mtu: mtu.unwrap_or(1500),
    })
}

fn is_link_local_v6(a: &IpAddr) -> bool {
    matches!(a, IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80)
}

/// The interface index and address, unless it is an IPv6 link-local one (the guest kernel
/// derives the same from the MAC).
pub(super) fn address_of(msg: &AddressMessage) -> Option<(u32, IpPrefix)> {
    let mut local = None;
    let mut address = None;
    for a in &msg.attributes {
        match a {
            AddressAttribute::Local(ip) => local = Some(*ip),
            AddressAttribute::Address(ip) => address = Some(*ip),
            _ => {}
        }
    }
    // IFA_LOCAL is the interface's own address; IFA_ADDRESS is the peer's on
    // point-to-point links and the same as IFA_LOCAL otherwise (IPv6 sends only it).
    let ip = local.or(address)?;
    if is_link_local_v6(&ip) {
        return None;
    }
    Some((
        msg.header.index,
        IpPrefix {
            address: ip,
            prefix_len: msg.header.prefix_len,
        },
    ))
}

fn ip_of(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

/// The route, if the guest needs it: a unicast route of the main table through one of
/// `links`, not one the kernel made itself for an address's prefix (the guest kernel makes
/// those again), nor an IPv6 link-local one.
pub(super) fn route_of(msg: &RouteMessage, links: &BTreeMap<u32, String>) -> Option<Route> {
    let h = &msg.header;
    if h.kind != RouteType::Unicast || h.protocol == RouteProtocol::Kernel {
        return None;
    }
    let mut table = u32::from(h.table);
    let (mut dst, mut gateway, mut oif, mut source, mut metric) = (None, None, None, None, None);
    for a in &msg.attributes {
        match a {
            RouteAttribute::Table(t) => table = *t,
            RouteAttribute::Destination(d) => dst = ip_of(d),
            RouteAttribute::Gateway(g) => gateway = ip_of(g),
            RouteAttribute::Oif(i) => oif = Some(*i),
            RouteAttribute::PrefSource(s) => source = ip_of(s),
            RouteAttribute::Priority(p) => metric = Some(*p),
            _ => {}
        }
    }
    if table != u32::from(RouteHeader::RT_TABLE_MAIN) {
        return None;
    }
    let interface = links.get(&oif?)?.clone();
    let destination = match dst {
        Some(ip) if h.destination_prefix_length > 0 => Some(IpPrefix {
            address: ip,
            prefix_len: h.destination_prefix_length,
        }),
        _ => None,
    };
    if destination.is_some_and(|d| is_link_local_v6(&d.address)) {
        return None;
    }
    Some(Route {
        destination,
        gateway,
        interface,
        source,
        metric,
    })
}

fn nl_err(what: &'static str) -> impl FnOnce(rtnetlink::Error) -> NetworkError {
    move |e| NetworkError::Netlink(what, e)
}

/// The pod netns's links that get a tap, by index order.
pub(super) async fn links(h: &Handle) -> Result<Vec<FoundLink>, NetworkError> {
    let mut links = Vec::new();
    let mut stream = h.link().get().execute();
    while let Some(msg) = stream.try_next().await.map_err(nl_err("list links"))? {
        links.extend(link_of(&msg));
    }
    links.sort_by_key(|l| l.index);
    Ok(links)
}

/// The pod netns's interfaces (by index order) and routes, as the guest should get them.
pub(super) async fn read(
    h: &Handle,
) -> Result<(Vec<FoundLink>, Vec<Interface>, Vec<Route>), NetworkError> {
    let links = links(h).await?;
    let names: BTreeMap<u32, String> = links.iter().map(|l| (l.index, l.name.clone())).collect();

    let mut interfaces: Vec<Interface> = links
        .iter()
        .map(|l| Interface {
            name: l.name.clone(),
            mac: format_mac(&l.mac),
            mtu: l.mtu,
            addresses: Vec::new(),
            guest_mac: None,
        })
        .collect();
    let mut stream = h.address().get().execute();
    while let Some(msg) = stream.try_next().await.map_err(nl_err("list addresses"))? {
        let Some((index, prefix)) = address_of(&msg) else {
            continue;
        };
        if let Some(pos) = links.iter().position(|l| l.index == index) {
            interfaces[pos].addresses.push(prefix);
        }
    }

    let mut routes = Vec::new();
    for family in [AddressFamily::Inet, AddressFamily::Inet6] {
        let mut req = RouteMessage::default();
        req.header.address_family = family;
        let mut stream = h.route().get(req).execute();
        while let Some(msg) = stream.try_next().await.map_err(nl_err("list routes"))? {
            routes.extend(route_of(&msg, &names));
        }
    }
    Ok((links, interfaces, routes))
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;

    fn link(name: &str, kind: Option<InfoKind>) -> LinkMessage {
        let mut m = LinkMessage::default();
        m.header.index = 7;
        m.header.link_layer_type = LinkLayerType::Ether;
        m.attributes = vec![
            LinkAttribute::IfName(name.into()),
            LinkAttribute::Address(vec![0x0a, 0x58, 10, 88, 0, 2]),
            LinkAttribute::Mtu(1450),
        ];
        if let Some(k) = kind {
            m.attributes
                .push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(k)]));
        }
        m
    }

    #[test]
    fn veths_are_kept_taps_bridges_and_loopback_are_not() {
        let found = link_of(&link("eth0", Some(InfoKind::Veth))).unwrap();
        assert_eq!(
            found,
            FoundLink {
                index: 7,
                name: "eth0".into(),
                mac: [0x0a, 0x58, 10, 88, 0, 2],
                mtu: 1450
            }
        );
        assert!(
            link_of(&link("eth1", None)).is_some(),
            "a link without kind (a NIC) counts"
        );
        assert_eq!(link_of(&link("tap9", Some(InfoKind::Tun))), None);
        assert_eq!(link_of(&link("br0", Some(InfoKind::Bridge))), None);
        assert_eq!(link_of(&link(&format!("{TAP_PREFIX}0"), None)), None);
        let mut lo = link("lo", None);
        lo.header.link_layer_type = LinkLayerType::Loopback;
        assert_eq!(link_of(&lo), None);
        let mut lo = link("lo", None);
        lo.header.flags = LinkFlags::Loopback;
        assert_eq!(link_of(&lo), None);
    }

    fn addr(ip: IpAddr, len: u8, local: bool) -> AddressMessage {
        let mut m = AddressMessage::default();
        m.header.index = 7;
        m.header.prefix_len = len;
        m.attributes.push(AddressAttribute::Address(ip));
        if local {
            m.attributes.insert(0, AddressAttribute::Local(ip));
        }
        m
    }

    #[test]
    fn addresses_keep_their_prefix_and_skip_ipv6_link_local() {
        let v4 = IpAddr::V4(Ipv4Addr::new(10, 88, 0, 2));
        assert_eq!(
            address_of(&addr(v4, 16, true)),
            Some((
                7,
                IpPrefix {
                    address: v4,
                    prefix_len: 16
                }
            ))
        );
        let v6: IpAddr = "fd00::2".parse().unwrap();
        assert_eq!(address_of(&addr(v6, 64, false)).unwrap().1.address, v6);
        let ll: IpAddr = "fe80::858:aff:fe58:2".parse().unwrap();
        assert_eq!(address_of(&addr(ll, 64, false)), None);
        // On a point-to-point link IFA_ADDRESS is the peer: IFA_LOCAL wins.
        let mut p2p = addr(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 9)), 32, false);
        p2p.attributes.push(AddressAttribute::Local(v4));
        assert_eq!(address_of(&p2p).unwrap().1.address, v4);
    }

    fn route(dst: Option<(IpAddr, u8)>, gw: Option<IpAddr>) -> RouteMessage {
        let mut m = RouteMessage::default();
        m.header.table = RouteHeader::RT_TABLE_MAIN;
        m.header.kind = RouteType::Unicast;
        m.header.protocol = RouteProtocol::Boot;
        if let Some((ip, len)) = dst {
            m.header.destination_prefix_length = len;
            m.attributes.push(RouteAttribute::Destination(ip.into()));
        }
        if let Some(g) = gw {
            m.attributes.push(RouteAttribute::Gateway(g.into()));
        }
        m.attributes.push(RouteAttribute::Oif(7));
        m
    }

    #[test]
    fn routes_of_the_main_table_through_our_links() {
        let links = BTreeMap::from([(7, "eth0".to_string())]);
        let gw = IpAddr::V4(Ipv4Addr::new(10, 88, 0, 1));
        let r = route_of(&route(None, Some(gw)), &links).unwrap();
        assert_eq!(r.destination, None);
        assert_eq!(r.gateway, Some(gw));
        assert_eq!(r.interface, "eth0");
        let net = IpAddr::V4(Ipv4Addr::new(192, 168, 5, 0));
        let mut with_metric = route(Some((net, 24)), None);
        with_metric.attributes.push(RouteAttribute::Priority(100));
        let r = route_of(&with_metric, &links).unwrap();
        assert_eq!(
            r.destination,
            Some(IpPrefix {
                address: net,
                prefix_len: 24
            })
        );
        assert_eq!((r.gateway, r.metric), (None, Some(100)));

        let mut kernel = route(Some((net, 24)), None);
        kernel.header.protocol = RouteProtocol::Kernel;
        assert_eq!(
            route_of(&kernel, &links),
            None,
            "the guest kernel makes prefix routes"
        );
        let mut local = route(Some((net, 32)), None);
        local.header.kind = RouteType::Local;
        assert_eq!(route_of(&local, &links), None);
        let mut other_table = route(None, Some(gw));
        other_table.attributes.push(RouteAttribute::Table(100));
        assert_eq!(route_of(&other_table, &links), None);
        let mut other_link = route(None, Some(gw));
        other_link
            .attributes
            .retain(|a| !matches!(a, RouteAttribute::Oif(_)));
        other_link.attributes.push(RouteAttribute::Oif(8));
        assert_eq!(route_of(&other_link, &links), None);
        let ll = IpAddr::V6(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0));
        assert_eq!(route_of(&route(Some((ll, 64)), None), &links), None);
    }
}
