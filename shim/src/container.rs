//! Per-task records: a container's init process and its execs, each with its streams, its
//! status and its exit, which `Wait` callers watch.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::SystemTime;

use oci_spec::runtime::{LinuxNamespaceType, Process, Spec};
use sandbox::stdio::Pumps;
use tokio::sync::watch;

use crate::io::{IoPaths, StdinCloser};

/// Where a process is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Created,
    Running,
    Paused,
    Stopped,
}

/// How and when a process ended (the status shell-style: code, or 128 + signal).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Exit {
    pub status: u32,
    pub at: SystemTime,
}

/// One process: a container's init or an exec.
pub struct Proc {
    pub io: IoPaths,
    pub status: Status,
    /// Its pid in the guest (0 before it runs).
    pub pid: u32,
    pub exit: watch::Sender<Option<Exit>>,
    pub stdin: Option<StdinCloser>,
    /// The output copy threads, until the exit watcher takes them to join.
    pub pumps: Option<Pumps>,
}

impl Proc {
    pub fn new(io: IoPaths) -> Proc {
        Proc {
            io,
            status: Status::Created,
            pid: 0,
            exit: watch::channel(None).0,
            stdin: None,
            pumps: None,
        }
    }

    /// Its exit, if it has exited.
    pub fn exited(&self) -> Option<Exit> {
        *self.exit.borrow()
    }

    /// Records the exit (once) and tells every waiter; returns whether it was the first.
    pub fn set_exited(&mut self, status: u32) -> bool {
        self.status = Status::Stopped;
        if let Some(c) = self.stdin.take() {
            c.close();
        }
        self.exit.send_if_modified(|e| {
            if e.is_some() {
                return false;
            }
            *e = Some(Exit {
                status,
                at: SystemTime::now(),
            });
            true
        })
    }
}

/// An exec: the process spec it runs and its record.
pub struct Exec {
    pub process: Process,
    pub proc: Proc,
}

/// One container (task) of the pod.
pub struct Container {
    pub id: String,
    pub bundle: PathBuf,
    /// `bundle/rootfs` when we mounted the Create request's rootfs there.
    pub rootfs_mount: Option<PathBuf>,
    pub init: Proc,
    pub execs: BTreeMap<String, Exec>,
}

impl Container {
    /// The process `exec_id` names (`""`: the init).
    pub fn proc_mut(&mut self, exec_id: &str) -> Option<&mut Proc> {
        match exec_id {
            "" => Some(&mut self.init),
            e => self.execs.get_mut(e).map(|x| &mut x.proc),
        }
    }
}

/// A process's exit as the guest agent reported it, shell-style.
pub fn exit_code(info: &agent_protocol::ExitInfo) -> u32 {
    info.status.as_shell_status() as u32
}

/// The name of a namespace type under `/proc/PID/ns/`.
fn ns_file(t: LinuxNamespaceType) -> Option<&'static str> {
    use LinuxNamespaceType as T;
    Some(match t {
        T::Network => "net",
        T::Ipc => "ipc",
        T::Uts => "uts",
        T::Pid => "pid",
        T::Cgroup => "cgroup",
        _ => return None,
    })
}

/// A pod member's namespaces: those the CRI spec shares with the pod's sandbox (they name
/// a host path, meaningless in the guest) join the sandbox container's in the guest, at
/// `/proc/<its guest pid>/ns/…`, so the pod's containers share loopback, IPC and
/// hostname as they would on runc. A container joining the sandbox's UTS namespace keeps
/// the pod's hostname and sets none of its own.
pub fn join_sandbox_namespaces(guest: &mut Spec, host: &Spec, sandbox_pid: u32) {
    let shared: Vec<LinuxNamespaceType> = host
        .linux()
        .as_ref()
        .and_then(|l| l.namespaces().clone())
        .unwrap_or_default()
        .into_iter()
        .filter(|n| n.path().is_some())
        .map(|n| n.typ())
        .collect();
    let mut joins_uts = false;
    if let Some(nss) = guest
        .linux_mut()
        .as_mut()
        .and_then(|l| l.namespaces_mut().as_mut())
    {
        for ns in nss.iter_mut().filter(|n| shared.contains(&n.typ())) {
            if let Some(file) = ns_file(ns.typ()) {
                ns.set_path(Some(format!("/proc/{sandbox_pid}/ns/{file}").into()));
                joins_uts |= ns.typ() == LinuxNamespaceType::Uts;
            }
        }
    }
    if joins_uts {
        guest.set_hostname(None);
    }
}

/// A container in the VM's own UTS namespace (CRI's host-network pods share the node's)
/// gets the VM's hostname, which is the pod's: the guest agent refuses a hostname
/// without a new UTS namespace, so it is dropped from the guest's spec.
pub fn drop_hostname_without_uts(guest: &mut Spec) {
    let new_uts = guest
        .linux()
        .as_ref()
        .and_then(|l| l.namespaces().as_ref())
        .is_some_and(|n| n.iter().any(|n| n.typ() == LinuxNamespaceType::Uts));
    if !new_uts {
        guest.set_hostname(None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hostname_without_a_uts_namespace_is_the_vms() {
        let mut s: Spec = serde_json::from_value(serde_json::json!({
            "ociVersion": "1.0.2", "hostname": "node1",
            "linux": {"namespaces": [{"type": "mount"}, {"type": "pid"}]},
        }))
        .unwrap();
        drop_hostname_without_uts(&mut s);
        assert_eq!(s.hostname(), &None);
        let mut own: Spec = serde_json::from_value(serde_json::json!({
            "ociVersion": "1.0.2", "hostname": "pod1",
            "linux": {"namespaces": [{"type": "mount"}, {"type": "uts"}]},
        }))
        .unwrap();
        drop_hostname_without_uts(&mut own);
        assert_eq!(own.hostname().as_deref(), Some("pod1"));
    }

    #[test]
    fn pod_members_join_the_sandboxs_shared_namespaces_in_the_guest() {
        let host: Spec = serde_json::from_value(serde_json::json!({
            "ociVersion": "1.0.2",
            "hostname": "pod1",
            "linux": {"namespaces": [
                {"type": "mount"},
                {"type": "network", "path": "/var/run/netns/cni-1"},
                {"type": "ipc", "path": "/proc/77/ns/ipc"},
                {"type": "uts", "path": "/proc/77/ns/uts"},
                {"type": "pid"},
            ]},
        }))
        .unwrap();
        let mut guest = host.clone();
        for ns in guest
            .linux_mut()
            .as_mut()
            .unwrap()
            .namespaces_mut()
            .as_mut()
            .unwrap()
        {
            ns.set_path(None);
        }
        join_sandbox_namespaces(&mut guest, &host, 12);
        let paths: Vec<Option<String>> = guest
            .linux()
            .as_ref()
            .unwrap()
            .namespaces()
            .as_ref()
            .unwrap()
            .iter()
            .map(|n| n.path().as_ref().map(|p| p.display().to_string()))
            .collect();
        assert_eq!(
            paths,
            vec![
                None,
                Some("/proc/12/ns/net".into()),
                Some("/proc/12/ns/ipc".into()),
                Some("/proc/12/ns/uts".into()),
                None,
            ]
        );
        assert_eq!(guest.hostname(), &None);
    }

    #[test]
    fn the_first_exit_wins_and_waiters_see_it() {
        let mut p = Proc::new(IoPaths::default());
        let mut rx = p.exit.subscribe();
        assert!(p.exited().is_none());
        assert!(p.set_exited(137));
        assert!(!p.set_exited(0));
        assert_eq!(p.exited().unwrap().status, 137);
        assert_eq!(p.status, Status::Stopped);
        assert!(rx.has_changed().unwrap());
        assert_eq!(rx.borrow_and_update().unwrap().status, 137);
    }

    #[test]
    fn exec_ids_select_the_process() {
        let mut c = Container {
            id: "c".into(),
            bundle: "/b".into(),
            rootfs_mount: None,
            init: Proc::new(IoPaths::default()),
            execs: BTreeMap::new(),
        };
        c.execs.insert(
            "e1".into(),
            Exec {
                process: Process::default(),
                proc: Proc::new(IoPaths::default()),
            },
        );
        c.proc_mut("e1").unwrap().pid = 7;
        assert_eq!(c.execs["e1"].proc.pid, 7);
        assert_eq!(c.proc_mut("").unwrap().pid, 0);
        assert!(c.proc_mut("nope").is_none());
    }
}
