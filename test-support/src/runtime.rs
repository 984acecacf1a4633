//! Around the `sandbox-vm` OCI command line and the `sandbox-vm-vmm` VMM process.

use std::path::Path;
use std::process::{Command, Stdio};

/// `<runtime> --root <root>` pointed at the guest kernel and agent disk
/// ([`with_guest`](crate::artifacts::with_guest)): an OCI command line to add a command to.
pub fn oci_command(runtime: &str, root: &Path) -> Command {
    let mut c = Command::new(runtime);
    crate::artifacts::with_guest(&mut c).arg("--root").arg(root);
    c
}

/// `<vmm> --api-sock <sock>` (`vmm`: the `sandbox-vm-vmm` binary's path), to which the
/// caller adds the VM (`--config FILE` or `--restore DIR`) and options: stdin and stdout
/// null, stderr piped (for the one-line errors the tests read).
pub fn vmm_command(vmm: &str, sock: &Path) -> Command {
    let mut c = Command::new(vmm);
    c.arg("--api-sock")
        .arg(sock)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    c
}

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
