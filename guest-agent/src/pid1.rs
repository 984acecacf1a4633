//! Duties of the guest's init: the base filesystems, cgroups, and power-off.
//! Only used when the agent runs as PID 1; every step is best effort (a
//! missing filesystem must not stop the agent from serving).

use std::fs;
use std::path::Path;

use nix::mount::{mount, umount, MsFlags};

/// Mount failures (reported, never fatal).
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    /// A mount failed.
    #[error("mount {fstype} on {target} failed: {source}")]
    Mount {
        /// Filesystem type.
        fstype: &'static str,
        /// Mount point.
        target: &'static str,
        /// Cause.
        source: nix::Error,
    },
}

fn mnt(
    fstype: &'static str,
    target: &'static str,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<(), InitError> {
    let _ = fs::create_dir_all(target);
    match mount(Some(fstype), target, Some(fstype), flags, data) {
        Ok(()) | Err(nix::errno::Errno::EBUSY) => Ok(()),
        Err(source) => Err(InitError::Mount {
            fstype,
            target,
            source,
        }),
    }
}

/// Mounts /proc, /sys, /dev, /dev/pts, /dev/shm, /run and the cgroup
/// filesystems; returns the failures.
pub fn mount_base() -> Vec<InitError> {
    let nse = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    let steps = [
        mnt("proc", "/proc", nse, None),
        mnt("sysfs", "/sys", nse, None),
        mnt("devtmpfs", "/dev", MsFlags::MS_NOSUID, Some("mode=0755")),
        mnt(
            "devpts",
            "/dev/pts",
            MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
            Some("newinstance,ptmxmode=0666,mode=0620"),
        ),
        mnt(
            "tmpfs",
            "/dev/shm",
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some("mode=1777"),
        ),
        mnt(
            "tmpfs",
            "/run",
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some("mode=0755"),
        ),
    ];
    let mut errs: Vec<InitError> = steps.into_iter().filter_map(Result::err).collect();
    let _ = std::os::unix::fs::symlink("pts/ptmx", "/dev/ptmx");
    errs.extend(mount_cgroups());
    errs
}

/// cgroup v2 if it offers the memory controller, else v1 per controller.
fn mount_cgroups() -> Vec<InitError> {
    const ROOT: &str = "/sys/fs/cgroup";
    let nse = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    if mnt("cgroup2", ROOT, nse, None).is_ok() {
        let ctrls =
            fs::read_to_string(Path::new(ROOT).join("cgroup.controllers")).unwrap_or_default();
        if ctrls.split_whitespace().any(|c| c == "memory") {
            return vec![];
        }
        let _ = umount(ROOT);
    }
    let mut errs = vec![];
    if let Err(e) = mnt("tmpfs", ROOT, nse, Some("mode=0755")) {
        errs.push(e);
    }
    for (target, ctrls) in [
        ("/sys/fs/cgroup/memory", "memory"),
        ("/sys/fs/cgroup/cpu,cpuacct", "cpu,cpuacct"),
        ("/sys/fs/cgroup/pids", "pids"),
    ] {
        let _ = fs::create_dir_all(target);
        if let Err(source) = mount(Some("cgroup"), target, Some("cgroup"), nse, Some(ctrls)) {
            errs.push(InitError::Mount {
                fstype: "cgroup",
                target,
                source,
            });
        }
    }
    errs
}

/// Reboots the guest (the VMM treats the reset as a clean exit).
pub fn reboot() -> ! {
    nix::unistd::sync();
    let _ = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_AUTOBOOT);
    // reboot(2) only returns on error; PID 1 must not exit.
    loop {
        std::thread::park();
    }
}
