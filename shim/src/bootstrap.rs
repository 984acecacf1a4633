//! What `start` prints: the shim's address in the form the calling containerd reads.
//!
//! containerd 1.6 takes stdout as the address itself; 1.7 also parses JSON but refuses a
//! version above 2; 2.x reads `{"version": 3, "address": …, "protocol": "ttrpc"}` and
//! with version 3 lets a pod's later containers join the sandbox's shim through the same
//! connection (no `start` per container, and the Sandbox API's pod needs it). containerd
//! passes `MAX_SHIM_VERSION=2` whatever its own version, so the shim asks the binary
//! named by `-publish-binary` (containerd itself) for its version.

use std::path::Path;
use std::process::{Command, Stdio};

/// The bootstrap protocol version containerd 2.x reads (task API v3, Sandbox API).
pub const BOOTSTRAP_V3: u32 = 3;

/// How `start` answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    /// The bare address (containerd 1.x, or a containerd whose version is unknown).
    Bare,
    /// The JSON bootstrap, version 3, over ttrpc (containerd 2.x and later).
    V3,
}

impl Answer {
    /// The answer for a containerd whose major version is `major` (`None`: unknown).
    pub fn for_major(major: Option<u32>) -> Answer {
        match major {
            Some(m) if m >= 2 => Answer::V3,
            _ => Answer::Bare,
        }
    }

    /// What `start` prints for a server at `address`.
    pub fn format(self, address: &str) -> String {
        match self {
            Answer::Bare => address.to_string(),
            Answer::V3 => serde_json::json!({
                "version": BOOTSTRAP_V3,
                "address": address,
                "protocol": "ttrpc",
            })
            .to_string(),
        }
    }
}

/// The major version in `containerd --version`'s output: `containerd MODULE VERSION
/// REVISION`, the version with or without a `v` (`v2.1.9`, Debian's `2.1.9~ds1`).
pub fn parse_major(version_output: &str) -> Option<u32> {
    let mut words = version_output.split_whitespace();
    if words.next()? != "containerd" {
        return None;
    }
    let version = words.nth(1)?;
    let version = version.strip_prefix('v').unwrap_or(version);
    let (major, _) = version.split_once('.')?;
    major.parse().ok()
}

/// The major version of the containerd binary at `containerd`, `None` if it cannot
/// say (not found, not containerd, unexpected output).
pub fn containerd_major(containerd: &Path) -> Option<u32> {
    if containerd.as_os_str().is_empty() {
        return None;
    }
    let out = Command::new(containerd)
        .arg("--version")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .inspect_err(|e| log::warn!("cannot run {} --version: {e}", containerd.display()))
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let major = parse_major(&text);
    if major.is_none() {
        log::warn!(
            "{} --version said {:?}: answering start with the bare address",
            containerd.display(),
            text.trim()
        );
    }
    major
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn containerd_versions_parse_from_upstream_and_debian_builds() {
        let cases = [
            (
                "containerd github.com/containerd/containerd/v2 2.1.9+unknown \n",
                Some(2),
            ),
            (
                "containerd github.com/containerd/containerd/v2 v2.0.0 207ad711\n",
                Some(2),
            ),
            (
                "containerd github.com/containerd/containerd 1.7.24~ds1 1.7.24~ds1-6+deb13u1\n",
                Some(1),
            ),
            (
                "containerd github.com/containerd/containerd 1.6.20~ds1 1.6.20~ds1-1+deb12u3\n",
                Some(1),
            ),
            ("", None),
            ("dockerd version 20\n", None),
            ("containerd github.com/containerd/containerd\n", None),
            ("containerd github.com/containerd/containerd devel\n", None),
        ];
        for (text, want) in cases {
            assert_eq!(parse_major(text), want, "{text:?}");
        }
    }

    #[test]
    fn containerd_2_gets_the_json_bootstrap_and_1_x_the_bare_address() {
        let addr = "unix:///run/containerd/s/0123abcd";
        assert_eq!(Answer::for_major(Some(1)).format(addr), addr);
        assert_eq!(Answer::for_major(None).format(addr), addr);
        for major in [2, 3] {
            let json: serde_json::Value =
                serde_json::from_str(&Answer::for_major(Some(major)).format(addr)).unwrap();
            assert_eq!(
                json,
                serde_json::json!({"version": 3, "address": addr, "protocol": "ttrpc"})
            );
        }
    }

    #[test]
    fn a_binary_that_is_not_containerd_gives_no_version() {
        assert_eq!(containerd_major(Path::new("")), None);
        assert_eq!(containerd_major(Path::new("/nonexistent/containerd")), None);
        // coreutils' `true --version` names itself, not containerd.
        assert_eq!(containerd_major(Path::new("/bin/true")), None);
    }
}
