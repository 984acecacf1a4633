//! `plan.json`: what `create` decided and the monitor carries out (the container's sandbox
//! VM, the container, the virtio-fs backend), written once into the state directory.

use std::path::{Path, PathBuf};

use sandbox::oci::translate::ContainerPlan;
use serde::{Deserialize, Serialize};
use vmm_api::config::VmConfig;

/// Errors reading or writing the plan.
#[derive(Debug, thiserror::Error)]
#[error("cannot {what} {path}: {err}")]
pub struct PlanError {
    what: &'static str,
    path: PathBuf,
    err: String,
}

/// The plan of one container.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Plan {
    /// The sandbox's VM.
    pub vm: VmConfig,
    /// The container.
    pub container: ContainerPlan,
    /// The virtio-fs backend.
    pub virtiofsd: PathBuf,
    /// The pod's network namespace (its interfaces become the VM's NICs).
    #[serde(default)]
    pub netns: Option<PathBuf>,
}

fn path(dir: &Path) -> PathBuf {
    dir.join("plan.json")
}

impl Plan {
    /// Writes `<dir>/plan.json`.
    pub fn save(&self, dir: &Path) -> Result<(), PlanError> {
        let json = serde_json::to_vec(self).expect("plan serializes");
        std::fs::write(path(dir), json).map_err(|e| PlanError {
            what: "write",
            path: path(dir),
            err: e.to_string(),
        })
    }

    /// Reads `<dir>/plan.json`.
    pub fn load(dir: &Path) -> Result<Plan, PlanError> {
        let err = |e: String| PlanError {
            what: "read",
            path: path(dir),
            err: e,
        };
        let bytes = std::fs::read(path(dir)).map_err(|e| err(e.to_string()))?;
        serde_json::from_slice(&bytes).map_err(|e| err(e.to_string()))
    }
}
