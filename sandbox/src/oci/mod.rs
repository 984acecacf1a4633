//! The OCI side: bundles, the annotations sandbox-vm reads, the spec's validation and its
//! translation into a VM and agent requests.

pub mod annotations;
pub mod bundle;
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzz;
pub mod hooks;
pub mod translate;
pub mod validate;

/// Newest runtime-spec version this runtime speaks (reported by `state` and `features`).
pub const OCI_VERSION: &str = "1.2.0";

/// The OCI lifecycle states of a container or process (runtime-spec `state.status`), for
/// both front ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Creating,
    Created,
    Running,
    /// The sandbox's vCPUs are stopped (`pause`).
    Paused,
    Stopped,
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(match self {
            Status::Creating => "creating",
            Status::Created => "created",
            Status::Running => "running",
            Status::Paused => "paused",
            Status::Stopped => "stopped",
        })
    }
}
