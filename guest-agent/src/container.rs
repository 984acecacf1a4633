//! Containers: turning a CreateContainer/Exec request into a [`ChildPlan`], spawning
//! the child into the right PID namespace (a container's creation, [`create()`], has a
//! submodule of its own), and the container's lifecycle afterwards (start, signal,
//! processes, removal).

use std::collections::HashMap;
use std::ffi::CString;
use std::fs;
use std::io::{self, Write};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agent_protocol::oci_spec::runtime::Process;
use agent_protocol::{Event, ExecProcess, ExitInfo, ExitStatus, ProcessInfo};
use nix::mount::{umount2, MntFlags};
use nix::sched::CloneFlags;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::cgroup::{Cgroup, CgroupError, CgroupManager};
use crate::child::{self, ChildPlan, ProcessPlan};
use crate::mounts::MountError;
use crate::prepared::{Prepared, PreparedError};
use crate::process::{Proc, Reaper};
use crate::sandbox::SandboxError;
use crate::seccomp::{Filter, SeccompError};
use crate::security::{plan_caps, plan_rlimits, warn_ignored_labels, Identity};
use crate::spawn::{spawn, PidNs, SpawnError};
use crate::stdio::{make_stdio, StdioError};
use crate::sync_socket::{self, SyncError};

mod create;
pub use create::create;

/// Container failures, each mapped to a protocol error code by the agent.
#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    /// The request or spec is invalid.
    #[error("invalid request: {0}")]
    Invalid(String),
    /// The spec asks for something the agent does not do.
    #[error("not supported: {0}")]
    NotSupported(String),
    /// No such process.
    #[error("{0}")]
    NotFound(String),
    /// Wrong state for the request.
    #[error("{0}")]
    State(String),
    /// The rootfs could not be found or mounted.
    #[error("rootfs: {0}")]
    Rootfs(String),
    /// The rootfs disk could not be found.
    #[error(transparent)]
    Disk(#[from] SandboxError),
    /// The seccomp profile cannot be compiled.
    #[error(transparent)]
    Seccomp(#[from] SeccompError),
    /// Mount planning failed.
    #[error(transparent)]
    Mount(#[from] MountError),
    /// cgroup setup failed.
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    /// Standard streams could not be created.
    #[error(transparent)]
    Stdio(#[from] StdioError),
    /// socketpair or a namespace file failed.
    #[error("{op} failed: {cause}")]
    Sys {
        /// Operation.
        op: &'static str,
        /// Cause.
        cause: io::Error,
    },
    /// The container process could not be started.
    #[error(transparent)]
    Spawn(#[from] SpawnError),
    /// The process reported an error before exec, or exited.
    #[error(transparent)]
    Sync(#[from] SyncError),
    /// A prepared init could not be made or taken over.
    #[error(transparent)]
    Prepared(#[from] PreparedError),
}

fn sys(op: &'static str) -> impl FnOnce(io::Error) -> ContainerError {
    move |cause| ContainerError::Sys { op, cause }
}

/// Publishes events (to subscribed connections).
pub type Publish = Arc<dyn Fn(Event) + Send + Sync>;

/// What containers need from the agent.
pub struct Env<'a> {
    /// Process table.
    pub reaper: &'a Reaper,
    /// cgroup hierarchies.
    pub cgroups: &'a CgroupManager,
    /// Event sink.
    pub publish: Publish,
    /// Where block-device rootfs are mounted.
    pub state_dir: &'a Path,
    /// Where disks are found by serial (`/sys/block`).
    pub sys_block: &'a Path,
    /// Use MS_MOVE + chroot instead of pivot_root.
    pub no_pivot: bool,
    /// A container init made ahead of time, if any (see [`crate::prepared`]).
    pub prepared: &'a Mutex<Option<Prepared>>,
}

/// A container.
pub struct Container {
    /// Id.
    pub id: String,
    /// The container's main process.
    pub init: Arc<Proc>,
    cgroup: Arc<Cgroup>,
    start: Mutex<Option<UnixStream>>,
    ns_names: Vec<(CloneFlags, &'static str)>,
    pid_ns: bool,
    execs: Mutex<HashMap<String, Arc<Proc>>>,
    rootfs_mount: Option<PathBuf>,
    publish: Publish,
    /// The container's seccomp filter, for exec'd processes too.
    seccomp: Option<Filter>,
    /// The init's mount namespace, held until the container is removed. Without it the
    /// last reference goes with the init, whose exit then unmounts the container's whole
    /// tree (proc, sysfs, tmpfs, devpts, mqueue, the masked paths' binds) before its
    /// parent is told; emulated here, that is seconds between the exit and its report.
    _mount_ns: Option<fs::File>,
}

fn cstrings(v: &[String], what: &str) -> Result<Vec<CString>, ContainerError> {
    v.iter()
        .map(|s| {
            CString::new(s.as_bytes())
                .map_err(|_| ContainerError::Invalid(format!("{what} contains a NUL byte")))
        })
        .collect()
}

/// Validates an OCI process and turns it into a plan (stdio added later).
fn plan_process(
    p: &Process,
    stdio: crate::stdio::ChildStdio,
    seccomp: Option<Filter>,
) -> Result<ProcessPlan, ContainerError> {
    let args = p.args().clone().unwrap_or_default();
    if args.is_empty() || args[0].is_empty() {
        return Err(ContainerError::Invalid(
            "process.args must not be empty".into(),
        ));
    }
    let cwd = p.cwd().clone();
    if !cwd.is_absolute() {
        return Err(ContainerError::Invalid(format!(
            "process.cwd {cwd:?} must be absolute"
        )));
    }
    let mut env = p.env().clone().unwrap_or_default();
    if let Some(bad) = env.iter().find(|e| !e.contains('=')) {
        return Err(ContainerError::Invalid(format!(
            "process.env entry {bad:?} has no '='"
        )));
    }
    inherit_compat_env(&mut env, std::env::var("GLIBC_TUNABLES").ok());
    let path = env
        .iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
        .split(':')
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .collect();
    let u = p.user();
    let identity = Identity {
        uid: u.uid(),
        gid: u.gid(),
        groups: u.additional_gids().clone().unwrap_or_default(),
        umask: u.umask(),
        caps: p.capabilities().as_ref().map(plan_caps),
        rlimits: plan_rlimits(p.rlimits().as_deref().unwrap_or(&[])),
        no_new_privileges: p.no_new_privileges().unwrap_or(false),
        bounding_applied: false,
    };
    Ok(ProcessPlan {
        args: cstrings(&args, "process.args")?,
        env: cstrings(&env, "process.env")?,
        path,
        cwd,
        identity,
        stdio,
        seccomp,
        oom_score_adj: p.oom_score_adj(),
    })
}

fn console_size(p: &Process) -> Option<(u16, u16)> {
    p.console_size()
        .as_ref()
        .map(|b| (b.height() as u16, b.width() as u16))
}

fn spawn_monitor(proc: &Arc<Proc>, cgroup: &Arc<Cgroup>, publish: &Publish) {
    let base = cgroup.oom_kills();
    let fallback = proc.clone();
    let (proc, cgroup, publish) = (proc.clone(), cgroup.clone(), publish.clone());
    let r = crate::pool::run(move || {
        let status = proc.wait_exited_and_drained();
        let oom_killed = status == ExitStatus::Signal(libc::SIGKILL) && cgroup.oom_kills() > base;
        let exit = ExitInfo { status, oom_killed };
        proc.set_final(exit);
        publish(Event::Exit {
            container_id: proc.container_id.clone(),
            exec_id: proc.exec_id.clone(),
            exit,
        });
    });
    if r.is_err() {
        // Without a monitor nobody would report the exit: report it as
        // unknown right away rather than hang waiters.
        fallback.set_final(ExitInfo {
            status: ExitStatus::Code(-1),
            oom_killed: false,
        });
    }
}

impl Container {
    /// Lets the init process exec.
    pub fn start(&self) -> Result<(), ContainerError> {
        let mut s = self
            .start
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .ok_or_else(|| {
                ContainerError::State(format!("container {} was already started", self.id))
            })?;
        if self.init.exit_status().is_some() {
            return Err(ContainerError::State(format!(
                "container {} has exited",
                self.id
            )));
        }
        s.write_all(b"S").map_err(sys("signal start"))?;
        Ok(sync_socket::expect_exec(&mut s)?)
    }

    /// True once started and while the init process runs.
    fn running(&self) -> bool {
        self.start
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_none()
            && self.init.exit_status().is_none()
    }

    /// Runs an extra process in the container's namespaces and cgroup.
    pub fn exec(&self, env: &Env<'_>, req: ExecProcess) -> Result<Arc<Proc>, ContainerError> {
        if let Err(e) = agent_protocol::validate_container_id(&req.exec_id) {
            return Err(ContainerError::Invalid(format!("exec id: {e}")));
        }
        if !self.running() {
            return Err(ContainerError::State(format!(
                "container {} is not running",
                self.id
            )));
        }
        if self
            .execs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(&req.exec_id)
        {
            return Err(ContainerError::State(format!(
                "exec id {} is already used in container {}",
                req.exec_id, self.id
            )));
        }
        let pid = self.init.pid;
        let open = |name: &str| {
            fs::File::open(format!("/proc/{pid}/ns/{name}"))
                .map(OwnedFd::from)
                .map_err(sys("open container namespace"))
        };
        let mut join = vec![];
        for (flag, name) in &self.ns_names {
            join.push((open(name)?, *flag));
        }
        let pid_ns = if self.pid_ns {
            PidNs::Join(open("pid")?)
        } else {
            PidNs::Inherit
        };
        warn_ignored_labels(&self.id, &req.process, None);
        let terminal = req.process.terminal().unwrap_or(false);
        let (child_stdio, agent_stdio) =
            make_stdio(req.stdio, terminal, console_size(&req.process))?;
        let plan = ChildPlan {
            cgroup_procs: self.cgroup.procs_files()?,
            join,
            unshare: CloneFlags::empty(),
            root: None,
            new_userns: false,
            wait_for_start: false,
            process: plan_process(&req.process, child_stdio, self.seccomp.clone())?,
        };
        let (mut ours, theirs) = UnixStream::pair().map_err(sys("socketpair"))?;
        let proc = env.reaper.spawn_registered(
            || spawn(pid_ns, child::runner(plan), theirs, &mut ours),
            |pid| Proc::new(pid, &self.id, Some(&req.exec_id), agent_stdio),
        )?;
        sync_socket::read(&mut ours)?;
        spawn_monitor(&proc, &self.cgroup, &self.publish);
        self.execs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(req.exec_id, proc.clone());
        Ok(proc)
    }

    /// The main process (`None`) or an exec.
    pub fn process(&self, exec_id: Option<&str>) -> Result<Arc<Proc>, ContainerError> {
        match exec_id {
            None => Ok(self.init.clone()),
            Some(e) => self
                .execs
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(e)
                .cloned()
                .ok_or_else(|| {
                    ContainerError::NotFound(format!("no exec {e} in container {}", self.id))
                }),
        }
    }

    /// Pids of the container's processes (agent PID namespace).
    pub fn pids(&self) -> Vec<i32> {
        if let Some(p) = self.cgroup.pids() {
            return p;
        }
        // No cgroup hierarchy: the processes sharing the init's PID namespace.
        let init_ns = fs::read_link(format!("/proc/{}/ns/pid", self.init.pid)).ok();
        let mut pids = vec![];
        if let (true, Some(ns), Ok(dir)) = (self.pid_ns, init_ns, fs::read_dir("/proc")) {
            for e in dir.flatten() {
                let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                    continue;
                };
                if fs::read_link(format!("/proc/{pid}/ns/pid")).ok().as_ref() == Some(&ns) {
                    pids.push(pid);
                }
            }
        } else {
            pids.push(self.init.pid);
            pids.extend(
                self.execs
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .values()
                    .map(|p| p.pid),
            );
        }
        pids
    }

    /// Processes with their command names.
    pub fn processes(&self) -> Vec<ProcessInfo> {
        self.pids()
            .into_iter()
            .map(|pid| ProcessInfo {
                pid,
                command: fs::read_to_string(format!("/proc/{pid}/comm"))
                    .unwrap_or_default()
                    .trim_end()
                    .to_string(),
            })
            .collect()
    }

    /// Sends `sig` to one process, or to all with `all`.
    pub fn signal(&self, exec_id: Option<&str>, sig: i32, all: bool) -> Result<(), ContainerError> {
        let sig = Signal::try_from(sig)
            .map_err(|_| ContainerError::Invalid(format!("invalid signal {sig}")))?;
        if all {
            for pid in self.pids() {
                let _ = kill(Pid::from_raw(pid), sig);
            }
            return Ok(());
        }
        let p = self.process(exec_id)?;
        if p.exit_status().is_some() {
            return Err(ContainerError::State(
                "the process has already exited".into(),
            ));
        }
        kill(Pid::from_raw(p.pid), sig).map_err(|e| sys("kill")(e.into()))
    }

    /// Cgroup statistics.
    pub fn stats(&self) -> agent_protocol::ContainerStats {
        self.cgroup.stats()
    }

    /// Sets new cgroup limits (all or nothing: on an error the old ones stay).
    pub fn update(
        &self,
        cgroups: &CgroupManager,
        res: &agent_protocol::oci_spec::runtime::LinuxResources,
    ) -> Result<(), ContainerError> {
        Ok(cgroups.apply(&self.cgroup, res)?)
    }

    /// Stops everything (with `force`) and releases the cgroup and rootfs.
    pub fn destroy(&self, force: bool) -> Result<(), ContainerError> {
        let created = self
            .start
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some();
        if self.init.exit_status().is_none() && !created && !force {
            return Err(ContainerError::State(format!(
                "container {} is running; stop it first or remove it with force",
                self.id
            )));
        }
        let _ = kill(Pid::from_raw(self.init.pid), Signal::SIGKILL);
        for pid in self.pids() {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        // Unblocks a created init waiting for "start".
        self.start.lock().unwrap_or_else(|e| e.into_inner()).take();
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut procs = vec![self.init.clone()];
        procs.extend(
            self.execs
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .values()
                .cloned(),
        );
        for p in procs {
            p.abandon_unattached_outputs();
            while p.exit_status().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        self.cgroup.remove();
        if let Some(m) = &self.rootfs_mount {
            let _ = umount2(m, MntFlags::MNT_DETACH);
            if let Some(dir) = m.parent() {
                let _ = fs::remove_dir_all(dir);
            }
        }
        Ok(())
    }
}

/// On hosts whose KVM emulates guest kernel mode the VMM starts the agent with
/// `GLIBC_TUNABLES` set (vector state beyond SSE is not preserved between guest processes
/// there, so glibc must not pick AVX code). Processes get it too unless their spec sets it.
fn inherit_compat_env(env: &mut Vec<String>, tunables: Option<String>) {
    if let Some(t) = tunables {
        if !env.iter().any(|e| e.starts_with("GLIBC_TUNABLES=")) {
            env.push(format!("GLIBC_TUNABLES={t}"));
        }
    }
}

#[cfg(test)]
mod compat_env_tests {
    use super::inherit_compat_env;

    #[test]
    fn agent_tunables_reach_processes_unless_the_spec_sets_them() {
        let mut env = vec!["PATH=/bin".to_string()];
        inherit_compat_env(&mut env, Some("glibc.cpu.hwcaps=-AVX".into()));
        assert_eq!(env, ["PATH=/bin", "GLIBC_TUNABLES=glibc.cpu.hwcaps=-AVX"]);
        let mut own = vec!["GLIBC_TUNABLES=x".to_string()];
        inherit_compat_env(&mut own, Some("y".into()));
        assert_eq!(own, ["GLIBC_TUNABLES=x"]);
        let mut none = vec![];
        inherit_compat_env(&mut none, None);
        assert!(none.is_empty());
    }
}
