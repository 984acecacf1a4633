//! The shim's errors and their ttrpc status codes (containerd maps NotFound,
//! AlreadyExists, FailedPrecondition and Unimplemented to its own error kinds).

use std::path::PathBuf;

use containerd_shim_protos::ttrpc::{self, Code};

/// Everything a Task call can fail with; one line each.
#[derive(Debug, thiserror::Error)]
pub enum ShimError {
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0} already exists")]
    Exists(String),
    #[error("{0}")]
    State(String),
    #[error("sandbox-vm does not support {0}")]
    Unsupported(&'static str),
    #[error("the pod has no VM: its sandbox container was not created by this shim or is gone")]
    NoVm,
    #[error("this shim's VM already belongs to container {0}")]
    SecondOwner(String),
    #[error("{0}")]
    Spec(#[from] crate::bundle::BundleError),
    #[error("{0}")]
    Plan(#[from] sandbox::PlanError),
    #[error("cannot create the VM's state directory {path}: {err}")]
    StateDir { path: PathBuf, err: std::io::Error },
    #[error("{0}")]
    Sandbox(#[from] sandbox::SandboxError),
    #[error("{0}")]
    Handle(#[from] sandbox::HandleError),
    #[error("{0}")]
    Mount(#[from] crate::mount::MountError),
    #[error("{0}")]
    Io(#[from] crate::io::IoError),
    #[error("bad exec process spec: {0}")]
    ExecSpec(serde_json::Error),
    #[error("bad update: {0}")]
    Resources(String),
    #[error("{0}")]
    PodConfig(#[from] crate::pod_config::PodConfigError),
    #[error("{0}")]
    PodFiles(#[from] crate::pod_files::PodFilesError),
    #[error("{0}")]
    Internal(String),
}

impl ShimError {
    /// The ttrpc status code containerd sees.
    pub fn code(&self) -> Code {
        match self {
            ShimError::NotFound(_) => Code::NOT_FOUND,
            ShimError::Exists(_) => Code::ALREADY_EXISTS,
            ShimError::State(_) | ShimError::NoVm | ShimError::SecondOwner(_) => {
                Code::FAILED_PRECONDITION
            }
            ShimError::Unsupported(_) => Code::UNIMPLEMENTED,
            ShimError::Handle(sandbox::HandleError::Resize(
                sandbox::resize::ResizeError::TooSmall { .. },
            )) => Code::FAILED_PRECONDITION,
            ShimError::Resources(_)
            | ShimError::Handle(sandbox::HandleError::Resize(
                sandbox::resize::ResizeError::Limits(_),
            )) => Code::INVALID_ARGUMENT,
            ShimError::Spec(_)
            | ShimError::Plan(sandbox::PlanError::Translate(_))
            | ShimError::Plan(sandbox::PlanError::Hooks(_))
            | ShimError::ExecSpec(_)
            | ShimError::PodConfig(_) => Code::INVALID_ARGUMENT,
            _ => Code::INTERNAL,
        }
    }
}

impl From<ShimError> for ttrpc::Error {
    fn from(e: ShimError) -> ttrpc::Error {
        ttrpc::Error::RpcStatus(ttrpc::get_status(e.code(), e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_map_to_the_codes_containerd_understands() {
        let e: ttrpc::Error = ShimError::NotFound("container x".into()).into();
        match e {
            ttrpc::Error::RpcStatus(s) => {
                assert_eq!(s.code(), Code::NOT_FOUND);
                assert_eq!(s.message(), "container x not found");
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(ShimError::Unsupported("x").code(), Code::UNIMPLEMENTED);
        assert_eq!(ShimError::NoVm.code(), Code::FAILED_PRECONDITION);
    }
}
