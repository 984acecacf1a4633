//! The OCI side: bundles, the annotations sandbox-vm reads, the spec's validation and its
//! translation into a VM and agent requests.

pub mod annotations;
pub mod bundle;
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzz;
pub mod translate;
pub mod validate;

/// Newest runtime-spec version this runtime speaks (reported by `state` and `features`).
pub const OCI_VERSION: &str = "1.2.0";
