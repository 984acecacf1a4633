//! The pod's `/etc/hostname`, `/etc/resolv.conf` and `/etc/hosts`, with the Sandbox API.
//!
//! With a pause container, containerd's CRI writes these three files for the pod and
//! bind-mounts them into each of its containers. With `sandboxer = "shim"` (containerd
//! 2.x) it does neither and leaves them to the runtime, so without this module the
//! containers kept their image's files: no cluster DNS, and the image's hostname.
//!
//! The shim writes the files into the sandbox's bundle at CreateSandbox
//! ([`PodFiles::write`]), as CRI would from the pod's config:
//! * `hostname`: the pod's hostname, else the node's;
//! * `resolv.conf`: the pod's DNS config, else a copy of the node's;
//! * `hosts`: a copy of the node's.
//!
//! Each container that joins the pod then gets a bind mount of each file
//! ([`PodFiles::mount_into`]), unless its spec already mounts that path: kubelet's own
//! `/etc/hosts` mount wins, as it does under CRI. From there the mounts reach the guest
//! like any other bind mount, through the virtio-fs share.

use std::path::{Path, PathBuf};

use oci_spec::runtime::{Mount, MountBuilder, Spec};

use crate::pod_config::{Dns, PodConfig};

/// The files, by name in the bundle and where they go in a container.
const FILES: [(&str, &str); 3] = [
    ("hostname", "/etc/hostname"),
    ("resolv.conf", "/etc/resolv.conf"),
    ("hosts", "/etc/hosts"),
];

/// Used when the node has no `/etc/hosts`.
const DEFAULT_HOSTS: &str = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n";

/// Writing one of the pod's files failed.
#[derive(Debug, thiserror::Error)]
#[error("cannot write the pod's {path}: {err}")]
pub struct PodFilesError {
    path: PathBuf,
    err: std::io::Error,
}

/// `resolv.conf` for the pod's DNS config, as CRI writes it; `None` when the config has
/// nothing (the node's file is copied then).
pub fn resolv_conf(dns: &Dns) -> Option<String> {
    if dns.servers.is_empty() && dns.searches.is_empty() && dns.options.is_empty() {
        return None;
    }
    let mut out = String::new();
    if !dns.searches.is_empty() {
        out += &format!("search {}\n", dns.searches.join(" "));
    }
    for s in &dns.servers {
        out += &format!("nameserver {s}\n");
    }
    if !dns.options.is_empty() {
        out += &format!("options {}\n", dns.options.join(" "));
    }
    Some(out)
}

/// The node's file, or `fallback` if it has none.
fn node_file(path: &str, fallback: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|_| fallback.to_string())
}

/// The three files' contents for `pod` on a node named `node_hostname`, in [`FILES`]'
/// order.
fn contents(pod: &PodConfig, node_hostname: &str) -> [String; 3] {
    let hostname = match pod.hostname.as_str() {
        "" => node_hostname,
        h => h,
    };
    let resolv = resolv_conf(&pod.dns).unwrap_or_else(|| node_file("/etc/resolv.conf", ""));
    [
        format!("{hostname}\n"),
        resolv,
        node_file("/etc/hosts", DEFAULT_HOSTS),
    ]
}

/// The pod's files, written in a directory (the sandbox's bundle).
#[derive(Clone, Debug)]
pub struct PodFiles {
    dir: PathBuf,
}

impl PodFiles {
    /// Writes the files for `pod` into `dir`.
    pub fn write(dir: &Path, pod: &PodConfig) -> Result<PodFiles, PodFilesError> {
        let node = node_file("/proc/sys/kernel/hostname", "localhost");
        let node = node.trim();
        for ((name, _), text) in FILES.iter().zip(contents(pod, node)) {
            let path = dir.join(name);
            std::fs::write(&path, text).map_err(|err| PodFilesError { path, err })?;
        }
        Ok(PodFiles { dir: dir.into() })
    }

    /// Adds a bind mount of each file to `spec`, where its mounts have none at that path;
    /// read-only when its root is.
    pub fn mount_into(&self, spec: &mut Spec) {
        let read_only = spec
            .root()
            .as_ref()
            .and_then(|r| r.readonly())
            .unwrap_or(false);
        let mut mounts = spec.mounts().clone().unwrap_or_default();
        for (name, dest) in FILES {
            if mounts.iter().any(|m| m.destination() == Path::new(dest)) {
                continue;
            }
            mounts.push(bind(&self.dir.join(name), dest, read_only));
        }
        spec.set_mounts(Some(mounts));
    }
}

fn bind(src: &Path, dest: &str, read_only: bool) -> Mount {
    let rw = if read_only { "ro" } else { "rw" };
    MountBuilder::default()
        .destination(dest)
        .typ("bind")
        .source(src)
        .options(vec!["rbind".into(), "rprivate".into(), rw.into()])
        .build()
        .expect("all mount fields are set")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dns(servers: &[&str], searches: &[&str], options: &[&str]) -> Dns {
        let v = |s: &[&str]| s.iter().map(|x| x.to_string()).collect();
        Dns {
            servers: v(servers),
            searches: v(searches),
            options: v(options),
        }
    }

    #[test]
    fn resolv_conf_is_written_as_cri_writes_it() {
        let d = dns(
            &["10.96.0.10", "10.96.0.11"],
            &["default.svc.cluster.local", "svc.cluster.local"],
            &["ndots:5", "timeout:2"],
        );
        assert_eq!(
            resolv_conf(&d).unwrap(),
            "search default.svc.cluster.local svc.cluster.local\n\
             nameserver 10.96.0.10\nnameserver 10.96.0.11\noptions ndots:5 timeout:2\n"
        );
        assert_eq!(
            resolv_conf(&dns(&["1.1.1.1"], &[], &[])).unwrap(),
            "nameserver 1.1.1.1\n"
        );
        assert_eq!(resolv_conf(&Dns::default()), None);
    }

    #[test]
    fn the_hostname_is_the_pods_else_the_nodes() {
        let mut pod = PodConfig {
            hostname: "web-0".into(),
            dns: dns(&["10.0.0.2"], &[], &[]),
            ..PodConfig::default()
        };
        let [hostname, resolv, hosts] = contents(&pod, "node-a");
        assert_eq!(hostname, "web-0\n");
        assert_eq!(resolv, "nameserver 10.0.0.2\n");
        assert!(!hosts.is_empty());
        pod.hostname.clear();
        assert_eq!(contents(&pod, "node-a")[0], "node-a\n");
    }

    #[test]
    fn files_are_written_and_mounted_where_the_spec_has_none() {
        let dir = std::env::temp_dir().join(format!("svm-pod-files-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let pod = PodConfig {
            hostname: "web-0".into(),
            ..PodConfig::default()
        };
        let files = PodFiles::write(&dir, &pod).unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.join("hostname")).unwrap(),
            "web-0\n"
        );
        assert!(dir.join("resolv.conf").is_file() && dir.join("hosts").is_file());

        // kubelet mounts its own /etc/hosts: that one stays.
        let mut spec: Spec = serde_json::from_value(serde_json::json!({
            "ociVersion": "1.1.0",
            "root": {"path": "rootfs", "readonly": true},
            "mounts": [{"destination": "/etc/hosts", "type": "bind",
                        "source": "/var/lib/kubelet/pods/x/etc-hosts", "options": ["rbind"]}],
        }))
        .unwrap();
        files.mount_into(&mut spec);
        let mounts = spec.mounts().clone().unwrap();
        let at = |d: &str| {
            mounts
                .iter()
                .filter(|m| m.destination() == Path::new(d))
                .count()
        };
        assert_eq!(
            (
                at("/etc/hosts"),
                at("/etc/hostname"),
                at("/etc/resolv.conf")
            ),
            (1, 1, 1)
        );
        assert_eq!(
            mounts[0].source().as_deref(),
            Some(Path::new("/var/lib/kubelet/pods/x/etc-hosts"))
        );
        let hostname = mounts
            .iter()
            .find(|m| m.destination() == Path::new("/etc/hostname"))
            .unwrap();
        assert_eq!(
            hostname.source().as_deref(),
            Some(dir.join("hostname").as_path())
        );
        assert_eq!(
            hostname.options().as_deref().unwrap(),
            ["rbind", "rprivate", "ro"]
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_directory_that_cannot_be_written_is_one_line() {
        let e = PodFiles::write(Path::new("/nonexistent/bundle"), &PodConfig::default())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("/nonexistent/bundle/hostname") && !e.contains('\n'),
            "{e}"
        );
    }
}
