//! Joining a veth and a tap in the pod netns, Kata's "tcfilter" way: an ingress qdisc on
//! each and a `u32` match-all filter whose action is `mirred egress redirect` to the other,
//! so every frame the veth receives leaves through the tap (to the guest) and every frame
//! the guest sends leaves through the veth. No bridge, no addresses on the tap.
//!
//! Runs on a thread inside the netns ([`super::netns::Netns::run`]).

use std::fs::OpenOptions;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;

use futures_util::StreamExt;
use rtnetlink::packet_core::{NetlinkMessage, NLM_F_ACK, NLM_F_REQUEST};
use rtnetlink::packet_route::link::LinkMessage;
use rtnetlink::packet_route::tc::{TcHandle, TcMessage};
use rtnetlink::packet_route::RouteNetlinkMessage;
use rtnetlink::{Handle, LinkUnspec};

use super::{NetworkError, Plumbed};

/// Priority of our filters (`tc ... pref 49152`), so teardown deletes exactly them.
const FILTER_PRIO: u16 = 0xc000;
/// `ETH_P_ALL` in network byte order, as `tcm_info`'s protocol half wants it.
const PROTO_ALL_BE: u16 = (libc::ETH_P_ALL as u16).to_be();
/// The ingress qdisc's parent handle (`ffff:fff1`).
const INGRESS_PARENT: TcHandle = TcHandle {
    major: 0xffff,
    minor: TcHandle::MIN_INGRESS,
};

fn nl_err(what: &'static str) -> impl FnOnce(rtnetlink::Error) -> NetworkError {
    move |e| NetworkError::Netlink(what, e)
}

/// The errno of a netlink error reply, if it is one.
fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.code.map(|c| -c.get()),
        _ => None,
    }
}

/// Creates the persistent tap `name` (IFF_TAP | IFF_NO_PI | IFF_VNET_HDR) in the calling
/// thread's netns; attaching to an existing one of that name is fine. The VMM opens it by
/// name later with the same flags.
pub(super) fn create_tap(name: &str) -> Result<(), NetworkError> {
    let err = |e| NetworkError::Tap(name.to_string(), e);
    let tun = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open("/dev/net/tun")
        .map_err(err)?;
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, &b) in ifr.ifr_name.iter_mut().zip(name.as_bytes()) {
        *d = b as libc::c_char;
    }
    ifr.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as _;
    // SAFETY: TUNSETIFF reads and writes one ifreq, which `ifr` is; the fd is ours.
    if unsafe { libc::ioctl(tun.as_raw_fd(), libc::TUNSETIFF, &mut ifr) } < 0 {
        return Err(err(io::Error::last_os_error()));
    }
    // SAFETY: TUNSETPERSIST takes an int by value; no memory is passed.
    if unsafe { libc::ioctl(tun.as_raw_fd(), libc::TUNSETPERSIST, 1 as libc::c_ulong) } < 0 {
        return Err(err(io::Error::last_os_error()));
    }
    Ok(())
}

/// Sends one request and waits for its acknowledgement.
async fn request_ack(h: &Handle, msg: RouteNetlinkMessage) -> Result<(), rtnetlink::Error> {
    let mut req = NetlinkMessage::from(msg);
    req.header.flags = NLM_F_REQUEST | NLM_F_ACK;
    let mut replies = h.clone().request(req)?;
    while let Some(reply) = replies.next().await {
        if let rtnetlink::packet_core::NetlinkPayload::Error(e) = reply.payload {
            if e.code.is_some() {
                return Err(rtnetlink::Error::NetlinkError(e));
            }
        }
    }
    Ok(())
}

/// The index of the link called `name`, if there is one.
async fn index_of(h: &Handle, name: &str) -> Result<Option<u32>, NetworkError> {
    let mut s = h.link().get().match_name(name.to_string()).execute();
    match s.next().await {
        Some(Ok(m)) => Ok(Some(m.header.index)),
        Some(Err(e)) if errno(&e) == Some(libc::ENODEV) => Ok(None),
        Some(Err(e)) => Err(NetworkError::Netlink("look up a link", e)),
        None => Ok(None),
    }
}

/// Adds an ingress qdisc to `index`; `false` if it had one already (someone else's,
/// which teardown must leave alone).
async fn add_ingress(h: &Handle, index: u32) -> Result<bool, NetworkError> {
    match h.qdisc().add(index as i32).ingress().execute().await {
        Ok(()) => Ok(true),
        Err(e) if errno(&e) == Some(libc::EEXIST) => Ok(false),
        Err(e) => Err(NetworkError::Netlink("add an ingress qdisc", e)),
    }
}

async fn add_redirect(h: &Handle, from: u32, to: u32) -> Result<(), NetworkError> {
    h.traffic_filter(from as i32)
        .add()
        .ingress()
        .priority(FILTER_PRIO)
        .protocol(PROTO_ALL_BE)
        .redirect(to)
        .map_err(nl_err("build a redirect filter"))?
        .execute()
        .await
        .map_err(nl_err("add a redirect filter"))
}

/// Creates the tap of `p` with the veth's MTU, brings it up and joins it to the veth
/// (`veth_index`) both ways. Records in `p` whether the veth's ingress qdisc is ours.
pub(super) async fn plumb(
    h: &Handle,
    p: &mut Plumbed,
    veth_index: u32,
    mtu: u32,
) -> Result<(), NetworkError> {
    create_tap(&p.tap)?;
    let tap = index_of(h, &p.tap)
        .await?
        .ok_or_else(|| NetworkError::Tap(p.tap.clone(), io::ErrorKind::NotFound.into()))?;
    let msg: LinkMessage = LinkUnspec::new_with_index(tap).mtu(mtu).up().build();
    h.link()
        .set(msg)
        .execute()
        .await
        .map_err(nl_err("set the tap's MTU and bring it up"))?;
    p.own_veth_qdisc = add_ingress(h, veth_index).await?;
    add_ingress(h, tap).await?;
    add_redirect(h, veth_index, tap).await?;
    add_redirect(h, tap, veth_index).await
}

/// Undoes [`plumb`]: deletes the tap (its qdisc and filter go with it), and on the veth
/// either the ingress qdisc (if we added it) or only our filter. Whatever is already gone
/// is fine.
pub(super) async fn unplumb(h: &Handle, p: &Plumbed) -> Result<(), NetworkError> {
    let gone =
        |e: &rtnetlink::Error| matches!(errno(e), Some(libc::ENOENT | libc::ENODEV | libc::EINVAL));
    if let Some(tap) = index_of(h, &p.tap).await? {
        match h.link().del(tap).execute().await {
            Err(e) if !gone(&e) => return Err(NetworkError::Netlink("delete the tap", e)),
            _ => {}
        }
    }
    let Some(veth) = index_of(h, &p.veth).await? else {
        return Ok(());
    };
    let mut msg = TcMessage::with_index(veth as i32);
    let what = if p.own_veth_qdisc {
        msg.header.parent = TcHandle::INGRESS;
        msg.header.handle = TcHandle::from(0xffff_0000);
        RouteNetlinkMessage::DelQueueDiscipline(msg)
    } else {
        msg.header.parent = INGRESS_PARENT;
        msg.header.info = (u32::from(FILTER_PRIO) << 16) | u32::from(PROTO_ALL_BE);
        RouteNetlinkMessage::DelTrafficFilter(msg)
    };
    match request_ack(h, what).await {
        Err(e) if !gone(&e) => Err(NetworkError::Netlink("remove the veth's redirect", e)),
        _ => Ok(()),
    }
}
