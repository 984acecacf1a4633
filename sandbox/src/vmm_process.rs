//! The VMM as its own process: `sandbox-vm-vmm --config vm.json --api-sock PATH` (the `vmm`
//! crate's binary), reached through its control socket. Nothing but the VM runs in it, so
//! it can be confined alone.

use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::Duration;

use crate::cgroup::HostCgroup;
use crate::network::Netns;
use crate::paths::SandboxPaths;
use crate::process::{last_line, ProcessError, Supervised};

/// How long the VMM may take to build the VM and open its control socket.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// The VMM binary's file name: built into the same target directory as `sandbox-vm` and
/// the shim, and installed beside them.
pub const VMM_BIN: &str = "sandbox-vm-vmm";

/// How the VMM process is run.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct VmmRun {
    /// The VMM binary.
    pub exe: PathBuf,
    /// In its jail (a template build never is: it writes its snapshot outside).
    pub jail: bool,
    /// Its `--seccomp` mode, when not its default.
    pub seccomp: Option<String>,
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

/// What a restored clone must not share with its template: its host-side sockets and
/// console, and its NICs' MACs (the pod interfaces').
#[derive(Clone, Debug)]
pub struct CloneSockets {
    pub vsock: PathBuf,
    pub console_log: PathBuf,
    pub fs_sockets: Vec<PathBuf>,
    pub macs: Vec<String>,
}

/// A running VMM process.
#[derive(Debug)]
pub struct VmmProcess {
    proc: Supervised,
}

impl VmmProcess {
    /// Starts `EXE --config vm.json --api-sock vmm.sock` for the sandbox at `paths` (in
    /// the pod's `netns`, in the jail with `jail`, in the pod's `cgroup`) and waits until
    /// its control socket accepts (the VM is then built and running).
    pub fn start(
        run: &VmmRun,
        paths: &SandboxPaths,
        netns: Option<&Netns>,
        jail: bool,
        cgroup: Option<&HostCgroup>,
    ) -> Result<VmmProcess, ProcessError> {
        let mut cmd = Command::new(&run.exe);
        cmd.arg("--config")
            .arg(&paths.vm_config)
            .arg("--api-sock")
            .arg(&paths.api_sock);
        // `log` finds what a host's VMM needs (the kernel logs each call outside a filter).
        if let Some(mode) = &run.seccomp {
            cmd.arg("--seccomp").arg(mode);
        }
        if jail {
            cmd.arg("--jail").arg(paths.dir.join(crate::jail::DIR_NAME));
            // The jail's own cgroup below the pod's (crate::cgroup).
            if let Some(cg) = cgroup {
                cmd.arg("--jail-cgroup-parent").arg(cg.path().rel());
            }
        }
        if let Some(cg) = cgroup {
            cg.place(&mut cmd);
        }
        if let Some(ns) = netns {
            join_netns(&mut cmd, ns);
        }
        Self::spawn(cmd, paths)
    }

    /// Starts `EXE --restore DIR --api-sock vmm.sock` with the clone's own vsock
    /// socket, console, virtio-fs sockets and MACs (in the pod's `netns`, where its NIC's
    /// TAP has the name the template's had, and in the pod's `cgroup`), and waits until
    /// its control socket accepts.
    pub fn restore(
        run: &VmmRun,
        snapshot: &Path,
        clone: &CloneSockets,
        paths: &SandboxPaths,
        netns: Option<&Netns>,
        cgroup: Option<&HostCgroup>,
    ) -> Result<VmmProcess, ProcessError> {
        let mut cmd = Command::new(&run.exe);
        cmd.arg("--restore")
            .arg(snapshot)
            .arg("--api-sock")
            .arg(&paths.api_sock)
            .arg("--vsock-uds")
            .arg(&clone.vsock)
            .arg("--serial-file")
            .arg(&clone.console_log);
        for s in &clone.fs_sockets {
            cmd.arg("--fs-socket").arg(s);
        }
        for m in &clone.macs {
            cmd.arg("--mac").arg(m);
        }
        if let Some(mode) = &run.seccomp {
            cmd.arg("--seccomp").arg(mode);
        }
        if let Some(cg) = cgroup {
            cg.place(&mut cmd);
        }
        if let Some(ns) = netns {
            join_netns(&mut cmd, ns);
        }
        Self::spawn(cmd, paths)
    }

    fn spawn(cmd: Command, paths: &SandboxPaths) -> Result<VmmProcess, ProcessError> {
        let mut proc = Supervised::spawn("the VMM", cmd, &paths.vmm_log)?;
        let api_sock = &paths.api_sock;
        proc.wait_ready(READY_TIMEOUT, || UnixStream::connect(api_sock).is_ok())?;
        Ok(VmmProcess { proc })
    }

    /// Its pid.
    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// Its log file.
    pub fn log(&self) -> &Path {
        self.proc.log()
    }

    /// The exit status if it has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.proc.try_status()
    }

    /// Ends the VM: an orderly stop (SIGTERM, which the VMM turns into a `stop` of its run),
    /// then SIGKILL if it does not exit within `grace`.
    pub fn stop(&mut self, grace: Duration) -> Option<ExitStatus> {
        self.proc.terminate(grace)
    }
}

/// Has `cmd`'s process join `ns` before it execs (the VMM opens its taps by name there).
fn join_netns(cmd: &mut Command, ns: &Netns) {
    let fd = ns.file().as_raw_fd();
    // SAFETY: the closure runs in the forked child before exec and makes only the setns
    // system call (async-signal-safe, no allocation); `fd` stays open in the parent, whose
    // `Netns` outlives the spawn (the caller holds it), so the child's copy is valid.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}
