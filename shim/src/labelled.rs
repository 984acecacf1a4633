//! Task call errors that say what failed: every error a Task call returns reaches
//! containerd (and `kubectl describe`) as "CALL of task ID: why" (with the exec id for
//! an exec's calls), whatever produced it — this shim's errors or the ttrpc and shim
//! libraries' generic ones. The status code is kept: containerd acts on it.

use async_trait::async_trait;
use containerd_shim::{TtrpcContext, TtrpcResult};
use containerd_shim_protos::api;
use containerd_shim_protos::protobuf::well_known_types::empty::Empty;
use containerd_shim_protos::shim_async::Task;
use containerd_shim_protos::ttrpc::{self, Code};

/// A Task service whose errors name the call and the task (and exec) it was for.
pub struct Labelled<T>(pub T);

/// What a call was about: "create of task ID", "kill of exec EID in task ID".
pub fn subject(call: &str, id: &str, exec_id: &str) -> String {
    let id = if id.is_empty() { "(no id)" } else { id };
    if exec_id.is_empty() {
        format!("{call} of task {id}")
    } else {
        format!("{call} of exec {exec_id} in task {id}")
    }
}

/// `e` with the message prefixed by [`subject`]; an error that is no status becomes an
/// INTERNAL one.
pub fn label(call: &str, id: &str, exec_id: &str, e: ttrpc::Error) -> ttrpc::Error {
    let what = subject(call, id, exec_id);
    let (code, why) = match e {
        ttrpc::Error::RpcStatus(s) => (s.code(), s.message().to_string()),
        other => (Code::INTERNAL, other.to_string()),
    };
    let why = if why.is_empty() {
        "failed (no reason given)".to_string()
    } else {
        why
    };
    ttrpc::Error::RpcStatus(ttrpc::get_status(code, format!("{what}: {why}")))
}

/// Delegates each method to the inner service, labelling its error; `exec` methods'
/// requests carry an exec id, `task` methods' do not.
macro_rules! delegate {
    ($($kind:ident $method:ident($req:ty) -> $resp:ty, $call:literal;)*) => {
        #[async_trait]
        impl<T: Task + Send + Sync> Task for Labelled<T> {
            $(
                async fn $method(&self, ctx: &TtrpcContext, req: $req) -> TtrpcResult<$resp> {
                    let id = req.id.clone();
                    let exec_id = delegate!(@exec $kind req);
                    self.0
                        .$method(ctx, req)
                        .await
                        .map_err(|e| label($call, &id, &exec_id, e))
                }
            )*
        }
    };
    (@exec exec $req:ident) => { $req.exec_id.clone() };
    (@exec task $req:ident) => { String::new() };
}

delegate! {
    exec state(api::StateRequest) -> api::StateResponse, "state";
    task create(api::CreateTaskRequest) -> api::CreateTaskResponse, "create";
    exec start(api::StartRequest) -> api::StartResponse, "start";
    exec delete(api::DeleteRequest) -> api::DeleteResponse, "delete";
    task pids(api::PidsRequest) -> api::PidsResponse, "pids";
    task pause(api::PauseRequest) -> Empty, "pause";
    task resume(api::ResumeRequest) -> Empty, "resume";
    task checkpoint(api::CheckpointTaskRequest) -> Empty, "checkpoint";
    exec kill(api::KillRequest) -> Empty, "kill";
    exec exec(api::ExecProcessRequest) -> Empty, "exec";
    exec resize_pty(api::ResizePtyRequest) -> Empty, "resize of the pty";
    exec close_io(api::CloseIORequest) -> Empty, "close of stdin";
    task update(api::UpdateTaskRequest) -> Empty, "update";
    exec wait(api::WaitRequest) -> api::WaitResponse, "wait";
    task stats(api::StatsRequest) -> api::StatsResponse, "stats";
    task connect(api::ConnectRequest) -> api::ConnectResponse, "connect";
    task shutdown(api::ShutdownRequest) -> Empty, "shutdown";
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ShimError;

    /// A Task service that fails Kill with a shim error, Wait with a bare ttrpc error
    /// and leaves the rest to the generated defaults (NOT_FOUND, "... is not supported").
    struct Failing;

    #[async_trait]
    impl Task for Failing {
        async fn kill(&self, _: &TtrpcContext, req: api::KillRequest) -> TtrpcResult<Empty> {
            Err(ShimError::NotFound(format!("process {}", req.exec_id)).into())
        }
        async fn wait(
            &self,
            _: &TtrpcContext,
            _: api::WaitRequest,
        ) -> TtrpcResult<api::WaitResponse> {
            Err(ttrpc::Error::Others("io operation failed".into()))
        }
    }

    fn status(e: ttrpc::Error) -> (Code, String) {
        match e {
            ttrpc::Error::RpcStatus(s) => (s.code(), s.message().to_string()),
            other => panic!("not a status: {other:?}"),
        }
    }

    fn ctx() -> TtrpcContext {
        TtrpcContext::default()
    }

    #[tokio::test]
    async fn errors_name_the_call_and_the_task_and_keep_their_code() {
        let svc = Labelled(Failing);
        let mut kill = api::KillRequest::new();
        kill.id = "c1".into();
        kill.exec_id = "e7".into();
        let (code, msg) = status(svc.kill(&ctx(), kill).await.unwrap_err());
        assert_eq!(code, Code::NOT_FOUND);
        assert_eq!(msg, "kill of exec e7 in task c1: process e7 not found");

        let mut wait = api::WaitRequest::new();
        wait.id = "c2".into();
        let (code, msg) = status(svc.wait(&ctx(), wait).await.unwrap_err());
        assert_eq!(code, Code::INTERNAL);
        assert!(
            msg.starts_with("wait of task c2: ") && msg.contains("io operation failed"),
            "{msg}"
        );

        let mut pause = api::PauseRequest::new();
        pause.id = "c3".into();
        let (code, msg) = status(svc.pause(&ctx(), pause).await.unwrap_err());
        assert_eq!(code, Code::NOT_FOUND);
        assert!(
            msg.starts_with("pause of task c3: ") && msg.contains("not supported"),
            "{msg}"
        );
    }

    #[test]
    fn an_empty_id_or_reason_is_said_so() {
        let e = ttrpc::Error::RpcStatus(ttrpc::get_status(Code::INTERNAL, ""));
        let (_, msg) = status(label("create", "", "", e));
        assert_eq!(msg, "create of task (no id): failed (no reason given)");
    }
}
