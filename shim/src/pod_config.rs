//! The pod a Sandbox API `CreateSandbox` describes, and the VM spec planned from it.
//!
//! containerd 2.x's CRI (`sandboxer = "shim"`) sends the pod's CRI `PodSandboxConfig`
//! (`runtime.v1`, protobuf, in an `Any`) and the netns it made, and no OCI spec: no
//! pause container exists. The few fields the VM needs are read here with a small
//! protobuf field reader (the CRI API is not among the shim's generated types), and
//! [`vm_spec`] writes the spec CRI would have given the pod's sandbox container, which
//! `sandbox::PodPlan` plans the VM from: the pod's netns, hostname, cgroup, size and
//! `io.sandbox-vm.*` annotations.

use std::collections::BTreeMap;

use containerd_shim_protos::protobuf::rt::WireType;
use containerd_shim_protos::protobuf::CodedInputStream;
use oci_spec::runtime::Spec;
use sandbox::oci::annotations as ann;

/// Why a pod config cannot be used; one line each.
#[derive(Debug, thiserror::Error)]
pub enum PodConfigError {
    #[error("the sandbox options are a {0:?}, not a CRI PodSandboxConfig")]
    NotPodConfig(String),
    #[error("malformed PodSandboxConfig: {0}")]
    Malformed(String),
    #[error("the pod's VM spec does not parse: {0}")]
    Spec(String),
}

/// The pod's CPU and memory limits (CRI `LinuxContainerResources`; 0: unset).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Resources {
    pub cpu_period: i64,
    pub cpu_quota: i64,
    pub memory_limit: i64,
}

/// The pod's DNS settings (CRI `DNSConfig`); all empty: none given.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Dns {
    pub servers: Vec<String>,
    pub searches: Vec<String>,
    pub options: Vec<String>,
}

/// What the VM and the pod's files need of a CRI `PodSandboxConfig`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodConfig {
    pub name: String,
    pub uid: String,
    pub namespace: String,
    pub hostname: String,
    pub log_directory: String,
    pub annotations: BTreeMap<String, String>,
    pub cgroup_parent: String,
    pub resources: Option<Resources>,
    pub dns: Dns,
}

/// One field of a protobuf message: a varint, or length-delimited bytes.
enum Field {
    Varint(u64),
    Bytes(Vec<u8>),
}

/// A message's fields in wire order (other wire types are skipped).
fn fields(bytes: &[u8]) -> Result<Vec<(u32, Field)>, PodConfigError> {
    let bad = |e: containerd_shim_protos::protobuf::Error| PodConfigError::Malformed(e.to_string());
    let mut input = CodedInputStream::from_bytes(bytes);
    let mut out = Vec::new();
    while let Some(tag) = input.read_raw_tag_or_eof().map_err(bad)? {
        let (number, wire) = (tag >> 3, tag & 7);
        let wire = WireType::new(wire)
            .ok_or_else(|| PodConfigError::Malformed(format!("wire type {wire}")))?;
        match wire {
            WireType::Varint => out.push((
                number,
                Field::Varint(input.read_raw_varint64().map_err(bad)?),
            )),
            WireType::LengthDelimited => {
                out.push((number, Field::Bytes(input.read_bytes().map_err(bad)?)))
            }
            other => input.skip_field(other).map_err(bad)?,
        }
    }
    Ok(out)
}

fn text(b: &[u8]) -> Result<String, PodConfigError> {
    String::from_utf8(b.to_vec())
        .map_err(|_| PodConfigError::Malformed("a string is not UTF-8".into()))
}

/// A `map<string, string>` entry (key 1, value 2).
fn map_entry(b: &[u8]) -> Result<(String, String), PodConfigError> {
    let (mut k, mut v) = (String::new(), String::new());
    for (n, f) in fields(b)? {
        match (n, f) {
            (1, Field::Bytes(b)) => k = text(&b)?,
            (2, Field::Bytes(b)) => v = text(&b)?,
            _ => {}
        }
    }
    Ok((k, v))
}

fn dns(b: &[u8]) -> Result<Dns, PodConfigError> {
    let mut d = Dns::default();
    for (n, f) in fields(b)? {
        let Field::Bytes(b) = f else { continue };
        match n {
            1 => d.servers.push(text(&b)?),
            2 => d.searches.push(text(&b)?),
            3 => d.options.push(text(&b)?),
            _ => {}
        }
    }
    Ok(d)
}

fn resources(b: &[u8]) -> Result<Resources, PodConfigError> {
    let mut r = Resources::default();
    for (n, f) in fields(b)? {
        // int64 varints: two's complement in 64 bits.
        match (n, f) {
            (1, Field::Varint(v)) => r.cpu_period = v as i64,
            (2, Field::Varint(v)) => r.cpu_quota = v as i64,
            (4, Field::Varint(v)) => r.memory_limit = v as i64,
            _ => {}
        }
    }
    Ok(r)
}

impl PodConfig {
    /// Reads the `Any` containerd sends as CreateSandbox's options.
    pub fn from_any(type_url: &str, value: &[u8]) -> Result<PodConfig, PodConfigError> {
        if !type_url.ends_with("PodSandboxConfig") {
            return Err(PodConfigError::NotPodConfig(type_url.into()));
        }
        PodConfig::decode(value)
    }

    /// Decodes a CRI `runtime.v1.PodSandboxConfig`.
    pub fn decode(bytes: &[u8]) -> Result<PodConfig, PodConfigError> {
        let mut c = PodConfig::default();
        for (n, f) in fields(bytes)? {
            let Field::Bytes(b) = f else { continue };
            match n {
                1 => c.metadata(&b)?,
                2 => c.hostname = text(&b)?,
                3 => c.log_directory = text(&b)?,
                4 => c.dns = dns(&b)?,
                7 => {
                    let (k, v) = map_entry(&b)?;
                    c.annotations.insert(k, v);
                }
                8 => c.linux(&b)?,
                _ => {}
            }
        }
        Ok(c)
    }

    fn metadata(&mut self, b: &[u8]) -> Result<(), PodConfigError> {
        for (n, f) in fields(b)? {
            match (n, f) {
                (1, Field::Bytes(b)) => self.name = text(&b)?,
                (2, Field::Bytes(b)) => self.uid = text(&b)?,
                (3, Field::Bytes(b)) => self.namespace = text(&b)?,
                _ => {}
            }
        }
        Ok(())
    }

    fn linux(&mut self, b: &[u8]) -> Result<(), PodConfigError> {
        for (n, f) in fields(b)? {
            match (n, f) {
                (1, Field::Bytes(b)) => self.cgroup_parent = text(&b)?,
                (5, Field::Bytes(b)) => self.resources = Some(resources(&b)?),
                _ => {}
            }
        }
        Ok(())
    }
}

/// CRI's `linux.cgroupsPath` for a pod sandbox under `parent`: systemd's
/// `slice:cri-containerd:id` when the parent is a slice, else `parent/id`.
pub fn cgroups_path(parent: &str, id: &str) -> String {
    let base = parent.rsplit('/').find(|p| !p.is_empty()).unwrap_or("");
    if base.ends_with(".slice") {
        format!("{base}:cri-containerd:{id}")
    } else {
        format!("{}/{id}", parent.trim_end_matches('/'))
    }
}

/// The spec of pod `id`'s VM: what CRI would have given its sandbox container, without
/// a process to run (the VM itself is the sandbox). `netns` empty: the node's network
/// (the VM then has loopback only).
pub fn vm_spec(id: &str, pod: &PodConfig, netns: &str) -> Result<Spec, PodConfigError> {
    let mut annotations: BTreeMap<String, String> = pod
        .annotations
        .iter()
        .filter(|(k, _)| k.starts_with("io.sandbox-vm."))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let cri = [
        (ann::CRI_CONTAINER_TYPE, "sandbox"),
        (ann::CRI_SANDBOX_ID, id),
        ("io.kubernetes.cri.sandbox-name", &pod.name),
        ("io.kubernetes.cri.sandbox-namespace", &pod.namespace),
        ("io.kubernetes.cri.sandbox-uid", &pod.uid),
        (
            "io.kubernetes.cri.sandbox-log-directory",
            &pod.log_directory,
        ),
    ];
    annotations.extend(cri.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    if let Some(r) = &pod.resources {
        annotations.insert(ann::CRI_SANDBOX_MEMORY.into(), r.memory_limit.to_string());
        annotations.insert(ann::CRI_SANDBOX_CPU_QUOTA.into(), r.cpu_quota.to_string());
        annotations.insert(ann::CRI_SANDBOX_CPU_PERIOD.into(), r.cpu_period.to_string());
    }
    let mut net = serde_json::json!({"type": "network"});
    if !netns.is_empty() {
        net["path"] = netns.into();
    }
    let mut spec = serde_json::json!({
        "ociVersion": "1.1.0",
        "process": {
            "user": {"uid": 0, "gid": 0},
            "args": ["/sandbox-vm-pod"],
            "cwd": "/",
        },
        "root": {"path": "rootfs"},
        "annotations": annotations,
        "linux": {
            "namespaces": [net, {"type": "uts"}, {"type": "ipc"}, {"type": "mount"}, {"type": "pid"}],
        },
    });
    if !pod.hostname.is_empty() {
        spec["hostname"] = pod.hostname.clone().into();
    }
    if !pod.cgroup_parent.is_empty() {
        spec["linux"]["cgroupsPath"] = cgroups_path(&pod.cgroup_parent, id).into();
    }
    serde_json::from_value(spec).map_err(|e| PodConfigError::Spec(e.to_string()))
}

#[cfg(test)]
mod tests {
    use containerd_shim_protos::protobuf::CodedOutputStream;

    use super::*;

    /// Encodes with `f` into a fresh buffer.
    fn encode(f: impl FnOnce(&mut CodedOutputStream)) -> Vec<u8> {
        let mut buf = Vec::new();
        {
            let mut out = CodedOutputStream::vec(&mut buf);
            f(&mut out);
            out.flush().unwrap();
        }
        buf
    }

    fn entry(k: &str, v: &str) -> Vec<u8> {
        encode(|o| {
            o.write_string(1, k).unwrap();
            o.write_string(2, v).unwrap();
        })
    }

    /// A PodSandboxConfig as kubelet sends one, with fields the shim ignores among them.
    fn pod_config_bytes() -> Vec<u8> {
        let metadata = encode(|o| {
            o.write_string(1, "web").unwrap();
            o.write_string(2, "uid-1").unwrap();
            o.write_string(3, "default").unwrap();
            o.write_uint32(4, 2).unwrap();
        });
        let res = encode(|o| {
            o.write_int64(1, 100_000).unwrap();
            o.write_int64(2, 150_000).unwrap();
            o.write_int64(3, 512).unwrap();
            o.write_int64(4, 256 << 20).unwrap();
            o.write_string(6, "0-1").unwrap();
        });
        let linux = encode(|o| {
            o.write_string(1, "/kubepods/burstable/pod-uid-1").unwrap();
            o.write_bytes(3, &entry("net.ipv4.ip_forward", "1"))
                .unwrap();
            o.write_bytes(5, &res).unwrap();
        });
        let dns = encode(|o| {
            o.write_string(1, "10.96.0.10").unwrap();
            o.write_string(2, "default.svc.cluster.local").unwrap();
            o.write_string(2, "cluster.local").unwrap();
            o.write_string(3, "ndots:5").unwrap();
        });
        encode(|o| {
            o.write_bytes(1, &metadata).unwrap();
            o.write_string(2, "web-host").unwrap();
            o.write_string(3, "/var/log/pods/web").unwrap();
            o.write_bytes(4, &dns).unwrap();
            o.write_bytes(6, &entry("app", "web")).unwrap();
            o.write_bytes(7, &entry("io.sandbox-vm.vcpus", "2"))
                .unwrap();
            o.write_bytes(7, &entry("io.kubernetes.cri.container-type", "container"))
                .unwrap();
            o.write_bytes(8, &linux).unwrap();
            o.write_fixed64(20, 7).unwrap();
        })
    }

    #[test]
    fn a_pod_sandbox_config_decodes() {
        let c = PodConfig::from_any("runtime.v1.PodSandboxConfig", &pod_config_bytes()).unwrap();
        assert_eq!(
            (c.name.as_str(), c.uid.as_str(), c.namespace.as_str()),
            ("web", "uid-1", "default")
        );
        assert_eq!(c.hostname, "web-host");
        assert_eq!(c.log_directory, "/var/log/pods/web");
        assert_eq!(c.cgroup_parent, "/kubepods/burstable/pod-uid-1");
        assert_eq!(c.annotations.len(), 2);
        assert_eq!(
            c.dns,
            Dns {
                servers: vec!["10.96.0.10".into()],
                searches: vec!["default.svc.cluster.local".into(), "cluster.local".into()],
                options: vec!["ndots:5".into()],
            }
        );
        assert_eq!(
            c.resources,
            Some(Resources {
                cpu_period: 100_000,
                cpu_quota: 150_000,
                memory_limit: 256 << 20
            })
        );
        assert_eq!(PodConfig::decode(&[]).unwrap(), PodConfig::default());
    }

    #[test]
    fn options_that_are_not_a_pod_config_or_malformed_are_refused() {
        let e = PodConfig::from_any("types.containerd.io/x.Options", &[]).unwrap_err();
        assert!(e.to_string().contains("x.Options"), "{e}");
        let truncated = &pod_config_bytes()[..5];
        assert!(matches!(
            PodConfig::from_any("runtime.v1.PodSandboxConfig", truncated),
            Err(PodConfigError::Malformed(_))
        ));
    }

    #[test]
    fn cgroup_paths_follow_cri() {
        assert_eq!(cgroups_path("/kubepods/pod1", "abc"), "/kubepods/pod1/abc");
        assert_eq!(cgroups_path("/kubepods/pod1/", "abc"), "/kubepods/pod1/abc");
        assert_eq!(
            cgroups_path("/kubepods.slice/kubepods-pod1.slice", "abc"),
            "kubepods-pod1.slice:cri-containerd:abc"
        );
    }

    #[test]
    fn the_vm_spec_carries_the_pods_netns_size_cgroup_and_own_annotations() {
        let c = PodConfig::decode(&pod_config_bytes()).unwrap();
        let spec = vm_spec("sb1", &c, "/var/run/netns/cni-1").unwrap();
        let a = ann::Annotations::parse(&spec).unwrap();
        assert_eq!(a.vcpus, Some(2));
        assert_eq!(a.cri.membership(), ann::Membership::PodSandbox);
        assert_eq!(a.cri.grouping("x"), "sb1");
        assert_eq!(a.cri.sandbox_memory, Some(256 << 20));
        assert_eq!(
            (a.cri.sandbox_cpu_quota, a.cri.sandbox_cpu_period),
            (Some(150_000), Some(100_000))
        );
        assert_eq!(
            sandbox::oci::translate::pod_netns(&spec),
            Some("/var/run/netns/cni-1".into())
        );
        assert_eq!(spec.hostname().as_deref(), Some("web-host"));
        let linux = spec.linux().as_ref().unwrap();
        assert_eq!(
            linux.cgroups_path().as_deref(),
            Some(std::path::Path::new("/kubepods/burstable/pod-uid-1/sb1"))
        );
        // Only the VM's own annotations pass from the pod: not CRI's.
        let all = spec.annotations().as_ref().unwrap();
        assert_eq!(all[ann::CRI_CONTAINER_TYPE], "sandbox");
        assert!(!all.contains_key("app"));

        let host = vm_spec("sb2", &PodConfig::default(), "").unwrap();
        assert_eq!(sandbox::oci::translate::pod_netns(&host), None);
        assert_eq!(host.hostname(), &None);
        assert_eq!(host.linux().as_ref().unwrap().cgroups_path(), &None);
        assert_eq!(
            ann::Annotations::parse(&host).unwrap().cri.sandbox_memory,
            None
        );
    }
}
