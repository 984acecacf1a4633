//! The ttrpc Task service containerd calls: each request translated into a `Pod` call,
//! each state change published as a task event. Exits arrive from the watcher threads on
//! a channel; one task records them and publishes `/tasks/exit` (CRI's StopContainer
//! waits for it).

use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use containerd_shim::asynchronous::ExitSignal;
use containerd_shim::{TtrpcContext, TtrpcResult};
use containerd_shim_protos::api;
use containerd_shim_protos::events::task::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskIO, TaskPaused,
    TaskResumed, TaskStart,
};
use containerd_shim_protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim_protos::protobuf::MessageDyn;
use containerd_shim_protos::shim_async::Task;
use containerd_shim_protos::topics;
use tokio::sync::mpsc;

use crate::container::{Exit, Status};
use crate::error::ShimError;
use crate::io::IoPaths;
use crate::mount::RootfsMount;
use crate::pod::{CreateArgs, ExitMsg, Pod};
use crate::publisher::{oom_event, Publisher};
use sandbox::SandboxOps;

/// The Task service of one shim (one pod).
#[derive(Clone)]
pub struct Service {
    pod: Arc<Pod>,
    events: Events,
    exit: Arc<ExitSignal>,
}

/// Publishes task events to containerd in the shim's namespace.
#[derive(Clone)]
struct Events {
    publisher: Publisher,
    namespace: String,
}

impl Events {
    /// Queues the event (see `publisher`: in order, retried across containerd restarts).
    async fn publish(&self, topic: &str, event: Box<dyn MessageDyn>) {
        if let Err(e) = self.publisher.publish(topic, &self.namespace, &*event) {
            log::warn!("{e}");
        }
    }
}

/// The pid containerd is told for a task or exec: the shim's own, whatever the guest pid.
/// A guest pid means nothing on the host (it could name an unrelated host process), and
/// the VMM's pid is shared by a pod's tasks and does not exist before the pod's first
/// Create; the shim is a host process that outlives every task it reports. `Pids` lists
/// the guest pids.
fn task_pid(_guest_pid: u32) -> u32 {
    std::process::id()
}

pub fn timestamp(t: SystemTime) -> Timestamp {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let mut ts = Timestamp::new();
    ts.seconds = d.as_secs() as i64;
    ts.nanos = d.subsec_nanos() as i32;
    ts
}

fn status_proto(s: Status) -> api::Status {
    match s {
        Status::Creating | Status::Created => api::Status::CREATED,
        Status::Running => api::Status::RUNNING,
        Status::Paused => api::Status::PAUSED,
        Status::Stopped => api::Status::STOPPED,
    }
}

/// The shell-style status and time of an exit, or "now" for a process that never ran.
fn exit_fields(exit: Option<Exit>) -> (u32, Timestamp) {
    match exit {
        Some(e) => (e.status, timestamp(e.at)),
        None => (0, timestamp(SystemTime::now())),
    }
}

impl Service {
    /// The service, and the task that publishes exits for as long as the shim runs.
    pub fn new(
        pod: Arc<Pod>,
        exits: mpsc::UnboundedReceiver<ExitMsg>,
        publisher: Publisher,
        namespace: String,
        exit: Arc<ExitSignal>,
    ) -> Service {
        let svc = Service {
            pod,
            events: Events {
                publisher,
                namespace,
            },
            exit,
        };
        tokio::spawn(svc.clone().publish_exits(exits));
        svc
    }

    /// The pod this service drives (the Sandbox API drives it too).
    pub fn pod(&self) -> Arc<Pod> {
        self.pod.clone()
    }

    async fn publish_exits(self, mut exits: mpsc::UnboundedReceiver<ExitMsg>) {
        while let Some(m) = exits.recv().await {
            let Some((pid, exit)) = self.pod.record_exit(&m) else {
                continue;
            };
            let id = if m.exec_id.is_empty() {
                m.container_id.clone()
            } else {
                m.exec_id.clone()
            };
            log::info!(
                "{}/{} exited with {}",
                m.container_id,
                m.exec_id,
                exit.status
            );
            if m.oom_killed {
                // Before the exit: CRI keeps the reason it names (OOMKilled) when the
                // exit comes.
                self.events
                    .publish(
                        topics::TASK_OOM_EVENT_TOPIC,
                        Box::new(oom_event(&m.container_id)),
                    )
                    .await;
            }
            let ev = TaskExit {
                container_id: m.container_id,
                id,
                pid: task_pid(pid),
                exit_status: exit.status,
                exited_at: Some(timestamp(exit.at)).into(),
                ..Default::default()
            };
            self.events
                .publish(topics::TASK_EXIT_EVENT_TOPIC, Box::new(ev))
                .await;
        }
    }
}

/// The OCI `LinuxResources` an UpdateTaskRequest carries: containerd marshals them as
/// JSON in an `Any` typed `types.containerd.io/opencontainers/runtime-spec/1/LinuxResources`.
fn linux_resources(
    any: Option<&containerd_shim_protos::protobuf::well_known_types::any::Any>,
) -> Result<oci_spec::runtime::LinuxResources, ShimError> {
    let any = any.ok_or_else(|| ShimError::Resources("no resources in the update".into()))?;
    if !any.type_url.ends_with("/LinuxResources") {
        return Err(ShimError::Resources(format!(
            "resources of type {:?}, not LinuxResources",
            any.type_url
        )));
    }
    serde_json::from_slice(&any.value).map_err(|e| ShimError::Resources(e.to_string()))
}

#[async_trait]
impl Task for Service {
    async fn create(
        &self,
        _ctx: &TtrpcContext,
        req: api::CreateTaskRequest,
    ) -> TtrpcResult<api::CreateTaskResponse> {
        log::info!("create {} (bundle {})", req.id, req.bundle);
        let io = IoPaths {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        let rootfs = req
            .rootfs
            .iter()
            .map(|m| RootfsMount {
                typ: m.type_.clone(),
                source: m.source.clone(),
                options: m.options.clone(),
            })
            .collect();
        let pid = self
            .pod
            .create(CreateArgs {
                id: req.id.clone(),
                bundle: req.bundle.clone().into(),
                rootfs,
                io,
            })
            .await
            .inspect_err(|e| log::error!("create {}: {e}", req.id))?;
        let ev = TaskCreate {
            container_id: req.id.clone(),
            bundle: req.bundle.clone(),
            rootfs: req.rootfs.clone(),
            io: Some(TaskIO {
                stdin: req.stdin.clone(),
                stdout: req.stdout.clone(),
                stderr: req.stderr.clone(),
                terminal: req.terminal,
                ..Default::default()
            })
            .into(),
            pid: task_pid(pid),
            ..Default::default()
        };
        self.events
            .publish(topics::TASK_CREATE_EVENT_TOPIC, Box::new(ev))
            .await;
        Ok(api::CreateTaskResponse {
            pid: task_pid(pid),
            ..Default::default()
        })
    }

    async fn start(
        &self,
        _ctx: &TtrpcContext,
        req: api::StartRequest,
    ) -> TtrpcResult<api::StartResponse> {
        let pid = task_pid(self.pod.start(&req.id, &req.exec_id).await?);
        if req.exec_id.is_empty() {
            let ev = TaskStart {
                container_id: req.id.clone(),
                pid,
                ..Default::default()
            };
            self.events
                .publish(topics::TASK_START_EVENT_TOPIC, Box::new(ev))
                .await;
        } else {
            let ev = TaskExecStarted {
                container_id: req.id.clone(),
                exec_id: req.exec_id.clone(),
                pid,
                ..Default::default()
            };
            self.events
                .publish(topics::TASK_EXEC_STARTED_EVENT_TOPIC, Box::new(ev))
                .await;
        }
        Ok(api::StartResponse {
            pid,
            ..Default::default()
        })
    }

    async fn delete(
        &self,
        _ctx: &TtrpcContext,
        req: api::DeleteRequest,
    ) -> TtrpcResult<api::DeleteResponse> {
        let (guest_pid, exit) = self.pod.delete(&req.id, &req.exec_id).await?;
        let pid = task_pid(guest_pid);
        let (exit_status, exited_at) = exit_fields(exit);
        if req.exec_id.is_empty() {
            let ev = TaskDelete {
                container_id: req.id.clone(),
                pid,
                exit_status,
                exited_at: Some(exited_at.clone()).into(),
                ..Default::default()
            };
            self.events
                .publish(topics::TASK_DELETE_EVENT_TOPIC, Box::new(ev))
                .await;
        }
        Ok(api::DeleteResponse {
            pid,
            exit_status,
            exited_at: Some(exited_at).into(),
            ..Default::default()
        })
    }

    async fn exec(
        &self,
        _ctx: &TtrpcContext,
        req: api::ExecProcessRequest,
    ) -> TtrpcResult<api::Empty> {
        let process: oci_spec::runtime::Process =
            serde_json::from_slice(&req.spec.value).map_err(ShimError::ExecSpec)?;
        let io = IoPaths {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        self.pod.add_exec(&req.id, &req.exec_id, process, io)?;
        let ev = TaskExecAdded {
            container_id: req.id.clone(),
            exec_id: req.exec_id.clone(),
            ..Default::default()
        };
        self.events
            .publish(topics::TASK_EXEC_ADDED_EVENT_TOPIC, Box::new(ev))
            .await;
        Ok(api::Empty::new())
    }

    async fn state(
        &self,
        _ctx: &TtrpcContext,
        req: api::StateRequest,
    ) -> TtrpcResult<api::StateResponse> {
        let bundle = self.pod.with(&req.id, |c| c.bundle.display().to_string())?;
        let resp = self.pod.with_proc(&req.id, &req.exec_id, |p| {
            let (exit_status, exited_at) = match p.exited() {
                Some(e) => (e.status, Some(timestamp(e.at))),
                None => (0, None),
            };
            api::StateResponse {
                id: req.id.clone(),
                bundle,
                pid: task_pid(p.pid),
                status: status_proto(p.status).into(),
                stdin: p.io.stdin.clone(),
                stdout: p.io.stdout.clone(),
                stderr: p.io.stderr.clone(),
                terminal: p.io.terminal,
                exit_status,
                exited_at: exited_at.into(),
                exec_id: req.exec_id.clone(),
                ..Default::default()
            }
        })?;
        Ok(resp)
    }

    async fn kill(&self, _ctx: &TtrpcContext, req: api::KillRequest) -> TtrpcResult<api::Empty> {
        log::info!(
            "kill {}/{} signal {} all={}",
            req.id,
            req.exec_id,
            req.signal,
            req.all
        );
        self.pod
            .kill(&req.id, &req.exec_id, req.signal, req.all)
            .await?;
        Ok(api::Empty::new())
    }

    async fn wait(
        &self,
        _ctx: &TtrpcContext,
        req: api::WaitRequest,
    ) -> TtrpcResult<api::WaitResponse> {
        let mut rx = self
            .pod
            .with_proc(&req.id, &req.exec_id, |p| p.exit.subscribe())?;
        let exit = match rx.wait_for(Option::is_some).await {
            Ok(e) => e.expect("waited for Some"),
            Err(_) => return Err(ShimError::NotFound(format!("process {}", req.id)).into()),
        };
        Ok(api::WaitResponse {
            exit_status: exit.status,
            exited_at: Some(timestamp(exit.at)).into(),
            ..Default::default()
        })
    }

    async fn pids(
        &self,
        _ctx: &TtrpcContext,
        req: api::PidsRequest,
    ) -> TtrpcResult<api::PidsResponse> {
        let (sandbox, _) = self.pod.sandbox_for(&req.id)?;
        let id = req.id.clone();
        let procs = tokio::task::spawn_blocking(move || sandbox.processes(&id))
            .await
            .map_err(|e| ShimError::Internal(e.to_string()))?
            .map_err(ShimError::from)?;
        let processes = procs
            .into_iter()
            .map(|p| containerd_shim_protos::types::task::ProcessInfo {
                pid: p.pid as u32,
                ..Default::default()
            })
            .collect();
        Ok(api::PidsResponse {
            processes,
            ..Default::default()
        })
    }

    async fn pause(&self, _ctx: &TtrpcContext, req: api::PauseRequest) -> TtrpcResult<api::Empty> {
        self.pod.set_paused(&req.id, true).await?;
        let ev = TaskPaused {
            container_id: req.id.clone(),
            ..Default::default()
        };
        self.events
            .publish(topics::TASK_PAUSED_EVENT_TOPIC, Box::new(ev))
            .await;
        Ok(api::Empty::new())
    }

    async fn resume(
        &self,
        _ctx: &TtrpcContext,
        req: api::ResumeRequest,
    ) -> TtrpcResult<api::Empty> {
        self.pod.set_paused(&req.id, false).await?;
        let ev = TaskResumed {
            container_id: req.id.clone(),
            ..Default::default()
        };
        self.events
            .publish(topics::TASK_RESUMED_EVENT_TOPIC, Box::new(ev))
            .await;
        Ok(api::Empty::new())
    }

    async fn resize_pty(
        &self,
        _ctx: &TtrpcContext,
        req: api::ResizePtyRequest,
    ) -> TtrpcResult<api::Empty> {
        let (sandbox, _) = self.pod.sandbox_for(&req.id)?;
        let rows = req.height.min(u32::from(u16::MAX)) as u16;
        let cols = req.width.min(u32::from(u16::MAX)) as u16;
        let (id, exec_id) = (req.id.clone(), req.exec_id.clone());
        tokio::task::spawn_blocking(move || -> Result<(), ShimError> {
            let exec = (!exec_id.is_empty()).then_some(exec_id.as_str());
            Ok(sandbox.resize_tty(&id, exec, rows, cols)?)
        })
        .await
        .map_err(|e| ShimError::Internal(e.to_string()))??;
        Ok(api::Empty::new())
    }

    async fn close_io(
        &self,
        _ctx: &TtrpcContext,
        req: api::CloseIORequest,
    ) -> TtrpcResult<api::Empty> {
        if req.stdin {
            let closer = self
                .pod
                .with_proc(&req.id, &req.exec_id, |p| p.stdin.take())?;
            if let Some(c) = closer {
                c.close();
            }
        }
        Ok(api::Empty::new())
    }

    /// New cgroup limits for a container in the guest (CRI's UpdateContainerResources);
    /// the pod's VM must already hold them (see `SandboxOps::update`).
    async fn update(
        &self,
        _ctx: &TtrpcContext,
        req: api::UpdateTaskRequest,
    ) -> TtrpcResult<api::Empty> {
        let resources = linux_resources(req.resources.as_ref())?;
        log::info!(
            "update {}: {}",
            req.id,
            String::from_utf8_lossy(&req.resources.value)
        );
        let (sandbox, _) = self.pod.sandbox_for(&req.id)?;
        let id = req.id.clone();
        tokio::task::spawn_blocking(move || sandbox.update(&id, &resources))
            .await
            .map_err(|e| ShimError::Internal(e.to_string()))?
            .map_err(ShimError::from)
            .inspect_err(|e| log::error!("update {}: {e}", req.id))?;
        Ok(api::Empty::new())
    }

    async fn stats(
        &self,
        _ctx: &TtrpcContext,
        req: api::StatsRequest,
    ) -> TtrpcResult<api::StatsResponse> {
        let (sandbox, _) = self.pod.sandbox_for(&req.id)?;
        let id = req.id.clone();
        let stats = tokio::task::spawn_blocking(move || sandbox.stats(&id))
            .await
            .map_err(|e| ShimError::Internal(e.to_string()))?
            .map_err(ShimError::from)?;
        Ok(api::StatsResponse {
            stats: Some(crate::metrics::to_any(&stats)).into(),
            ..Default::default()
        })
    }

    async fn connect(
        &self,
        _ctx: &TtrpcContext,
        req: api::ConnectRequest,
    ) -> TtrpcResult<api::ConnectResponse> {
        self.pod.with(&req.id, |_| ())?;
        let pid = task_pid(0);
        Ok(api::ConnectResponse {
            shim_pid: pid,
            task_pid: pid,
            version: env!("CARGO_PKG_VERSION").into(),
            ..Default::default()
        })
    }

    async fn shutdown(
        &self,
        _ctx: &TtrpcContext,
        _req: api::ShutdownRequest,
    ) -> TtrpcResult<api::Empty> {
        if self.pod.is_empty() && !self.pod.has_api_sandbox() {
            log::info!("shutdown: no task left");
            self.pod.stop_vm().await;
            self.exit.signal();
        }
        Ok(api::Empty::new())
    }
}

#[cfg(test)]
mod tests {
    use containerd_shim_protos::protobuf::well_known_types::any::Any;

    use super::*;

    #[test]
    fn update_resources_are_containerds_json_any() {
        let mut any = Any::new();
        any.type_url = "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources".into();
        any.value =
            br#"{"memory":{"limit":67108864},"cpu":{"shares":2,"quota":50000,"period":100000},
            "devices":[{"allow":false,"access":"rwm"}]}"#
                .to_vec();
        let r = linux_resources(Some(&any)).unwrap();
        assert_eq!(r.memory().as_ref().unwrap().limit(), Some(64 << 20));
        assert_eq!(r.cpu().as_ref().unwrap().quota(), Some(50_000));
        assert!(matches!(
            linux_resources(None),
            Err(ShimError::Resources(_))
        ));
        any.type_url = "types.containerd.io/opencontainers/runtime-spec/1/WindowsResources".into();
        let e = linux_resources(Some(&any)).unwrap_err();
        assert!(e.to_string().contains("not LinuxResources"), "{e}");
        assert_eq!(
            e.code(),
            containerd_shim_protos::ttrpc::Code::INVALID_ARGUMENT
        );
    }
}
