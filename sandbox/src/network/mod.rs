//! Pod networking, Kata's "tcfilter" model: the VM joins the network namespace that
//! podman (netavark) or CNI prepared for the pod.
//!
//! [`PodNetwork::attach`] enters the netns named by the spec, reads its Ethernet
//! interfaces (name, MAC, MTU, addresses) and routes, and gives each interface a
//! persistent tap ([`TAP_PREFIX`]`N`) joined to it by tc `mirred` redirects both ways
//! ([`plumb`]). The VMM process then starts inside that netns and opens the taps by name;
//! each guest NIC takes its interface's MAC, and the agent gives it the interface's name,
//! MTU, addresses and routes ([`PodNetwork::guest`]). What was made is recorded in the
//! state directory before it is made, so [`detach`] can undo it from there alone, after a
//! crash, after the VMM was killed, or twice.

mod inspect;
pub mod netns;
mod plumb;
pub mod template;

use std::io;
use std::path::{Path, PathBuf};

use agent_protocol::network::NetworkConfig;
use serde::{Deserialize, Serialize};
use vmm_api::config::NetConfig;

pub use netns::{Netns, NetnsError};

/// Name prefix of the taps we create (`tap_svm0`, `tap_svm1`, ...); interfaces with it are
/// never taken for the pod's own.
pub const TAP_PREFIX: &str = "tap_svm";
/// The record of what [`PodNetwork::attach`] made, in the sandbox's state directory.
pub const STATE_FILE: &str = "network.json";

/// Errors setting up or tearing down a pod's network; one line each.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error("pod network: cannot {0}: {1}")]
    Netlink(&'static str, rtnetlink::Error),
    #[error("pod network: cannot create tap {0}: {1}")]
    Tap(String, io::Error),
    #[error("pod network: cannot start a netlink client: {0}")]
    Runtime(io::Error),
    #[error("pod network: state file {0}: {1}")]
    State(PathBuf, String),
    #[error("pod network: its netns has {0} interfaces now, and a template has one NIC")]
    TemplateNics(usize),
    #[error("network namespace {0} is the runtime's own: a VM cannot share it (for host networking omit the network namespace from the spec; the guest then has loopback only)")]
    OwnNetns(PathBuf),
}

/// One interface of the pod netns and the tap that stands in for it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plumbed {
    /// The pod's interface (a veth).
    pub veth: String,
    /// Our tap.
    pub tap: String,
    /// The interface's MAC, which the guest NIC takes.
    pub mac: String,
    /// The veth's ingress qdisc is ours (else it was there before and only our filter is
    /// removed at teardown).
    pub own_veth_qdisc: bool,
}

/// What [`STATE_FILE`] holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkState {
    /// The pod's netns.
    pub netns: PathBuf,
    /// Interfaces joined to taps (or about to be).
    pub links: Vec<Plumbed>,
}

impl NetworkState {
    fn write(&self, file: &Path) -> Result<(), NetworkError> {
        let tmp = file.with_extension("json.tmp");
        let json = serde_json::to_vec_pretty(self).expect("NetworkState serializes");
        std::fs::write(&tmp, json)
            .and_then(|()| std::fs::rename(&tmp, file))
            .map_err(|e| NetworkError::State(file.to_path_buf(), e.to_string()))
    }

    fn read(file: &Path) -> Result<Option<NetworkState>, NetworkError> {
        let bad = |e: String| NetworkError::State(file.to_path_buf(), e);
        match std::fs::read(file) {
            Ok(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| bad(e.to_string())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(bad(e.to_string())),
        }
    }
}

/// A pod network joined to its taps.
#[derive(Debug)]
pub struct PodNetwork {
    /// The pod's netns (the VMM process joins it).
    pub netns: Netns,
    /// What was made.
    pub state: NetworkState,
    /// What the guest agent configures.
    pub guest: NetworkConfig,
}

/// Runs `work` with a netlink handle on a thread inside `ns`.
fn with_netlink<T: Send>(
    ns: &Netns,
    work: impl AsyncFnOnce(&rtnetlink::Handle) -> Result<T, NetworkError> + Send,
) -> Result<T, NetworkError> {
    ns.run(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .map_err(NetworkError::Runtime)?;
        rt.block_on(async {
            let (conn, handle, _) = rtnetlink::new_connection().map_err(NetworkError::Runtime)?;
            let conn = tokio::spawn(conn);
            let r = work(&handle).await;
            conn.abort();
            r
        })
    })?
}

impl PodNetwork {
    /// Joins every Ethernet interface of the netns at `netns` to a new tap and records it
    /// in `state_file`. On error, whatever was made is undone.
    pub fn attach(netns: &Path, state_file: &Path) -> Result<PodNetwork, NetworkError> {
        let ns = Netns::open(netns)?;
        if ns.is_current()? {
            return Err(NetworkError::OwnNetns(netns.to_path_buf()));
        }
        let result = with_netlink(&ns, async |h| {
            let (links, interfaces, routes) = inspect::read(h).await?;
            let mut state = NetworkState {
                netns: netns.to_path_buf(),
                links: interfaces
                    .iter()
                    .enumerate()
                    .map(|(i, itf)| Plumbed {
                        veth: itf.name.clone(),
                        tap: format!("{TAP_PREFIX}{i}"),
                        mac: itf.mac.clone(),
                        own_veth_qdisc: false,
                    })
                    .collect(),
            };
            // Recorded before anything is made, so a crash half-way can still be undone.
            state.write(state_file)?;
            for (i, link) in links.iter().enumerate() {
                let r = plumb::plumb(h, &mut state.links[i], link.index, link.mtu).await;
                state.write(state_file)?;
                r?;
            }
            Ok((state, NetworkConfig { interfaces, routes }))
        });
        match result {
            Ok((state, guest)) => Ok(PodNetwork {
                netns: ns,
                state,
                guest,
            }),
            Err(e) => {
                if let Err(undo) = detach(state_file) {
                    log::warn!("pod network: undoing a failed attach: {undo}");
                }
                Err(e)
            }
        }
    }

    /// One virtio-net device per tap, with the pod interface's MAC.
    pub fn vm_nets(&self) -> Vec<NetConfig> {
        self.state
            .links
            .iter()
            .map(|l| NetConfig {
                tap: l.tap.clone(),
                mac: Some(l.mac.clone()),
            })
            .collect()
    }
}

/// How many interfaces of the netns at `netns` [`PodNetwork::attach`] would join to a tap.
pub fn interface_count(netns: &Path) -> Result<usize, NetworkError> {
    let ns = Netns::open(netns)?;
    if ns.is_current()? {
        return Err(NetworkError::OwnNetns(netns.to_path_buf()));
    }
    with_netlink(&ns, async |h| Ok(inspect::links(h).await?.len()))
}

/// Undoes [`PodNetwork::attach`] from `state_file` alone: deletes the taps and the veths'
/// redirects, then the file. Nothing to do if the file is absent, and nothing but the file
/// if the netns is gone (its taps went with it). Safe to run twice, and after the VMM died.
pub fn detach(state_file: &Path) -> Result<(), NetworkError> {
    let Some(state) = NetworkState::read(state_file)? else {
        return Ok(());
    };
    match Netns::open(&state.netns) {
        Ok(ns) => {
            with_netlink(&ns, async |h| {
                for link in &state.links {
                    plumb::unplumb(h, link).await?;
                }
                Ok(())
            })?;
        }
        Err(NetnsError::Missing(_) | NetnsError::NotNetns(_)) => {}
        Err(e) => return Err(e.into()),
    }
    std::fs::remove_file(state_file)
        .or_else(|e| match e.kind() {
            io::ErrorKind::NotFound => Ok(()),
            _ => Err(e),
        })
        .map_err(|e| NetworkError::State(state_file.to_path_buf(), e.to_string()))
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;
