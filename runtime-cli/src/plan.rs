//! `plan.json`: the sandbox `create` planned (`sandbox::PodPlan`, with the container in
//! it) and the monitor starts, written once into the state directory.

use std::path::{Path, PathBuf};

use sandbox::PodPlan;

/// Errors reading or writing the plan.
#[derive(Debug, thiserror::Error)]
#[error("cannot {what} {path}: {err}")]
pub struct PlanFileError {
    what: &'static str,
    path: PathBuf,
    err: String,
}

fn path(dir: &Path) -> PathBuf {
    dir.join("plan.json")
}

/// Writes `<dir>/plan.json`.
pub fn save(plan: &PodPlan, dir: &Path) -> Result<(), PlanFileError> {
    let json = serde_json::to_vec(plan).expect("plan serializes");
    std::fs::write(path(dir), json).map_err(|e| PlanFileError {
        what: "write",
        path: path(dir),
        err: e.to_string(),
    })
}

/// Reads `<dir>/plan.json`.
pub fn load(dir: &Path) -> Result<PodPlan, PlanFileError> {
    let err = |e: String| PlanFileError {
        what: "read",
        path: path(dir),
        err: e,
    };
    let bytes = std::fs::read(path(dir)).map_err(|e| err(e.to_string()))?;
    serde_json::from_slice(&bytes).map_err(|e| err(e.to_string()))
}
