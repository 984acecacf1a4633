//! Per-task records: a container's init process and its execs, each with its streams, its
//! status and its exit, which `Wait` callers watch.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::SystemTime;

use oci_spec::runtime::Process;
use sandbox::stdio::Pumps;
use tokio::sync::watch;

use crate::io::{IoPaths, StdinCloser};

/// Where a process is in its life (never `Creating` here: a task exists once created).
pub use sandbox::oci::Status;

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
pub fn exit_code(info: &sandbox::ExitInfo) -> u32 {
    info.status.as_shell_status() as u32
}

#[cfg(test)]
mod tests {
    use super::*;

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
