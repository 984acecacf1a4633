//! `sandbox-vm-vmm --config vm.json --api-sock PATH`: the VMM as a process of its own, with
//! its control API on a Unix socket (`vmm::api`). Nothing but the VM runs in it: the main
//! thread, the vCPU threads, the device event loop and the API thread.
//!
//! `sandbox-vm-vmm --restore DIR --api-sock PATH [overrides]` instead builds the VM from a
//! snapshot directory (`vmm::persist`; taken through the API's `snapshot`) and lets it
//! continue; the overrides give each clone its own sockets and identity. On stderr it
//! reports the restore's steps in ms since the process started:
//! `sandbox-vm-vmm: restored DIR: checked 1.2 ms, memory mapped 1.5 ms, state set 9.8 ms,
//! vCPUs running 10.1 ms`.
//!
//! The socket is bound only once the VM is built, so a caller that can connect knows the
//! VM is ready (`vmm_api::ApiClient::connect` retries until then); a stale socket file at
//! that path is replaced, and the socket is removed when the process exits.
//!
//! Each thread confines itself with its own seccomp filter (`vmm::seccomp`) once it
//! starts its loop, unless `--seccomp off`.
//!
//! It is found beside the binary that starts it (`sandbox-vm`, the shim): the sandbox
//! library runs it, and the jail (`--jail`, `vmm::jail`) is set up here, before the VM.
//!
//! Exit status, as `sandbox-vm boot`: 0 when the guest reboots or powers off, or the VM is
//! stopped on request (the API's `stop`, SIGTERM or SIGINT: an orderly stop, the vCPUs are
//! joined and the socket removed); 2 when the guest crashes; 1 for a VMM error, with one
//! line on stderr.

mod logger;
mod signals;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Parser;
use vmm::api::ApiServer;
use vmm::config::{SerialOutput, VmConfig};
use vmm::jail::{self, Jail};
use vmm::persist::RestoreOverrides;

/// The VMM as a process of its own, with a control API socket (started by the runtime).
#[derive(Parser)]
#[command(name = "sandbox-vm-vmm", version)]
struct VmmArgs {
    /// The VM config (JSON; the fields of `boot --config`)
    #[arg(long, required_unless_present = "restore", conflicts_with = "restore")]
    config: Option<PathBuf>,
    /// Restore the snapshot in this directory instead of booting
    #[arg(long, value_name = "DIR")]
    restore: Option<PathBuf>,
    /// With --restore: the kernel this VM would boot; refused unless the snapshot was
    /// taken with it
    #[arg(long, requires = "restore")]
    kernel: Option<PathBuf>,
    /// With --restore: the vsock device's host socket
    #[arg(long, requires = "restore", value_name = "PATH")]
    vsock_uds: Option<PathBuf>,
    /// With --restore: the guest's vsock CID
    #[arg(long, requires = "restore")]
    vsock_cid: Option<u64>,
    /// With --restore: append the serial console to this file
    #[arg(long, requires = "restore", value_name = "PATH")]
    serial_file: Option<PathBuf>,
    /// With --restore: MAC of the next net device (repeatable, in device order)
    #[arg(long, requires = "restore")]
    mac: Vec<String>,
    /// With --restore: vhost-user socket of the next virtio-fs device (repeatable)
    #[arg(long, requires = "restore", value_name = "PATH")]
    fs_socket: Vec<PathBuf>,
    /// Unix socket for the control API (mode 0600, bound once the VM is built, removed on
    /// exit)
    #[arg(long, value_name = "PATH")]
    api_sock: PathBuf,
    /// Per-thread seccomp filters: `kill` (a call outside a thread's allow-list kills the
    /// VMM with SIGSYS), `log` (allowed, logged by the kernel: to find what a host needs)
    /// or `off`
    #[arg(long, default_value = "kill", value_parser = ["kill", "log", "off"])]
    seccomp: String,
    /// Test only: the first thread of this kind (main, vcpu, devices, api) makes a system
    /// call outside its filter right after installing it
    #[arg(long, hide = true, value_name = "THREAD")]
    seccomp_selftest: Option<vmm::seccomp::ThreadKind>,
    /// Run the VMM jailed (`vmm::jail`): a memory cgroup, new pid, mount and IPC
    /// namespaces with DIR (an empty directory) as its root holding only what the VM
    /// opens, rlimits, and the unprivileged --jail-uid/--jail-gid once the VM is built
    #[arg(long, value_name = "DIR", conflicts_with = "restore")]
    jail: Option<PathBuf>,
    #[arg(long, default_value_t = jail::UID, requires = "jail")]
    jail_uid: u32,
    #[arg(long, default_value_t = jail::GID, requires = "jail")]
    jail_gid: u32,
    /// Make the jail's cgroup below this cgroup (a path below the hierarchy's root: the
    /// pod's cgroup, which then counts the VMM) instead of below the root
    #[arg(long, value_name = "PATH", requires = "jail")]
    jail_cgroup_parent: Option<PathBuf>,
}

/// Turns on the per-thread filters (installed by each thread as it starts its loop).
fn enable_seccomp(args: &VmmArgs) -> Result<()> {
    let mode = match args.seccomp.as_str() {
        "off" => return Ok(()),
        "log" => vmm::seccomp::Mode::Log,
        _ => vmm::seccomp::Mode::Kill,
    };
    vmm::seccomp::enable(mode, args.seccomp_selftest)?;
    Ok(())
}

fn main() -> ExitCode {
    let args = VmmArgs::parse();
    logger::init();
    match run(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("sandbox-vm-vmm: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// Runs the VM with its API server until it stops; maps how it ended to the exit status.
fn run(args: VmmArgs) -> Result<ExitCode> {
    let started = Instant::now();
    // Read before the jail: inside it only what the VM opens is left.
    let mut config = args
        .config
        .as_deref()
        .map(VmConfig::from_file)
        .transpose()?;
    let jail = match (&args.jail, &config) {
        (Some(dir), Some(config)) => Some(Jail {
            cgroup_parent: args.jail_cgroup_parent.clone(),
            ..Jail::for_vm(
                config,
                &args.api_sock,
                dir.clone(),
                args.jail_uid,
                args.jail_gid,
            )
        }),
        _ => None,
    };
    if let Some(j) = &jail {
        // The sandbox made the vsock directory for the default uid; another one gets it.
        let vsock = config.as_ref().and_then(|c| c.vsock.as_ref());
        if let Some(v) = vsock.filter(|_| (j.uid, j.gid) != (jail::UID, jail::GID)) {
            jail::give_vsock_dir(&v.uds_path, j.uid, j.gid)?;
        }
        // Before any thread: the parent stays outside, waits and ends as the VMM did.
        jail::fork_into_pid_namespace(j)?;
        jail::enter(j)?;
        if let Some(c) = config.as_mut() {
            j.vm_config_inside(c);
        }
    }
    // Sockets and files the VMM creates are its owner's alone.
    // SAFETY: umask only swaps the process's file-mode mask.
    unsafe { libc::umask(0o177) };
    enable_seccomp(&args)?;
    let stop_evt = signals::stop_on_signals()?;
    let (mut vm, restored) = build(&args, config.as_ref(), started)?;
    let server = ApiServer::start(&args.api_sock, vm.control(), Some(stop_evt))?;
    if let Some(j) = &jail {
        // Everything is open: from here on the VMM needs no access of its own.
        jail::drop_privileges(j.uid, j.gid)?;
    }
    let reason = match restored {
        Some((dir, t)) => vm.run_with(|| {
            eprintln!(
                "sandbox-vm-vmm: restored {}: checked {:.1} ms, memory mapped {:.1} ms, \
                 state set {:.1} ms, vCPUs running {:.1} ms",
                dir.display(),
                t.checked_ms + t.offset_ms,
                t.memory_mapped_ms + t.offset_ms,
                t.state_restored_ms + t.offset_ms,
                ms_since_start(started),
            )
        }),
        None => vm.run(),
    };
    drop(server);
    let reason = reason?;
    let secs = started.elapsed().as_secs_f64();
    if reason.is_clean() {
        eprintln!("sandbox-vm-vmm: {reason} after {secs:.1} s");
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("sandbox-vm-vmm: {reason} (after {secs:.1} s)");
        Ok(ExitCode::from(2))
    }
}

/// A restore's steps (`vmm::builder::RestoreTimings`) and when it started, in ms since
/// `run` started.
struct Restored {
    checked_ms: f64,
    memory_mapped_ms: f64,
    state_restored_ms: f64,
    offset_ms: f64,
}

/// Builds the VM from `--config` (read already) or `--restore`.
fn build(
    args: &VmmArgs,
    config: Option<&VmConfig>,
    started: Instant,
) -> Result<(vmm::vm::Vm, Option<(PathBuf, Restored)>)> {
    let Some(dir) = &args.restore else {
        let config = config.context("--config or --restore is required")?;
        return Ok((vmm::builder::build(config)?, None));
    };
    let overrides = RestoreOverrides {
        kernel: args.kernel.clone(),
        serial: args.serial_file.clone().map(SerialOutput::File),
        vsock_uds: args.vsock_uds.clone(),
        vsock_cid: args.vsock_cid,
        macs: args.mac.clone(),
        fs_sockets: args.fs_socket.clone(),
    };
    let offset_ms = ms_since_start(started);
    let (vm, t) = vmm::builder::build_from_snapshot(dir, &overrides)?;
    let r = Restored {
        checked_ms: t.checked_ms,
        memory_mapped_ms: t.memory_mapped_ms,
        state_restored_ms: t.state_restored_ms,
        offset_ms,
    };
    Ok((vm, Some((dir.clone(), r))))
}

fn ms_since_start(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1000.0
}
