//! sandbox-vm guest agent: PID 1 inside the sandbox VM (or a plain process
//! on a Unix socket for host tests). See README.md.

mod agent;
mod cgroup;
mod child;
mod clone;
mod container;
mod mounts;
mod namespaces;
mod network;
mod pid1;
mod pool;
mod prepared;
mod process;
mod sandbox;
mod seccomp;
mod security;
mod server;
mod spawn;
mod stdio;
mod sync_socket;
mod syscalls;
mod trace;
mod userns;

use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::Arc;

use agent_protocol::transport::VMADDR_CID_ANY;
use agent_protocol::{Endpoint, AGENT_VSOCK_PORT};
use anyhow::{bail, Context};
use nix::sys::signal::{pthread_sigmask, SigmaskHow};

const USAGE: &str =
    "usage: guest-agent [--unix PATH | --vsock-port PORT] [--state-dir DIR] [--no-pivot] [--sys-block DIR]";

struct Args {
    endpoint: Endpoint,
    state_dir: PathBuf,
    no_pivot: bool,
    sys_block: PathBuf,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut endpoint = Endpoint::Vsock {
        cid: VMADDR_CID_ANY,
        port: AGENT_VSOCK_PORT,
    };
    let mut state_dir = PathBuf::from("/run/sandbox-agent");
    let mut no_pivot = false;
    let mut sys_block = PathBuf::from("/sys/block");
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || {
            args.next()
                .with_context(|| format!("{a} needs a value; {USAGE}"))
        };
        match a.as_str() {
            "--unix" => endpoint = Endpoint::Unix(val()?.into()),
            "--vsock-port" => {
                let port = val()?.parse().context("--vsock-port takes a number")?;
                endpoint = Endpoint::Vsock {
                    cid: VMADDR_CID_ANY,
                    port,
                };
            }
            "--state-dir" => state_dir = val()?.into(),
            "--no-pivot" => no_pivot = true,
            "--sys-block" => sys_block = val()?.into(),
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            _ => bail!("unknown argument {a:?}; {USAGE}"),
        }
    }
    Ok(Args {
        endpoint,
        state_dir,
        no_pivot,
        sys_block,
    })
}

/// Makes sure fds 0-2 are open, so that no socket or pipe ever lands there
/// (children get their stdio by dup2 onto 0-2). As PID 1 without a console
/// from the kernel, stdout/stderr go to /dev/console so errors stay visible.
fn ensure_std_fds(pid1: bool) {
    use std::os::unix::fs::OpenOptionsExt;
    for fd in 0..3 {
        // SAFETY: F_GETFD only queries the fd.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } >= 0 {
            continue;
        }
        let open = |path: &str| {
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(libc::O_NOCTTY)
                .open(path)
        };
        let f = if pid1 && fd > 0 {
            open("/dev/console").or_else(|_| open("/dev/null"))
        } else {
            open("/dev/null")
        };
        if let Ok(f) = f {
            if f.as_raw_fd() == fd {
                // Keep it open for the life of the agent.
                std::mem::forget(f);
            }
        }
    }
}

fn run(pid1: bool) -> anyhow::Result<()> {
    let errs = if pid1 { pid1::mount_base() } else { vec![] };
    ensure_std_fds(pid1);
    for e in errs {
        eprintln!("guest-agent: {e}");
    }
    let args = parse_args()?;
    trace::init(&std::fs::read_to_string("/proc/cmdline").unwrap_or_default());
    if !pid1 {
        // Orphans of container processes come back to us to be reaped.
        // SAFETY: PR_SET_CHILD_SUBREAPER takes an integer argument.
        unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1 as libc::c_ulong) };
    }
    // Before any thread exists, so that all inherit the mask.
    pthread_sigmask(
        SigmaskHow::SIG_BLOCK,
        Some(&process::handled_signals()),
        None,
    )
    .context("cannot block signals")?;
    let agent = Arc::new(agent::Agent::new(agent::Config {
        pid1,
        state_dir: args.state_dir,
        no_pivot: args.no_pivot,
        sys_block: args.sys_block,
    }));
    let listener = args
        .endpoint
        .listen()
        .context("cannot listen for the host runtime")?;
    let sig_agent = agent.clone();
    std::thread::Builder::new()
        .stack_size(128 * 1024)
        .spawn(move || {
            process::signal_loop(sig_agent.reaper.clone(), || {
                // Power off elsewhere: this thread must keep reaping while
                // the containers are being killed.
                let a = sig_agent.clone();
                let _ = std::thread::Builder::new()
                    .stack_size(128 * 1024)
                    .spawn(move || a.power_off());
            })
        })
        .context("cannot start the signal thread")?;
    let err = server::serve(listener, agent);
    Err(err).context("cannot accept connections")
}

fn main() {
    let pid1 = std::process::id() == 1;
    if let Err(e) = run(pid1) {
        eprintln!("guest-agent: {e:#}");
        if pid1 {
            // PID 1 must never exit (the kernel would panic): reset the VM.
            pid1::reboot();
        }
        std::process::exit(1);
    }
}
