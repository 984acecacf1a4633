//! The VMM as its own process: `sandbox-vm-vmm --config vm.json --api-sock PATH` (the `vmm`
//! crate's binary), reached through its control socket. Nothing but the VM runs in it, so
//! it can be confined alone.

use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::Duration;

use crate::network::Netns;
use crate::process::{last_line, ProcessError, Supervised};

/// How long the VMM may take to build the VM and open its control socket.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// The VMM binary's file name: built into the same target directory as `sandbox-vm` and
/// the shim, and installed beside them.
pub const VMM_BIN: &str = "sandbox-vm-vmm";
/// Names the VMM binary to run instead of the one beside the calling binary.
pub const VMM_BIN_ENV: &str = "SANDBOX_VM_VMM";

/// The VMM binary: `$SANDBOX_VM_VMM`, else [`VMM_BIN`] beside the running executable's
/// real path, else on `PATH`.
pub fn find_vmm() -> std::io::Result<PathBuf> {
    if let Some(p) = std::env::var_os(VMM_BIN_ENV) {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe()?.canonicalize()?;
    vmm_beside_or_on_path(&exe, &std::env::var_os("PATH").unwrap_or_default())
}

/// [`VMM_BIN`] in `exe`'s directory, else in the first directory of `path` that has it.
fn vmm_beside_or_on_path(exe: &Path, path: &std::ffi::OsStr) -> std::io::Result<PathBuf> {
    let beside = exe.parent().map(|d| d.join(VMM_BIN));
    beside
        .into_iter()
        .chain(std::env::split_paths(path).map(|d| d.join(VMM_BIN)))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!(
                    "{VMM_BIN} is neither beside {} nor on PATH (install it there, or set {VMM_BIN_ENV})",
                    exe.display()
                ),
            )
        })
}

/// The VMM process's exit codes (the same as `sandbox-vm boot`).
pub mod exit_code {
    /// The guest rebooted or powered off, or a `stop` request ended the run.
    pub const STOPPED: i32 = 0;
    /// A VMM error (bad config, KVM, a device).
    pub const VMM_ERROR: i32 = 1;
    /// The guest crashed (panic, triple fault, an instruction KVM cannot run).
    pub const GUEST_CRASH: i32 = 2;
}

/// How the VMM process ended, in one line for the user.
pub fn describe_exit(status: ExitStatus, log: &Path, console: &Path) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(exit_code::STOPPED), _) => "the VM stopped".into(),
        (Some(exit_code::GUEST_CRASH), _) => format!(
            "the guest crashed: {} (guest console: {})",
            last_line(log),
            console.display()
        ),
        (Some(c), _) => format!("the VMM failed (exit {c}): {}", last_line(log)),
        (None, Some(libc::SIGSYS)) => format!(
            "the VMM was killed by signal {} (SIGSYS: a system call outside its seccomp \
             filter; the kernel log names it: dmesg | grep type=1326)",
            libc::SIGSYS
        ),
        (None, Some(sig)) => format!("the VMM was killed by signal {sig}"),
        (None, None) => "the VMM ended".into(),
    }
}

/// The jail directory the VMM of `config` runs in ([`VmmProcess::start`] with `jail`), or
/// None (not asked for, or jailing is off on this host).
pub fn jail_dir(config: &Path, jail: bool) -> Option<PathBuf> {
    crate::jail::dir_for(config).filter(|_| jail)
}

/// What a restored clone must not share with its template: its host-side sockets and
/// console.
#[derive(Clone, Debug)]
pub struct CloneSockets {
    pub vsock: PathBuf,
    pub console_log: PathBuf,
    pub fs_sockets: Vec<PathBuf>,
}

/// A running VMM process.
#[derive(Debug)]
pub struct VmmProcess {
    proc: Supervised,
    api_sock: PathBuf,
}

impl VmmProcess {
    /// Starts `exe --config CONFIG --api-sock API_SOCK` (`exe`: the VMM binary, see
    /// [`find_vmm`]) and waits until its control socket accepts (the VM is then built and
    /// running).
    /// `jail` false keeps it out of the jail (a template build: the snapshot is written
    /// outside the state directory).
    pub fn start(
        exe: &Path,
        config: &Path,
        api_sock: &Path,
        log: &Path,
        netns: Option<&Netns>,
        jail: bool,
    ) -> Result<VmmProcess, ProcessError> {
        let mut cmd = Command::new(exe);
        cmd.arg("--config")
            .arg(config)
            .arg("--api-sock")
            .arg(api_sock);
        // `log` finds what a host's VMM needs (the kernel logs each call outside a filter).
        if let Some(mode) = std::env::var_os("SANDBOX_VM_SECCOMP") {
            cmd.arg("--seccomp").arg(mode);
        }
        if let Some(dir) = jail_dir(config, jail) {
            cmd.arg("--jail").arg(dir);
        }
        if let Some(ns) = netns {
            let fd = ns.file().as_raw_fd();
            // SAFETY: the closure runs in the forked child before exec and makes only the
            // setns system call (async-signal-safe, no allocation); `fd` stays open in the
            // parent, whose `Netns` outlives this call, so the child's copy is valid.
            unsafe {
                cmd.pre_exec(move || {
                    if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let mut proc = Supervised::spawn("the VMM", cmd, log)?;
        proc.wait_ready(READY_TIMEOUT, || UnixStream::connect(api_sock).is_ok())?;
        Ok(VmmProcess {
            proc,
            api_sock: api_sock.to_path_buf(),
        })
    }

    /// Starts `exe --restore DIR --api-sock API_SOCK` with the clone's own vsock
    /// socket, console and virtio-fs sockets, and waits until its control socket accepts.
    pub fn restore(
        exe: &Path,
        snapshot: &Path,
        clone: &CloneSockets,
        api_sock: &Path,
        log: &Path,
    ) -> Result<VmmProcess, ProcessError> {
        let mut cmd = Command::new(exe);
        cmd.arg("--restore")
            .arg(snapshot)
            .arg("--api-sock")
            .arg(api_sock)
            .arg("--vsock-uds")
            .arg(&clone.vsock)
            .arg("--serial-file")
            .arg(&clone.console_log);
        for s in &clone.fs_sockets {
            cmd.arg("--fs-socket").arg(s);
        }
        if let Some(mode) = std::env::var_os("SANDBOX_VM_SECCOMP") {
            cmd.arg("--seccomp").arg(mode);
        }
        let mut proc = Supervised::spawn("the VMM", cmd, log)?;
        proc.wait_ready(READY_TIMEOUT, || UnixStream::connect(api_sock).is_ok())?;
        Ok(VmmProcess {
            proc,
            api_sock: api_sock.to_path_buf(),
        })
    }

    /// Its pid.
    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// The control socket.
    pub fn api_sock(&self) -> &Path {
        &self.api_sock
    }

    /// Its log file.
    pub fn log(&self) -> &Path {
        self.proc.log()
    }

    /// The exit status if it has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.proc.try_status()
    }

    /// Waits for it to exit by itself.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        self.proc.wait_timeout(timeout)
    }

    /// Ends the VM: an orderly stop (SIGTERM, which the VMM turns into a `stop` of its run),
    /// then SIGKILL if it does not exit within `grace`.
    pub fn stop(&mut self, grace: Duration) -> Option<ExitStatus> {
        self.proc.terminate(grace)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_vmm_is_found_beside_the_caller_before_path() {
        let d = std::env::temp_dir().join(format!("svm-find-vmm-{}", std::process::id()));
        let (bin, other) = (d.join("bin"), d.join("other"));
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::create_dir_all(&other).unwrap();
        let exe = bin.join("sandbox-vm");
        let path = std::env::join_paths([&other]).unwrap();
        let err = vmm_beside_or_on_path(&exe, &path).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::NotFound);
        assert!(err.to_string().contains(VMM_BIN_ENV), "{err}");
        std::fs::write(other.join(VMM_BIN), b"").unwrap();
        assert_eq!(
            vmm_beside_or_on_path(&exe, &path).unwrap(),
            other.join(VMM_BIN)
        );
        std::fs::write(bin.join(VMM_BIN), b"").unwrap();
        assert_eq!(
            vmm_beside_or_on_path(&exe, &path).unwrap(),
            bin.join(VMM_BIN)
        );
        let _ = std::fs::remove_dir_all(d);
    }
}
