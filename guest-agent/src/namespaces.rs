//! The namespaces a container can have besides its PID namespace (which
//! [`crate::spawn`] sets up).

use agent_protocol::oci_spec::runtime::LinuxNamespaceType;
use nix::sched::CloneFlags;

/// With their /proc/PID/ns names. Order matters when joining: the mount namespace goes
/// after the others, and the user namespace last (a container's namespaces but the user
/// one belong to the guest's initial user namespace: see [`crate::child`]), so that the
/// joining process still has the privilege to join them.
const NAMESPACES: [(LinuxNamespaceType, CloneFlags, &str); 6] = [
    (LinuxNamespaceType::Ipc, CloneFlags::CLONE_NEWIPC, "ipc"),
    (LinuxNamespaceType::Uts, CloneFlags::CLONE_NEWUTS, "uts"),
    (LinuxNamespaceType::Network, CloneFlags::CLONE_NEWNET, "net"),
    (
        LinuxNamespaceType::Cgroup,
        CloneFlags::CLONE_NEWCGROUP,
        "cgroup",
    ),
    (LinuxNamespaceType::Mount, CloneFlags::CLONE_NEWNS, "mnt"),
    (LinuxNamespaceType::User, CloneFlags::CLONE_NEWUSER, "user"),
];

/// The clone flag and /proc/PID/ns name of a supported namespace type.
pub fn find(t: LinuxNamespaceType) -> Option<(CloneFlags, &'static str)> {
    NAMESPACES
        .iter()
        .find(|(typ, _, _)| *typ == t)
        .map(|&(_, flag, name)| (flag, name))
}

/// Where the namespace of `flag` comes in the join order.
pub fn join_rank(flag: CloneFlags) -> Option<usize> {
    NAMESPACES.iter().position(|(_, f, _)| *f == flag)
}
