//! A container's user namespace, with the spec's uid and gid mappings.
//!
//! The container's init makes it last, once its root is built and just before it reports
//! `R` ([`enter_new`]): its other namespaces and mounts belong to the guest's initial user
//! namespace, made with the agent's privileges, so the container's root is root in its
//! own user namespace only (it cannot mount or set the hostname, for instance). A process
//! in a new user namespace cannot write arbitrary mappings for itself: it sends `U`, the
//! agent writes them ([`write_maps`]) and answers `M`. An exec joins the namespace last,
//! after the others ([`crate::namespaces`]).

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;

use agent_protocol::oci_spec::runtime::{Linux, LinuxIdMapping};
use nix::sched::{unshare, CloneFlags};

/// Making the container's user namespace failed.
#[derive(Debug, thiserror::Error)]
#[error("{op} failed: {cause}")]
pub struct UsernsError {
    /// The step that failed.
    pub op: &'static str,
    /// Cause.
    pub cause: io::Error,
}

/// The spec's mappings, as `/proc/PID/{uid,gid}_map` take them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdMaps {
    /// `uid_map` lines.
    pub uid: String,
    /// `gid_map` lines.
    pub gid: String,
}

fn lines(maps: &[LinuxIdMapping]) -> String {
    maps.iter()
        .map(|m| format!("{} {} {}\n", m.container_id(), m.host_id(), m.size()))
        .collect()
}

impl IdMaps {
    /// The mappings of `linux`; both must be there (the host checked that they are).
    pub fn of(linux: &Linux) -> Result<IdMaps, String> {
        let get = |maps: &Option<Vec<LinuxIdMapping>>, what: &str| {
            maps.as_deref()
                .filter(|m| !m.is_empty())
                .map(lines)
                .ok_or_else(|| format!("a user namespace needs linux.{what}"))
        };
        Ok(IdMaps {
            uid: get(linux.uid_mappings(), "uidMappings")?,
            gid: get(linux.gid_mappings(), "gidMappings")?,
        })
    }
}

/// The agent's side: writes `maps` for process `pid`, which has made its user namespace.
pub fn write_maps(pid: i32, maps: &IdMaps) -> io::Result<()> {
    std::fs::write(format!("/proc/{pid}/uid_map"), &maps.uid)?;
    std::fs::write(format!("/proc/{pid}/gid_map"), &maps.gid)
}

/// The init's side: makes the user namespace and waits until the agent mapped it.
pub fn enter_new(sync: &mut &UnixStream) -> Result<(), UsernsError> {
    let err = |op| move |cause| UsernsError { op, cause };
    unshare(CloneFlags::CLONE_NEWUSER).map_err(|e| err("unshare(user)")(io::Error::from(e)))?;
    sync.write_all(b"U").map_err(err("ask for id maps"))?;
    let mut b = [0u8; 1];
    match sync.read(&mut b) {
        Ok(1) if b[0] == b'M' => Ok(()),
        Ok(_) => Err(err("wait for id maps")(io::ErrorKind::UnexpectedEof.into())),
        Err(e) => Err(err("wait for id maps")(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_are_written_as_the_kernel_reads_them() {
        let l: Linux = serde_json::from_value(serde_json::json!({
            "uidMappings": [{"containerID": 0, "hostID": 1000, "size": 10},
                {"containerID": 10, "hostID": 5000, "size": 1}],
            "gidMappings": [{"containerID": 0, "hostID": 2000, "size": 65536}],
        }))
        .unwrap();
        let m = IdMaps::of(&l).unwrap();
        assert_eq!(m.uid, "0 1000 10\n10 5000 1\n");
        assert_eq!(m.gid, "0 2000 65536\n");
        let none = Linux::default();
        assert!(IdMaps::of(&none).unwrap_err().contains("uidMappings"));
    }
}
