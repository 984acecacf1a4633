//! `sandbox-vm`: an OCI runtime (runc's command line) that runs each container in its own
//! KVM microVM, plus `boot`, the developer command that boots a guest kernel with the VMM.

mod bench_cmd;
mod boot_cmd;
mod check;
mod commands;
mod lifecycle;
mod logging;
mod monitor;
mod plan;
mod ready;
mod state;
mod template_cmd;
mod testpoint;
mod update_cmd;
mod watch;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::bail;
use clap::Args;
use clap::{Parser, Subcommand};
use liboci_cli::StandardCmd;

use crate::lifecycle::CreateOpts;
use crate::state::Store;

/// Where container state lives unless `--root` says otherwise.
const DEFAULT_ROOT: &str = "/run/sandbox-vm";

/// The global flags (runc's), described as this runtime uses them.
#[derive(Args, Debug)]
struct GlobalOpts {
    /// Write log lines to this file instead of stderr (errors also go to stderr)
    #[arg(short, long, overrides_with("log"))]
    log: Option<PathBuf>,
    /// Log debug detail (phase timings of create, start and exec)
    #[arg(long)]
    debug: bool,
    /// Log line format: text or json (with json the last line of --log is the error, as
    /// podman and containerd expect) [default: text]
    #[arg(long)]
    log_format: Option<String>,
    /// Directory for container state [default: /run/sandbox-vm]
    #[arg(short, long)]
    root: Option<PathBuf>,
    /// Accepted for runc compatibility and ignored: cgroups live inside each sandbox's VM
    #[arg(short, long)]
    systemd_cgroup: bool,
}

#[derive(Parser)]
#[command(
    name = "sandbox-vm",
    version,
    about = "Run containers, each in its own KVM microVM (an OCI runtime with runc's command line)",
    after_help = "`sandbox-vm run DIR` runs the bundle in DIR (a directory with config.json) with a \
generated id; `run --bundle DIR ID` is runc's form.\n\
Not supported yet (they exit 1 saying so): checkpoint, events."
)]
struct Cli {
    #[command(flatten)]
    global: GlobalOpts,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    #[command(flatten)]
    Standard(Box<StandardCmd>),
    #[command(flatten)]
    Common(Box<CommonCmd>),
    Update(Box<update_cmd::UpdateArgs>),
    /// Boot a guest kernel in a microVM (developer command); exits 0 when the guest reboots
    /// or powers off, 2 when it crashes, 1 on a VMM error.
    Boot(Box<boot_cmd::BootArgs>),
    /// Boot the VM a bundle's container would get to agent-ready once, prepare that
    /// container's init in it (namespaces, proc, sysfs, /dev, masked paths) and save it as
    /// a template; later creates of matching containers restore it instead of booting,
    /// and the first container of each with the same mounts and namespaces takes the
    /// prepared init over (annotation io.sandbox-vm.template=off forces a cold boot).
    /// Prints its directory.
    Template(Box<template_cmd::TemplateArgs>),
    /// Whether this host can run sandboxes: KVM, guest kernel and image, virtiofsd, the
    /// containerd shim and containerd's config; one line per item, exit 1 if any failed.
    Check {
        /// containerd's config file to look for the runtime in
        #[arg(long, default_value = check::DEFAULT_CONTAINERD_CONFIG)]
        containerd_config: PathBuf,
    },
    /// The per-container host process that runs the VM (started by `create`).
    #[command(hide = true)]
    Monitor {
        container_id: String,
        /// Send the container's pty master to this socket (`create --console-socket`)
        #[arg(long)]
        console_socket: Option<PathBuf>,
        /// Start the container once created, before reporting ready (`run`)
        #[arg(long)]
        start: bool,
    },
    /// Benchmarks: `bench isolation` compares sandbox-vm with other OCI runtimes.
    Bench {
        #[command(subcommand)]
        cmd: sandbox_vm_bench::BenchCmd,
    },
}

/// runc's other commands (liboci-cli's `CommonCmd` but `update`, whose flags here are
/// runc's: sizes with units and -1).
#[derive(Subcommand)]
enum CommonCmd {
    Checkpoint(liboci_cli::Checkpoint),
    Events(liboci_cli::Events),
    Exec(liboci_cli::Exec),
    Features(liboci_cli::Features),
    List(liboci_cli::List),
    Pause(liboci_cli::Pause),
    Ps(liboci_cli::Ps),
    Resume(liboci_cli::Resume),
    Run(liboci_cli::Run),
    Spec(liboci_cli::Spec),
}

/// The global flags the monitor and background exec inherit.
fn global_args(g: &GlobalOpts) -> Vec<String> {
    let mut a = Vec::new();
    if let Some(l) = &g.log {
        a.push("--log".into());
        a.push(l.display().to_string());
    }
    if let Some(f) = &g.log_format {
        a.push("--log-format".into());
        a.push(f.clone());
    }
    if g.debug {
        a.push("--debug".into());
    }
    a
}

fn code(c: i32) -> ExitCode {
    ExitCode::from(c.clamp(0, 255) as u8)
}

/// Prints a command's output. A reader that went away (`sandbox-vm state ID | head -1`)
/// ends the output quietly, as SIGPIPE ends a C or Go tool; other write errors are errors.
fn print(s: String) -> anyhow::Result<ExitCode> {
    use std::io::Write;
    if s.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    let mut out = std::io::stdout().lock();
    match writeln!(out, "{s}").and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(anyhow::Error::new(e).context("cannot write to stdout"))
        }
        _ => Ok(ExitCode::SUCCESS),
    }
}

/// `sandbox-vm run bundle/`: when the one positional argument of `run` is a directory with a
/// `config.json` and `--bundle` was left at its default, it is the bundle, and the container
/// gets an id from the directory's name and this process's pid.
fn standalone_bundle(id: String, bundle: PathBuf) -> (String, PathBuf) {
    let dir = PathBuf::from(&id);
    if bundle != Path::new(".") || !dir.join("config.json").is_file() {
        return (id, bundle);
    }
    let name: String = std::fs::canonicalize(&dir)
        .ok()
        .and_then(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_default()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || "_.-".contains(*c))
        .take(48)
        .collect();
    let name = if name.is_empty() {
        "bundle".into()
    } else {
        name
    };
    (format!("{name}-{}", std::process::id()), dir)
}

/// What every command may need: the state store, the host's settings and the global
/// flags to hand on to a monitor.
struct Ctx<'a> {
    store: &'a Store,
    host: sandbox::HostConfig,
    global_args: Vec<String>,
}

fn dispatch(cli: Cli, store: &Store) -> anyhow::Result<ExitCode> {
    // The host's settings, once: from the environment and what is installed.
    let exe = std::env::current_exe().ok();
    let ctx = Ctx {
        store,
        host: sandbox::HostConfig::resolve(|k| std::env::var_os(k), exe.as_deref()),
        global_args: global_args(&cli.global),
    };
    match cli.command {
        Command::Boot(args) => boot_cmd::run(*args),
        Command::Check { containerd_config } => Ok(check::run(&ctx.host, &containerd_config)),
        Command::Template(args) => template_cmd::run(*args, &ctx.host),
        Command::Monitor {
            container_id,
            console_socket,
            start,
        } => Ok(code(monitor::run(
            store,
            &container_id,
            console_socket,
            start,
        ))),
        Command::Bench { cmd } => {
            bench_cmd::run(cmd)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Standard(cmd) => standard(*cmd, ctx),
        Command::Common(cmd) => common(*cmd, ctx),
        Command::Update(args) => {
            update_cmd::run(store, &args)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// runc's standard commands.
fn standard(cmd: StandardCmd, ctx: Ctx) -> anyhow::Result<ExitCode> {
    let store = ctx.store;
    match cmd {
        StandardCmd::Create(c) => {
            let opts = CreateOpts {
                id: c.container_id,
                bundle: c.bundle,
                pid_file: c.pid_file,
                console_socket: c.console_socket,
                global_args: ctx.global_args,
                start: false,
            };
            lifecycle::create(store, &ctx.host, &opts)?;
        }
        StandardCmd::Start(s) => lifecycle::start(store, &s.container_id)?,
        StandardCmd::State(s) => return print(commands::state(store, &s.container_id)?),
        StandardCmd::Kill(k) => lifecycle::kill(store, &k.container_id, &k.signal, k.all)?,
        StandardCmd::Delete(d) => lifecycle::delete(store, &d.container_id, d.force)?,
    }
    Ok(ExitCode::SUCCESS)
}

/// runc's other commands.
fn common(cmd: CommonCmd, ctx: Ctx) -> anyhow::Result<ExitCode> {
    let store = ctx.store;
    match cmd {
        CommonCmd::Run(r) => {
            let (id, bundle) = standalone_bundle(r.container_id, r.bundle);
            let opts = CreateOpts {
                id,
                bundle,
                pid_file: r.pid_file,
                console_socket: r.console_socket,
                global_args: ctx.global_args,
                start: true,
            };
            return Ok(code(commands::run(
                store, &ctx.host, &opts, r.detach, r.keep,
            )?));
        }
        CommonCmd::Exec(e) => {
            let opts = commands::ExecOpts {
                id: e.container_id,
                process_file: e.process,
                command: e.command,
                tty: e.tty,
                cwd: e.cwd,
                env: e.env,
                user: e.user,
                detach: e.detach,
                pid_file: e.pid_file,
                console_socket: e.console_socket,
                argv: std::env::args().collect(),
            };
            return Ok(code(commands::exec(store, &opts)?));
        }
        CommonCmd::Ps(p) => return print(commands::ps(store, &p.container_id, &p.format)?),
        CommonCmd::List(l) => return print(commands::list(store, &l.format, l.quiet)?),
        CommonCmd::Features(_) => return print(commands::features()),
        CommonCmd::Spec(s) => commands::spec(s.bundle.as_deref())?,
        CommonCmd::Checkpoint(_) => bail!("checkpoint is not supported"),
        CommonCmd::Events(_) => bail!("events is not supported yet"),
        CommonCmd::Pause(p) => lifecycle::pause(store, &p.container_id)?,
        CommonCmd::Resume(r) => lifecycle::resume(store, &r.container_id)?,
    }
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let log_path: Option<PathBuf> = cli.global.log.clone();
    let json = cli.global.log_format.as_deref() == Some("json");
    if let Err(e) = logging::init(
        log_path.as_deref(),
        cli.global.log_format.as_deref(),
        cli.global.debug,
    ) {
        logging::report_error(None, false, &e.to_string());
        return ExitCode::from(1);
    }
    let store = Store::new(
        cli.global
            .root
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_ROOT)),
    );
    match dispatch(cli, &store) {
        Ok(code) => code,
        Err(e) => {
            logging::report_error(log_path.as_deref(), json, &format!("{e:#}"));
            ExitCode::from(1)
        }
    }
}

#[cfg(test)]
mod standalone_tests {
    use super::*;

    #[test]
    fn a_bundle_directory_as_the_run_argument() {
        let d = std::env::temp_dir().join(format!("svm-standalone-{}", std::process::id()));
        let b = d.join("my bundle!");
        std::fs::create_dir_all(&b).unwrap();
        std::fs::write(b.join("config.json"), "{}").unwrap();
        let arg = b.to_string_lossy().into_owned();
        let (id, bundle) = standalone_bundle(arg.clone(), PathBuf::from("."));
        assert_eq!(bundle, b);
        assert_eq!(id, format!("mybundle-{}", std::process::id()));
        // An explicit --bundle, or an id that is no bundle, keeps runc's meaning.
        assert_eq!(
            standalone_bundle(arg.clone(), PathBuf::from("/x")),
            (arg, PathBuf::from("/x"))
        );
        assert_eq!(
            standalone_bundle("c1".into(), PathBuf::from(".")),
            ("c1".into(), PathBuf::from("."))
        );
        let _ = std::fs::remove_dir_all(d);
    }
}
