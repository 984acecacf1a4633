//! Around the `sandbox-vm` OCI command line.

use std::path::Path;
use std::process::Command;

/// Deletes a container (`<runtime> --root ROOT delete --force ID`, stopping its VM) however
/// the test ends, so a failed assertion leaves no monitor behind.
pub struct Reap<'a> {
    runtime: &'a str,
    root: &'a Path,
    id: &'a str,
}

impl<'a> Reap<'a> {
    /// `runtime`: the `sandbox-vm` binary's path.
    pub fn new(runtime: &'a str, root: &'a Path, id: &'a str) -> Self {
        Reap { runtime, root, id }
    }
}

impl Drop for Reap<'_> {
    fn drop(&mut self) {
        let _ = Command::new(self.runtime)
            .arg("--root")
            .arg(self.root)
            .args(["delete", "--force", self.id])
            .output();
    }
}
