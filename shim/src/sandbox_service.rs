//! The ttrpc Sandbox API service (`containerd.runtime.sandbox.v1.Sandbox`) containerd
//! 2.x calls with `sandboxer = "shim"`: each request a `Pod` call (`pod_sandbox_api.rs`).
//! The pid it reports is the shim's, as for tasks (`service.rs`).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use containerd_shim::asynchronous::ExitSignal;
use containerd_shim::{TtrpcContext, TtrpcResult};
use containerd_shim_protos::sandbox_api as api;
use containerd_shim_protos::sandbox_async::Sandbox;
use containerd_shim_protos::types::platform::Platform;

use crate::error::ShimError;
use crate::pod::{CreateSandboxArgs, Pod};
use crate::service::timestamp;

/// How often a ready sandbox's VM is checked for having ended by itself.
const VM_CHECK: Duration = Duration::from_secs(1);

/// The Sandbox API of one shim (one pod).
pub struct SandboxService {
    pod: Arc<Pod>,
    exit: Arc<ExitSignal>,
}

impl SandboxService {
    pub fn new(pod: Arc<Pod>, exit: Arc<ExitSignal>) -> SandboxService {
        SandboxService { pod, exit }
    }
}

/// Go's name for an architecture (OCI platforms use them).
pub fn go_arch(rust_arch: &str) -> &str {
    match rust_arch {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

#[async_trait]
impl Sandbox for SandboxService {
    async fn create_sandbox(
        &self,
        _ctx: &TtrpcContext,
        req: api::CreateSandboxRequest,
    ) -> TtrpcResult<api::CreateSandboxResponse> {
        log::info!(
            "create sandbox {} (bundle {}, netns {:?}, options {:?})",
            req.sandbox_id,
            req.bundle_path,
            req.netns_path,
            req.options.as_ref().map(|o| o.type_url.as_str())
        );
        let args = CreateSandboxArgs {
            id: req.sandbox_id.clone(),
            bundle: req.bundle_path.clone().into(),
            options: req
                .options
                .as_ref()
                .map(|o| (o.type_url.clone(), o.value.clone())),
            netns: req.netns_path.clone(),
        };
        self.pod
            .create_sandbox(args)
            .await
            .inspect_err(|e| log::error!("create sandbox {}: {e}", req.sandbox_id))?;
        Ok(api::CreateSandboxResponse::new())
    }

    async fn start_sandbox(
        &self,
        _ctx: &TtrpcContext,
        req: api::StartSandboxRequest,
    ) -> TtrpcResult<api::StartSandboxResponse> {
        let id = req.sandbox_id;
        let created_at = self
            .pod
            .start_sandbox(&id)
            .await
            .inspect_err(|e| log::error!("start sandbox {id}: {e}"))?;
        let pod = self.pod.clone();
        tokio::spawn(async move {
            while pod.check_sandbox_vm(&id).await {
                tokio::time::sleep(VM_CHECK).await;
            }
        });
        Ok(api::StartSandboxResponse {
            pid: std::process::id(),
            created_at: Some(timestamp(created_at)).into(),
            ..Default::default()
        })
    }

    async fn platform(
        &self,
        _ctx: &TtrpcContext,
        req: api::PlatformRequest,
    ) -> TtrpcResult<api::PlatformResponse> {
        self.pod.sandbox_state(&req.sandbox_id)?;
        let mut platform = Platform::new();
        platform.os = "linux".into();
        platform.architecture = go_arch(std::env::consts::ARCH).into();
        Ok(api::PlatformResponse {
            platform: Some(platform).into(),
            ..Default::default()
        })
    }

    async fn stop_sandbox(
        &self,
        _ctx: &TtrpcContext,
        req: api::StopSandboxRequest,
    ) -> TtrpcResult<api::StopSandboxResponse> {
        self.pod
            .stop_sandbox(&req.sandbox_id)
            .await
            .inspect_err(|e| log::error!("stop sandbox {}: {e}", req.sandbox_id))?;
        Ok(api::StopSandboxResponse::new())
    }

    async fn wait_sandbox(
        &self,
        _ctx: &TtrpcContext,
        req: api::WaitSandboxRequest,
    ) -> TtrpcResult<api::WaitSandboxResponse> {
        let mut rx = self.pod.wait_sandbox(&req.sandbox_id)?;
        let exit = match rx.wait_for(Option::is_some).await {
            Ok(e) => e.expect("waited for Some"),
            Err(_) => return Err(ShimError::NotFound(format!("sandbox {}", req.sandbox_id)).into()),
        };
        Ok(api::WaitSandboxResponse {
            exit_status: exit.status,
            exited_at: Some(timestamp(exit.at)).into(),
            ..Default::default()
        })
    }

    async fn sandbox_status(
        &self,
        _ctx: &TtrpcContext,
        req: api::SandboxStatusRequest,
    ) -> TtrpcResult<api::SandboxStatusResponse> {
        let s = self.pod.sandbox_state(&req.sandbox_id)?;
        Ok(api::SandboxStatusResponse {
            sandbox_id: req.sandbox_id,
            pid: std::process::id(),
            state: s.state.into(),
            created_at: Some(timestamp(s.created_at)).into(),
            exited_at: s.exited.map(|e| timestamp(e.at)).into(),
            ..Default::default()
        })
    }

    async fn ping_sandbox(
        &self,
        _ctx: &TtrpcContext,
        req: api::PingRequest,
    ) -> TtrpcResult<api::PingResponse> {
        self.pod.ping_sandbox(&req.sandbox_id)?;
        Ok(api::PingResponse::new())
    }

    async fn shutdown_sandbox(
        &self,
        _ctx: &TtrpcContext,
        req: api::ShutdownSandboxRequest,
    ) -> TtrpcResult<api::ShutdownSandboxResponse> {
        log::info!("shutdown sandbox {}", req.sandbox_id);
        self.pod.shutdown_sandbox(&req.sandbox_id).await?;
        self.exit.signal();
        Ok(api::ShutdownSandboxResponse::new())
    }

    async fn sandbox_metrics(
        &self,
        _ctx: &TtrpcContext,
        req: api::SandboxMetricsRequest,
    ) -> TtrpcResult<api::SandboxMetricsResponse> {
        let all = self.pod.sandbox_stats(&req.sandbox_id).await?;
        let mut resp = api::SandboxMetricsResponse::new();
        let m = resp.metrics.mut_or_insert_default();
        m.timestamp = Some(timestamp(std::time::SystemTime::now())).into();
        m.id = req.sandbox_id;
        m.data = Some(crate::metrics::to_any(&crate::metrics::sum(&all))).into();
        Ok(resp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn architectures_have_their_go_names() {
        assert_eq!(go_arch("x86_64"), "amd64");
        assert_eq!(go_arch("aarch64"), "arm64");
        assert_eq!(go_arch("riscv64"), "riscv64");
    }
}
