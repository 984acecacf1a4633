//! `containerd-shim-sandbox-vm-v2`: containerd's shim v2 for runtime type
//! `io.containerd.sandbox-vm.v2` (Kubernetes RuntimeClass handler `sandbox-vm`). One shim
//! process serves one pod and owns its one microVM.
//!
//! * `start` (containerd runs it with the bundle as cwd): starts the shim server grouped
//!   by the pod's `io.kubernetes.cri.sandbox-id` (or the task id when there is none; a
//!   Sandbox API sandbox's bundle has no config.json: its own id) and prints its address:
//!   bare for containerd 1.x, the JSON bootstrap version 3 for 2.x (`bootstrap`); a second
//!   `start` for the same pod gets the live server's address.
//! * `delete`: cleans up after a shim that died, prints a DeleteResponse.
//!
//! A failed `start` or `delete` prints one line naming the action, the task and its bundle
//! and why; a failed Task call names the call and the task (`labelled`).
//! * no action: the server. See `serve` for why it is not the library's.

mod bootstrap;
mod bundle;
mod cleanup;
mod container;
mod error;
mod io;
mod labelled;
mod metrics;
mod mount;
mod pod;
mod pod_config;
mod pod_files;
mod publisher;
mod sandbox_life;
mod sandbox_service;
mod service;

use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use async_trait::async_trait;
use containerd_shim::asynchronous::publisher::RemotePublisher;
use containerd_shim::asynchronous::{spawn, ExitSignal, Shim};
use containerd_shim::{Config, DeleteResponse, Flags, StartOpts};
use containerd_shim_protos::shim_async::create_task;
use containerd_shim_protos::ttrpc::r#async::transport::Listener;
use containerd_shim_protos::ttrpc::r#async::Server;

use crate::bundle::BundleError;
use crate::labelled::Labelled;
use crate::pod::Pod;
use crate::publisher::Publisher;
use crate::service::Service;

/// The runtime type containerd is configured with.
const RUNTIME_ID: &str = "io.containerd.sandbox-vm.v2";
/// Task API service names: containerd 1.6/1.7 call v2, 2.x calls v3; the messages are
/// the same on the wire, so one service answers both.
const TASK_V2: &str = "containerd.task.v2.Task";
const TASK_V3: &str = "containerd.task.v3.Task";
/// Where pods' VMs keep their state unless `$SANDBOX_VM_SHIM_ROOT` says otherwise.
const DEFAULT_STATE_ROOT: &str = "/run/sandbox-vm/shim";

fn state_root() -> PathBuf {
    std::env::var_os("SANDBOX_VM_SHIM_ROOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_ROOT))
}

/// The host's settings for every pod this shim serves, resolved once from containerd's
/// environment and what is installed.
fn host_config() -> sandbox::HostConfig {
    let exe = std::env::current_exe().ok();
    sandbox::HostConfig::resolve(|k| std::env::var_os(k), exe.as_deref())
}

/// The shim library's options: no reaping of our children behind `std::process`'s back
/// (the sandbox waits for its VMM and virtiofsd itself), no subreaper.
fn config() -> Config {
    Config {
        no_reaper: true,
        no_sub_reaper: true,
        ..Default::default()
    }
}

/// Starts the server for the pod of the bundle in the current directory (or finds the
/// one already serving it) and returns its address.
async fn spawn_server(opts: StartOpts) -> Result<String, BundleError> {
    if opts.id.is_empty() {
        return Err(BundleError::NoId);
    }
    let bundle = bundle::current()?;
    // A Sandbox API sandbox's bundle (containerd 2.x, `sandboxer = "shim"`) has no
    // config.json: it is a pod of its own.
    let grouping = if bundle.join("config.json").exists() {
        let spec = bundle::load_spec(&bundle)?;
        bundle::grouping(&bundle, &spec, &opts.id)?
    } else {
        opts.id.clone()
    };
    let address = spawn(opts, &grouping, Vec::new())
        .await
        .map_err(|err| BundleError::Spawn {
            grouping: grouping.clone(),
            err,
        })?;
    let path = bundle.join("address");
    std::fs::write(&path, &address).map_err(|err| BundleError::Write { path, err })?;
    Ok(address)
}

/// The `start` action: the address as the calling containerd reads it (see `bootstrap`;
/// with a bare address 1.7 and 2.x call the Task API by its v2 name, which the server
/// answers too).
async fn start(flags: &Flags) -> Result<(), BundleError> {
    use tokio::io::AsyncWriteExt;
    let opts = StartOpts {
        id: flags.id.clone(),
        publish_binary: flags.publish_binary.clone(),
        address: flags.address.clone(),
        ttrpc_address: std::env::var("TTRPC_ADDRESS").map_err(|_| BundleError::NoTtrpcAddress)?,
        namespace: flags.namespace.clone(),
        debug: flags.debug,
        ..Default::default()
    };
    let address = spawn_server(opts).await?;
    let containerd = PathBuf::from(&flags.publish_binary);
    let major = tokio::task::spawn_blocking(move || bootstrap::containerd_major(&containerd))
        .await
        .unwrap_or(None);
    let answer_text = bootstrap::Answer::for_major(major).format(&address);
    let mut out = tokio::io::stdout();
    let answer = |e: std::io::Error| BundleError::Answer(e.to_string());
    out.write_all(answer_text.as_bytes())
        .await
        .map_err(answer)?;
    out.flush().await.map_err(answer)
}

/// Cleans up after the crashed shim of the task whose bundle is `bundle`.
async fn delete_response(bundle: PathBuf) -> Result<DeleteResponse, BundleError> {
    tokio::task::spawn_blocking(move || cleanup::delete_leftovers(&bundle))
        .await
        .map_err(|e| BundleError::Answer(e.to_string()))??;
    let mut resp = DeleteResponse::new();
    resp.exit_status = 128 + libc::SIGKILL as u32;
    resp.exited_at =
        Some(containerd_shim::util::timestamp().map_err(|e| BundleError::Answer(e.to_string()))?)
            .into();
    Ok(resp)
}

/// The `delete` action: cleans up and prints the DeleteResponse.
async fn delete() -> Result<(), BundleError> {
    use containerd_shim_protos::protobuf::Message;
    use tokio::io::AsyncWriteExt;
    let resp = delete_response(bundle::current()?).await?;
    let bytes = resp
        .write_to_bytes()
        .map_err(|e| BundleError::Answer(e.to_string()))?;
    let mut out = tokio::io::stdout();
    let answer = |e: std::io::Error| BundleError::Answer(e.to_string());
    out.write_all(&bytes).await.map_err(answer)?;
    out.flush().await.map_err(answer)
}

struct SandboxShim {
    namespace: String,
    exit: Arc<ExitSignal>,
}

#[async_trait]
impl Shim for SandboxShim {
    type T = Service;

    async fn new(_runtime_id: &str, args: &Flags, _config: &mut Config) -> Self {
        SandboxShim {
            namespace: args.namespace.clone(),
            exit: Arc::new(ExitSignal::default()),
        }
    }

    async fn start_shim(&mut self, opts: StartOpts) -> containerd_shim::Result<String> {
        let id = opts.id.clone();
        spawn_server(opts)
            .await
            .map_err(|e| containerd_shim::Error::Other(bundle::describe("start", &id, None, &e)))
    }

    async fn delete_shim(&mut self) -> containerd_shim::Result<DeleteResponse> {
        let fail = |e: BundleError| containerd_shim::Error::Other(e.to_string());
        delete_response(bundle::current().map_err(fail)?)
            .await
            .map_err(fail)
    }

    async fn wait(&mut self) {
        self.exit.wait().await;
    }

    /// The library's publisher stops when dropped here: it loses every event after a
    /// containerd restart (see `publisher`), so the service has its own.
    async fn create_task_service(&self, publisher: RemotePublisher) -> Service {
        self.task_service(Publisher::spawn(&publisher.address))
    }
}

impl SandboxShim {
    fn task_service(&self, publisher: Publisher) -> Service {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let pod = Arc::new(Pod::new(
            host_config(),
            state_root(),
            self.namespace.clone(),
            tx,
        ));
        Service::new(
            pod,
            rx,
            publisher,
            self.namespace.clone(),
            self.exit.clone(),
        )
    }
}

/// Binds the server socket; `None` when a live shim already serves it (a second server
/// for the same pod then has nothing to do).
fn listen(socket: &str) -> anyhow::Result<Option<UnixListener>> {
    let path = Path::new(socket.strip_prefix("unix://").unwrap_or(socket));
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    match UnixListener::bind(path) {
        Ok(l) => Ok(Some(l)),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            if UnixStream::connect(path).is_ok() {
                return Ok(None);
            }
            std::fs::remove_file(path).with_context(|| format!("removing stale {socket}"))?;
            Ok(Some(
                UnixListener::bind(path).with_context(|| format!("binding {socket}"))?,
            ))
        }
        Err(e) => Err(e).with_context(|| format!("binding {socket}")),
    }
}

/// Tells `start` (which reads our stdout until EOF) that the server is up.
fn close_stdout() {
    // SAFETY: dup2 on two fds this process owns; stdout becomes a copy of stderr, which
    // closes the pipe `start` reads.
    unsafe {
        libc::dup2(libc::STDERR_FILENO, libc::STDOUT_FILENO);
    }
}

/// The shim server. The library's own serve path registers the Task service only under
/// its v3 name, which containerd 1.6/1.7 never call (they call `containerd.task.v2.Task`:
/// every request would fail as "service not found"), so this one registers both, and
/// the Sandbox API (`containerd.runtime.sandbox.v1.Sandbox`) on the same pod.
async fn serve(flags: Flags) -> anyhow::Result<()> {
    containerd_shim::logger::init(flags.debug, "info", &flags.namespace, &flags.id)
        .context("setting up the shim log")?;
    let Some(listener) = listen(&flags.socket)? else {
        close_stdout();
        return Ok(());
    };
    let mut cfg = config();
    let mut shim = SandboxShim::new(RUNTIME_ID, &flags, &mut cfg).await;
    let ttrpc_address = std::env::var("TTRPC_ADDRESS").context("TTRPC_ADDRESS is not set")?;
    let service = shim.task_service(Publisher::spawn(&ttrpc_address));
    let sandbox: Arc<dyn containerd_shim_protos::sandbox_async::Sandbox + Send + Sync> = Arc::new(
        sandbox_service::SandboxService::new(service.pod(), shim.exit.clone()),
    );
    let task: Arc<dyn containerd_shim_protos::shim_async::Task + Send + Sync> =
        Arc::new(Labelled(service));
    let mut services = create_task(task.clone());
    let v2 = create_task(task)
        .remove(TASK_V3)
        .context("the generated Task service has an unexpected name")?;
    services.insert(TASK_V2.to_string(), v2);
    services.extend(containerd_shim_protos::sandbox_async::create_sandbox(
        sandbox,
    ));
    let listener = Listener::try_from(listener).context("making the ttrpc listener")?;
    let mut server = Server::new()
        .add_listener(listener)
        .register_service(services);
    server.start().await.context("starting the ttrpc server")?;
    close_stdout();
    log::info!("sandbox-vm shim serving {}", flags.socket);
    shim.wait().await;
    log::info!("sandbox-vm shim exiting");
    let _ = server.shutdown().await;
    let _ = std::fs::remove_file(
        flags
            .socket
            .strip_prefix("unix://")
            .unwrap_or(&flags.socket),
    );
    Ok(())
}

#[tokio::main]
async fn main() {
    let args: Vec<_> = std::env::args_os().collect();
    let flags = match containerd_shim::parse(&args[1..]) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("{RUNTIME_ID}: {e}");
            std::process::exit(1);
        }
    };
    if flags.version {
        println!(
            "{RUNTIME_ID} (containerd-shim-sandbox-vm-v2) {}",
            env!("CARGO_PKG_VERSION")
        );
        return;
    }
    if flags.action == "start" || flags.action == "delete" {
        let result = match flags.action.as_str() {
            "start" => start(&flags).await,
            _ => delete().await,
        };
        if let Err(e) = result {
            let bundle = std::env::current_dir().ok();
            let line = bundle::describe(&flags.action, &flags.id, bundle.as_deref(), &e);
            eprintln!("{RUNTIME_ID}: {line}");
            std::process::exit(1);
        }
        return;
    }
    if flags.info {
        containerd_shim::asynchronous::run::<SandboxShim>(RUNTIME_ID, Some(config())).await;
        return;
    }
    if let Err(e) = serve(flags).await {
        log::error!("{e:#}");
        eprintln!("{RUNTIME_ID}: {e:#}");
        std::process::exit(1);
    }
}
