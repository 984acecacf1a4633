//! A container init made ahead of time, in a template, and taken over by the first
//! container whose spec asks for the same.
//!
//! Most of a container init's setup does not depend on the container: its new
//! namespaces, and the kernel filesystems a spec mounts first (proc, sysfs, the `/dev`
//! tmpfs with its device nodes, devpts, mqueue, `/dev/shm`) with the masked and
//! read-only paths over them. Here each mount or bind is emulated kernel work of 30 to
//! 70 ms, about 1.5 s per container. [`prepare`] does all of that before a template's
//! snapshot, in a process that is PID 1 of its new PID namespace, with the mounts staged
//! under a tmpfs of its own (`<state dir>/.prepared-init`, in its mount namespace only);
//! then it waits. Every clone of the template restores it ready.
//!
//! When a container is created whose spec has the same [`Skeleton`], the agent hands the
//! process the rest ([`Claim`]: its rootfs, the spec's other mounts, hostname, process)
//! and its stdio (over the sync socket), and moves it into the container's cgroup. The
//! process binds the rootfs, moves each staged top-level mount into it (`MS_MOVE`, which
//! takes the mounts and masks under it along), makes the other mounts, enters the root
//! and from then on is an ordinary container init (`R`, wait for `S`, exec). Any other
//! spec is created as usual; so is every container after the first.
//!
//! The rootfs and the bind sources are mounted by the agent after the process made its
//! mount namespace (the share is mounted after a restore). They reach it by propagation:
//! as PID 1 the agent makes `/run` a shared mount first, and the prepared process keeps
//! its copy a slave of it until it is taken over.
//!
//! Sync protocol on top of [`crate::child`]'s: the process sends `K` once its skeleton is
//! built; the agent sends `G` with the stdio fds attached; the process answers `R` once
//! its root is built, and so on.

use std::fs::File;
use std::io::{self, IoSlice, IoSliceMut, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use agent_protocol::oci_spec::runtime::{Linux, LinuxNamespaceType, Mount, Spec};
use nix::mount::MsFlags;
use nix::sched::{unshare, CloneFlags};
use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};

use crate::child::{self, ChildError, ExecTarget, ProcessPlan};
use crate::mounts::{self, DeviceOp, MountOp};
use crate::process::{AgentStdio, Proc, Reaper};
use crate::spawn::{spawn, PidNs, SpawnError};
use crate::sync_socket::{self, SyncError};

/// Why an init could not be prepared or taken over.
#[derive(Debug, thiserror::Error)]
pub enum PreparedError {
    /// The spec's init cannot be made ahead.
    #[error("not supported: this container's init cannot be prepared: {0}")]
    Unfit(String),
    /// A system call failed.
    #[error("{op} failed: {cause}")]
    Sys {
        /// Operation.
        op: &'static str,
        /// Cause.
        cause: io::Error,
    },
    /// The process could not be started.
    #[error(transparent)]
    Spawn(#[from] SpawnError),
    /// The process failed or exited.
    #[error(transparent)]
    Sync(#[from] SyncError),
    /// The process exited before a container took it over.
    #[error("container process setup failed: the prepared init exited before it was taken over")]
    Gone,
    /// Two containers took it over.
    #[error("the prepared init was taken twice")]
    TakenTwice,
}

/// The staging directory, under the agent's state directory.
pub const STAGING_DIR: &str = ".prepared-init";

/// Filesystem types a prepared init mounts ahead (none of them depends on the container).
const KERNEL_FILESYSTEMS: [&str; 5] = ["proc", "sysfs", "tmpfs", "devpts", "mqueue"];

/// What a prepared init sets up before any container exists; two specs with the same
/// skeleton can use the same prepared init.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Skeleton {
    /// Where the mounts are staged (in the prepared process's mount namespace).
    pub staging: PathBuf,
    /// New namespaces, made when preparing (not PID: the spawning thread makes that one;
    /// not cgroup: it is made once the process is in the container's cgroup).
    pub unshare: CloneFlags,
    /// Whether the spec asks for a new cgroup namespace.
    pub cgroupns: bool,
    /// The spec's leading kernel-filesystem mounts, under `staging` (one per spec mount,
    /// so the spec's first `mounts.len()` are covered).
    pub mounts: Vec<MountOp>,
    /// Container paths of the mounts in `mounts` that are not under another one: each is
    /// moved into the rootfs, with what is under it.
    pub tops: Vec<PathBuf>,
    /// Device nodes (under `staging/dev`).
    pub devices: Vec<DeviceOp>,
    /// Masked paths (container paths).
    pub masked: Vec<String>,
    /// Read-only paths (container paths).
    pub readonly: Vec<String>,
    /// The process's capability bounding set, dropped to ahead (it is per process, and
    /// inherited by what the init execs; each drop is a system call).
    pub bounding: Option<u64>,
}

fn is_kernel_fs(m: &Mount) -> bool {
    let bind = mounts::parse_options(m.options().as_deref().unwrap_or(&[]))
        .flags
        .contains(MsFlags::MS_BIND);
    !bind
        && m.typ()
            .as_deref()
            .is_some_and(|t| KERNEL_FILESYSTEMS.contains(&t))
}

impl Skeleton {
    /// The skeleton of `spec`'s init, with its mounts staged under `staging`; or why the
    /// init cannot be prepared ahead.
    pub fn of(spec: &Spec, staging: &Path, cgroup_v2: bool) -> Result<Skeleton, String> {
        let linux = spec.linux().clone().unwrap_or_default();
        let (unshare, cgroupns) = new_namespaces(&linux)?;
        if linux.sysctl().as_ref().is_some_and(|s| !s.is_empty()) {
            return Err("it sets sysctls (written before /proc/sys is read-only)".into());
        }
        let all = spec.mounts().as_deref().unwrap_or(&[]);
        let covered = all.iter().take_while(|m| is_kernel_fs(m)).count();
        let (ahead, rest) = all.split_at(covered);
        let planned = mounts::plan_mounts(staging, ahead, cgroup_v2).map_err(|e| e.to_string())?;
        let tops = top_mounts(ahead)?;
        let devices = mounts::plan_devices(staging, linux.devices().as_deref().unwrap_or(&[]))
            .map_err(|e| e.to_string())?;
        if let Some(d) = devices
            .iter()
            .find(|d| !d.path.starts_with(staging.join("dev")))
        {
            return Err(format!("device {} is outside /dev", d.path.display()));
        }
        let masked = linux.masked_paths().clone().unwrap_or_default();
        let readonly = linux.readonly_paths().clone().unwrap_or_default();
        for p in masked.iter().chain(&readonly).map(Path::new) {
            check_masked(p, &tops, rest)?;
        }
        let bounding = spec
            .process()
            .as_ref()
            .and_then(|p| p.capabilities().as_ref())
            .map(|c| crate::security::plan_caps(c).bounding);
        Ok(Skeleton {
            bounding,
            staging: staging.to_path_buf(),
            unshare,
            cgroupns,
            mounts: planned,
            tops,
            devices,
            masked,
            readonly,
        })
    }
}

/// The new namespaces (PID and cgroup aside) of a spec that asks for new PID and mount
/// namespaces, and whether it asks for a new cgroup namespace.
fn new_namespaces(linux: &Linux) -> Result<(CloneFlags, bool), String> {
    let mut unshare = CloneFlags::empty();
    let (mut pid, mut cgroupns) = (false, false);
    for ns in linux.namespaces().as_deref().unwrap_or(&[]) {
        if ns.path().is_some() {
            return Err(format!("it joins an existing {:?} namespace", ns.typ()));
        }
        match ns.typ() {
            LinuxNamespaceType::Pid => pid = true,
            LinuxNamespaceType::Cgroup => cgroupns = true,
            LinuxNamespaceType::User => return Err("it has a user namespace".into()),
            t => {
                unshare |= crate::namespaces::find(t)
                    .ok_or_else(|| format!("{t:?} namespaces are not supported"))?
                    .0
            }
        }
    }
    if !pid || !unshare.contains(CloneFlags::CLONE_NEWNS) {
        return Err("it does not ask for new PID and mount namespaces".into());
    }
    Ok((unshare, cgroupns))
}

/// The destinations of `ahead` that are not under another one; each must come before
/// the mounts under it, and `/dev` must be among them.
fn top_mounts(ahead: &[Mount]) -> Result<Vec<PathBuf>, String> {
    let dests: Vec<&Path> = ahead.iter().map(|m| m.destination().as_path()).collect();
    let mut tops = vec![];
    for (i, d) in dests.iter().enumerate() {
        if dests[i + 1..].iter().any(|later| d.starts_with(later)) {
            return Err(format!(
                "{} is mounted before a mount at or above it",
                d.display()
            ));
        }
        if !dests[..i].iter().any(|e| d.starts_with(e)) {
            tops.push(d.to_path_buf());
        }
    }
    if !dests.contains(&Path::new("/dev")) {
        return Err("its first mounts do not include /dev".into());
    }
    Ok(tops)
}

/// A masked or read-only path `p` must be under one of `tops` and clear of the later
/// mounts (`rest`), which are made after the masks here, before them otherwise.
fn check_masked(p: &Path, tops: &[PathBuf], rest: &[Mount]) -> Result<(), String> {
    if !tops.iter().any(|t| p.starts_with(t) && p != t) {
        return Err(format!(
            "{} is masked or read-only but not under its first mounts",
            p.display()
        ));
    }
    if let Some(m) = rest
        .iter()
        .find(|m| m.destination().starts_with(p) || p.starts_with(m.destination()))
    {
        return Err(format!(
            "its mount at {} overlaps the masked or read-only {}",
            m.destination().display(),
            p.display()
        ));
    }
    Ok(())
}

impl Skeleton {
    /// The names of the fields in which `self` and `other` differ.
    pub fn differences(&self, other: &Skeleton) -> Vec<&'static str> {
        let fields = [
            ("staging", self.staging == other.staging),
            ("unshare", self.unshare == other.unshare),
            ("cgroupns", self.cgroupns == other.cgroupns),
            ("mounts", self.mounts == other.mounts),
            ("tops", self.tops == other.tops),
            ("devices", self.devices == other.devices),
            ("masked", self.masked == other.masked),
            ("readonly", self.readonly == other.readonly),
            ("bounding", self.bounding == other.bounding),
        ];
        fields
            .into_iter()
            .filter(|(_, same)| !same)
            .map(|(name, _)| name)
            .collect()
    }
}

/// What the agent hands a prepared init when a container takes it over.
#[derive(Debug)]
pub struct Claim {
    /// The container's rootfs (in the agent's view, reached by propagation).
    pub rootfs: PathBuf,
    /// The spec's `rootfsPropagation` for `/` (see [`child::RootPlan`]).
    pub propagation: Option<MsFlags>,
    /// The spec's mounts after the skeleton's, under `rootfs`.
    pub mounts: Vec<MountOp>,
    /// Use MS_MOVE + chroot instead of pivot_root.
    pub no_pivot: bool,
    /// Remount the root read-only at the end.
    pub root_readonly: bool,
    /// Hostname.
    pub hostname: Option<String>,
    /// The process (its stdio fds arrive with `G`).
    pub process: ProcessPlan,
}

/// Shared by the agent and the prepared process, which runs in the agent's memory (see
/// [`crate::spawn`]) and reads the claim once it got `G`.
#[derive(Debug)]
pub struct PreparedInit {
    skeleton: Skeleton,
    claim: OnceLock<(Claim, ExecTarget)>,
}

/// The agent's handle on a prepared init.
#[derive(Debug)]
pub struct Prepared {
    pid: i32,
    shared: Arc<PreparedInit>,
    sync: UnixStream,
}

fn sys(op: &'static str) -> impl FnOnce(io::Error) -> PreparedError {
    move |cause| PreparedError::Sys { op, cause }
}

/// Makes a prepared init for `spec`'s skeleton and waits until it is ready. As PID 1
/// (`share_run`), first makes `/run` a shared mount, so that the rootfs and share
/// mounted there later reach the process.
pub fn prepare(
    reaper: &Reaper,
    spec: &Spec,
    state_dir: &Path,
    cgroup_v2: bool,
    share_run: bool,
) -> Result<Prepared, PreparedError> {
    let staging = state_dir.join(STAGING_DIR);
    let skeleton = Skeleton::of(spec, &staging, cgroup_v2).map_err(PreparedError::Unfit)?;
    std::fs::create_dir_all(&staging).map_err(sys("create the staging directory"))?;
    if share_run {
        let none = None::<&str>;
        nix::mount::mount(none, "/run", none, MsFlags::MS_SHARED, none)
            .map_err(|e| sys("make /run a shared mount")(e.into()))?;
    }
    let shared = Arc::new(PreparedInit {
        skeleton,
        claim: OnceLock::new(),
    });
    let (mut ours, theirs) = UnixStream::pair().map_err(sys("socketpair"))?;
    let init = shared.clone();
    let proc = reaper.spawn_registered(
        || {
            spawn(
                PidNs::New,
                move |sync| run_child(&init, sync),
                theirs,
                &mut ours,
            )
        },
        |pid| Proc::new(pid, "", None, AgentStdio::default()),
    )?;
    sync_socket::expect(
        &mut ours,
        b'K',
        "the prepared init exited while it was set up",
    )?;
    Ok(Prepared {
        pid: proc.pid,
        shared,
        sync: ours,
    })
}

/// Takes the prepared init out of `slot` if its skeleton is `wanted` (computed only when
/// an init is waiting) and it still runs.
pub fn take_matching(
    slot: &Mutex<Option<Prepared>>,
    wanted: impl FnOnce() -> Result<Skeleton, String>,
    reaper: &Reaper,
) -> Option<Prepared> {
    let mut slot = slot.lock().unwrap_or_else(|e| e.into_inner());
    let p = slot.as_ref()?;
    let wanted = match wanted() {
        Ok(w) => w,
        Err(why) => {
            crate::trace::mark(&format!("create: the prepared init does not fit: {why}"));
            return None;
        }
    };
    if p.shared.skeleton != wanted {
        if crate::trace::enabled() {
            crate::trace::mark(&format!(
                "create: the prepared init differs in {:?}",
                p.shared.skeleton.differences(&wanted)
            ));
        }
        return None;
    }
    if !reaper.has(p.pid) {
        crate::trace::mark("create: the prepared init is gone");
        *slot = None;
        return None;
    }
    slot.take()
}

impl Prepared {
    /// The skeleton this init was prepared with.
    pub fn skeleton(&self) -> &Skeleton {
        &self.shared.skeleton
    }

    /// Its pid (in the agent's PID namespace).
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Hands the process over to a container: `proc` takes its place in the process
    /// table, it joins the container's cgroup (`cgroup_procs`), gets `claim` and its
    /// stdio, and builds the container's root. Returns once it is ready for `S`, with
    /// the agent's end of its sync socket.
    pub fn claim(
        mut self,
        reaper: &Reaper,
        cgroup_procs: Vec<File>,
        mut claim: Claim,
        proc: Proc,
    ) -> Result<(Arc<Proc>, UnixStream), PreparedError> {
        let proc = reaper.replace(self.pid, proc).ok_or(PreparedError::Gone)?;
        let pid = self.pid.to_string();
        for mut f in cgroup_procs {
            f.write_all(pid.as_bytes())
                .map_err(sys("move the prepared init into the container's cgroup"))?;
        }
        let fds = claim.process.stdio.fds;
        let keep = std::mem::take(&mut claim.process.stdio._keep);
        let target = ExecTarget::new(&claim.process);
        if self.shared.claim.set((claim, target)).is_err() {
            return Err(PreparedError::TakenTwice);
        }
        sendmsg::<()>(
            self.sync.as_raw_fd(),
            &[IoSlice::new(b"G")],
            &[ControlMessage::ScmRights(&fds)],
            MsgFlags::empty(),
            None,
        )
        .map_err(|e| sys("hand the prepared init its stdio")(e.into()))?;
        // The process has its own copies now.
        drop(keep);
        crate::trace::mark("create: prepared init taken over");
        sync_socket::expect(
            &mut self.sync,
            b'R',
            "container process exited during setup",
        )?;
        Ok((proc, self.sync))
    }
}

// ---- In the prepared process (running in the agent's memory; see crate::child) ----

/// Runs in the new process; never returns.
fn run_child(init: &PreparedInit, sync: &UnixStream) -> ! {
    child::run_with(sync, |sync| setup(init, sync))
}

fn setup(
    init: &PreparedInit,
    sync: &mut &UnixStream,
) -> Result<std::convert::Infallible, ChildError> {
    let s = &init.skeleton;
    child::close_other_fds(
        [sync.as_raw_fd()]
            .into_iter()
            .chain(crate::trace::fd())
            .collect(),
    );
    if !s.unshare.is_empty() {
        unshare(s.unshare).map_err(child_sys("unshare"))?;
    }
    build_skeleton(s)?;
    crate::trace::mark("prepared init: skeleton built");
    sync.write_all(b"K").map_err(|cause| ChildError::Sys {
        op: "report prepared",
        cause,
    })?;
    let Some(stdio) = wait_for_claim(sync)? else {
        // The agent let go of it unclaimed.
        // SAFETY: _exit skips the agent's atexit handlers and buffers.
        unsafe { libc::_exit(0) }
    };
    let (c, target) = init.claim.get().ok_or_else(|| ChildError::Sys {
        op: "take over the prepared init",
        cause: io::Error::from_raw_os_error(libc::EINVAL),
    })?;
    crate::trace::mark("prepared init: taken over");
    child::set_oom_score_adj(c.process.oom_score_adj)?;
    if s.cgroupns {
        unshare(CloneFlags::CLONE_NEWCGROUP).map_err(child_sys("unshare(cgroup)"))?;
    }
    mounts::set_root_propagation(MsFlags::MS_PRIVATE | MsFlags::MS_REC)?;
    mounts::bind_rootfs(&c.rootfs)?;
    for top in &s.tops {
        let rel = top.strip_prefix("/").unwrap_or(top);
        mounts::move_mount(&s.staging.join(rel), &c.rootfs.join(rel))?;
    }
    for m in &c.mounts {
        mounts::do_mount(m)?;
    }
    mounts::enter_rootfs(&c.rootfs, c.no_pivot)?;
    child::finish_root(c.root_readonly, c.propagation, c.hostname.as_deref())?;
    child::wait_for_start(sync)?;
    child::exec_process(&c.process, target, stdio, sync.as_raw_fd())
}

fn child_sys(op: &'static str) -> impl FnOnce(nix::Error) -> ChildError {
    move |e| ChildError::Sys {
        op,
        cause: e.into(),
    }
}

/// In the prepared process's new mount namespace: a slave `/` (so that mounts the agent
/// makes under its shared `/run` arrive), a tmpfs at the staging directory, and the
/// skeleton's mounts, devices, masks and read-only paths under it; then the bounding set.
fn build_skeleton(s: &Skeleton) -> Result<(), ChildError> {
    mounts::set_root_propagation(MsFlags::MS_SLAVE | MsFlags::MS_REC)?;
    mounts::do_mount(&MountOp {
        source: Some("tmpfs".into()),
        target: s.staging.clone(),
        fstype: Some("tmpfs".into()),
        flags: MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        propagation: MsFlags::MS_PRIVATE,
        data: Some("mode=0755".into()),
    })?;
    for m in &s.mounts {
        mounts::do_mount(m)?;
    }
    mounts::create_devices(&s.staging, &s.devices)?;
    mounts::mask_paths(&s.staging, &s.masked)?;
    mounts::readonly_paths(&s.staging, &s.readonly)?;
    // Mounting at the take-over needs only the effective set, which this leaves alone.
    if let Some(b) = s.bounding {
        crate::security::drop_bounding(b)?;
    }
    Ok(())
}

/// Waits for `G` and the three stdio fds that come with it; `None` at EOF.
fn wait_for_claim(sync: &UnixStream) -> Result<Option<[RawFd; 3]>, ChildError> {
    let mut byte = [0u8; 1];
    let mut iov = [IoSliceMut::new(&mut byte)];
    let mut space = nix::cmsg_space!([RawFd; 3]);
    let msg = recvmsg::<()>(
        sync.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .map_err(child_sys("wait for the claim"))?;
    if msg.bytes == 0 {
        return Ok(None);
    }
    let mut got = None;
    for c in msg.cmsgs().map_err(child_sys("read the claim's fds"))? {
        if let ControlMessageOwned::ScmRights(fds) = c {
            if let Ok(three) = <[RawFd; 3]>::try_from(fds.as_slice()) {
                got = Some(three);
            }
        }
    }
    got.map(Some).ok_or_else(|| ChildError::Sys {
        op: "take the claim's stdio",
        cause: io::Error::from_raw_os_error(libc::EBADMSG),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn default_spec() -> Spec {
        let mut s = Spec::default();
        s.set_hostname(Some("h".into()));
        s
    }

    fn staging() -> PathBuf {
        PathBuf::from("/run/agent/.prepared-init")
    }

    #[test]
    fn the_default_spec_has_a_skeleton_of_three_tops() {
        let s = Skeleton::of(&default_spec(), &staging(), true).unwrap();
        let tops: Vec<_> = s.tops.iter().map(|t| t.to_str().unwrap()).collect();
        assert_eq!(tops, ["/proc", "/dev", "/sys"]);
        let all = default_spec().mounts().clone().unwrap();
        // Everything but the cgroup mount, which needs the container's cgroup namespace.
        assert_eq!(s.mounts.len(), all.len() - 1);
        assert_eq!(all[s.mounts.len()].typ().as_deref(), Some("cgroup"));
        assert!(s.mounts.iter().all(|m| m.target.starts_with(staging())));
        assert!(s
            .devices
            .iter()
            .all(|d| d.path.starts_with(staging().join("dev"))));
        assert!(s
            .unshare
            .contains(CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWUTS));
        assert!(!s.unshare.contains(CloneFlags::CLONE_NEWPID));
        assert!(!s.masked.is_empty() && !s.readonly.is_empty());
        // CAP_KILL, CAP_NET_BIND_SERVICE, CAP_AUDIT_WRITE.
        assert_eq!(s.bounding, Some(1 << 5 | 1 << 10 | 1 << 29));
    }

    #[test]
    fn what_depends_on_the_container_is_not_part_of_the_skeleton() {
        let a = Skeleton::of(&default_spec(), &staging(), true).unwrap();
        let mut other = default_spec();
        other.set_hostname(Some("other".into()));
        let mut mounts = other.mounts().clone().unwrap();
        mounts.push(
            serde_json::from_value(serde_json::json!({
                "destination": "/etc/hosts", "source": "/x/hosts", "options": ["rbind", "ro"]
            }))
            .unwrap(),
        );
        other.set_mounts(Some(mounts));
        assert_eq!(Skeleton::of(&other, &staging(), true).unwrap(), a);
    }

    #[test]
    fn specs_that_cannot_be_prepared_say_why() {
        let why = |edit: &dyn Fn(&mut Spec)| {
            let mut s = default_spec();
            edit(&mut s);
            Skeleton::of(&s, &staging(), true).unwrap_err()
        };
        let joined = why(&|s| {
            let mut l = s.linux().clone().unwrap();
            let mut ns = l.namespaces().clone().unwrap();
            ns[0].set_path(Some("/proc/1/ns/pid".into()));
            l.set_namespaces(Some(ns));
            s.set_linux(Some(l));
        });
        assert!(joined.contains("joins an existing"), "{joined}");
        let sysctl = why(&|s| {
            let mut l = s.linux().clone().unwrap();
            l.set_sysctl(Some([("net.ipv4.ip_forward".into(), "1".into())].into()));
            s.set_linux(Some(l));
        });
        assert!(sysctl.contains("sysctl"), "{sysctl}");
        let bind_first = why(&|s| {
            let mut m = s.mounts().clone().unwrap();
            m.insert(
                0,
                serde_json::from_value(serde_json::json!({
                    "destination": "/data", "source": "/x", "options": ["rbind"]
                }))
                .unwrap(),
            );
            s.set_mounts(Some(m));
        });
        assert!(bind_first.contains("/dev"), "{bind_first}");
        let over_mask = why(&|s| {
            let mut m = s.mounts().clone().unwrap();
            m.push(
                serde_json::from_value(serde_json::json!({
                    "destination": "/proc/kcore", "source": "/x", "options": ["bind"]
                }))
                .unwrap(),
            );
            s.set_mounts(Some(m));
        });
        assert!(over_mask.contains("overlaps"), "{over_mask}");
        let nested_first = why(&|s| {
            let mut m = s.mounts().clone().unwrap();
            let dev = m
                .iter()
                .position(|m| m.destination() == Path::new("/dev"))
                .unwrap();
            let d = m.remove(dev);
            let cgroup = m
                .iter()
                .position(|m| m.typ().as_deref() == Some("cgroup"))
                .unwrap();
            m.insert(cgroup, d);
            s.set_mounts(Some(m));
        });
        assert!(
            nested_first.contains("before a mount at or above"),
            "{nested_first}"
        );
    }
}
