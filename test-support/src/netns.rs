//! Network namespaces of a test's own (`ip netns`), so that every address a test uses
//! stays in them.

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::process::Command;

use crate::cmd::{run_ok, text};

/// A named network namespace with its loopback up; deleted when dropped.
pub struct TestNetns(String);

impl TestNetns {
    /// Makes `svm-<name>-<pid>` (one an earlier run left is deleted first).
    pub fn new(name: &str) -> TestNetns {
        crate::host::require_root("network namespaces need root");
        let n = format!("svm-{name}-{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &n]).output();
        run_ok(&["ip", "netns", "add", &n]);
        run_ok(&["ip", "-n", &n, "link", "set", "lo", "up"]);
        TestNetns(n)
    }

    /// Its name for `ip -n`.
    pub fn name(&self) -> &str {
        &self.0
    }

    /// `/run/netns/<name>`.
    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!("/run/netns/{}", self.0))
    }

    /// A command run inside the netns (`nsenter --net`: mounts and cgroups stay the host's).
    pub fn cmd(&self, prog: &str) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", self.path().display())).arg(prog);
        c
    }

    /// The interfaces in it.
    pub fn links(&self) -> Vec<String> {
        link_names(&run_ok(&["ip", "-n", &self.0, "-o", "link", "show"]))
    }

    /// Host processes inside it: `<pid>: <command line>`.
    pub fn processes(&self) -> Vec<String> {
        let ino = std::fs::metadata(self.path())
            .expect("the test netns")
            .ino();
        let want = format!("net:[{ino}]");
        crate::host::processes()
            .into_iter()
            .filter(|(pid, _)| {
                std::fs::read_link(format!("/proc/{pid}/ns/net"))
                    .is_ok_and(|l| l.to_string_lossy() == want)
            })
            .map(|(pid, cmd)| format!("{pid}: {cmd}"))
            .collect()
    }
}

impl Drop for TestNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

/// The interface names in `ip -o link` output (`eth0@if12` gives `eth0`).
pub fn link_names(out: &str) -> Vec<String> {
    out.lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_string())
        .collect()
}

/// GET `url` from inside `ns` (curl); the body, if the request succeeded.
pub fn fetch(ns: &TestNetns, url: &str) -> Option<String> {
    let out = ns.cmd("curl").args(["-sf", "-m", "5", url]).output().ok()?;
    out.status.success().then(|| text(&out.stdout))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_names_drop_the_peer() {
        let out = "1: lo: <LOOPBACK,UP> mtu 65536\n2: eth0@if7: <BROADCAST> mtu 1400\n";
        assert_eq!(link_names(out), ["lo", "eth0"]);
    }

    #[test]
    fn a_test_netns_has_loopback_only_and_goes_when_dropped() {
        let ns = TestNetns::new("ts-unit");
        assert_eq!(ns.links(), ["lo"]);
        assert!(ns.processes().is_empty());
        let path = ns.path();
        drop(ns);
        assert!(!path.exists());
    }
}
