//! How big a pod's VM is. The VM is built when the pod's sandbox container is created,
//! before its other containers are known, so the size comes from what CRI tells about the
//! whole pod: the sandbox annotations `io.kubernetes.cri.sandbox-memory` (bytes) and
//! `-cpu-quota`/`-cpu-period` (the sum of the containers' limits; containerd 1.7 sets them,
//! 1.6 does not), else the sandbox container's own resources. The guest overhead is added
//! by `sandbox::oci::translate::vm_config`, and the pod's `io.sandbox-vm.vcpus` /
//! `io.sandbox-vm.mem-mib` annotations (passed on through the runtime's
//! `pod_annotations`) override everything there.

use oci_spec::runtime::{LinuxCpuBuilder, LinuxMemoryBuilder, LinuxResources, Spec};

/// CRI: the container's role in the pod (`sandbox` or `container`).
pub const ANN_CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
/// CRI: the pod sandbox's id (the grouping: one shim and one VM per value).
pub const ANN_SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";
/// CRI (1.7+): the pod's memory limit, bytes.
pub const ANN_SANDBOX_MEMORY: &str = "io.kubernetes.cri.sandbox-memory";
/// CRI (1.7+): the pod's CPU quota and period.
pub const ANN_SANDBOX_CPU_QUOTA: &str = "io.kubernetes.cri.sandbox-cpu-quota";
pub const ANN_SANDBOX_CPU_PERIOD: &str = "io.kubernetes.cri.sandbox-cpu-period";

/// What a container is to the pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// CRI's sandbox (pause) container: it boots the pod's VM.
    PodSandbox,
    /// A CRI container of a pod whose VM already runs.
    PodMember,
    /// No CRI annotations (`ctr run`, plain containerd clients): a VM of its own.
    Standalone,
}

fn annotation<'a>(spec: &'a Spec, key: &str) -> Option<&'a str> {
    spec.annotations()
        .as_ref()
        .and_then(|a| a.get(key))
        .map(String::as_str)
}

/// The container's role, from CRI's annotations.
pub fn role(spec: &Spec) -> Role {
    match annotation(spec, ANN_CONTAINER_TYPE) {
        Some("sandbox") => Role::PodSandbox,
        Some(_) if annotation(spec, ANN_SANDBOX_ID).is_some() => Role::PodMember,
        _ => Role::Standalone,
    }
}

/// The shim grouping: the pod's sandbox id, else the container's own id.
pub fn grouping(spec: &Spec, id: &str) -> String {
    annotation(spec, ANN_SANDBOX_ID)
        .filter(|s| !s.is_empty())
        .unwrap_or(id)
        .to_string()
}

/// The spec the pod's VM is sized from: the sandbox container's spec with the pod-level
/// limits from CRI's sandbox annotations (when present and positive) as its resources.
pub fn pod_vm_spec(sandbox_spec: &Spec) -> Spec {
    let mut spec = sandbox_spec.clone();
    let num = |k| annotation(sandbox_spec, k).and_then(|v| v.parse::<i64>().ok());
    let memory = num(ANN_SANDBOX_MEMORY).filter(|m| *m > 0);
    let quota = num(ANN_SANDBOX_CPU_QUOTA).filter(|q| *q > 0);
    let period = num(ANN_SANDBOX_CPU_PERIOD).filter(|p| *p > 0);
    if memory.is_none() && quota.is_none() {
        return spec;
    }
    let Some(linux) = spec.linux_mut() else {
        return spec;
    };
    let mut res: LinuxResources = linux.resources().clone().unwrap_or_default();
    if let Some(m) = memory {
        let mem = LinuxMemoryBuilder::default()
            .limit(m)
            .build()
            .expect("memory limit only");
        res.set_memory(Some(mem));
    }
    if let (Some(q), Some(p)) = (quota, period) {
        let cpu = LinuxCpuBuilder::default()
            .quota(q)
            .period(p as u64)
            .build()
            .expect("quota and period only");
        res.set_cpu(Some(cpu));
    }
    linux.set_resources(Some(res));
    spec
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(ann: serde_json::Value) -> Spec {
        serde_json::from_value(serde_json::json!({
            "ociVersion": "1.0.2",
            "process": {"args": ["/pause"], "cwd": "/", "user": {"uid": 0, "gid": 0}},
            "root": {"path": "rootfs"},
            "linux": {"resources": {"memory": {"limit": 33554432}}},
            "annotations": ann,
        }))
        .unwrap()
    }

    #[test]
    fn roles_and_grouping_follow_the_cri_annotations() {
        let sb = spec(serde_json::json!({
            ANN_CONTAINER_TYPE: "sandbox", ANN_SANDBOX_ID: "pod1"}));
        assert_eq!(role(&sb), Role::PodSandbox);
        assert_eq!(grouping(&sb, "pod1"), "pod1");
        let c = spec(serde_json::json!({
            ANN_CONTAINER_TYPE: "container", ANN_SANDBOX_ID: "pod1"}));
        assert_eq!(role(&c), Role::PodMember);
        assert_eq!(grouping(&c, "c7"), "pod1");
        let plain = spec(serde_json::json!({}));
        assert_eq!(role(&plain), Role::Standalone);
        assert_eq!(grouping(&plain, "c7"), "c7");
    }

    #[test]
    fn pod_limits_replace_the_pause_containers_own() {
        let s = spec(serde_json::json!({
            ANN_SANDBOX_MEMORY: "268435456",
            ANN_SANDBOX_CPU_QUOTA: "250000",
            ANN_SANDBOX_CPU_PERIOD: "100000"}));
        let v = pod_vm_spec(&s);
        let res = v.linux().as_ref().unwrap().resources().clone().unwrap();
        assert_eq!(res.memory().as_ref().unwrap().limit(), Some(268435456));
        let cpu = res.cpu().as_ref().unwrap();
        assert_eq!((cpu.quota(), cpu.period()), (Some(250000), Some(100000)));
        let d = sandbox::oci::translate::Defaults {
            kernel: Some("/k".into()),
            agent_disk: Some("/a".into()),
            max_vcpus: 8,
            ..Default::default()
        };
        let paths = sandbox::SandboxPaths::in_dir(std::path::Path::new("/s")).vm_paths();
        let (vm, _) = sandbox::oci::translate::vm_config(&v, &d, &paths).unwrap();
        assert_eq!(vm.vcpus, 3);
        assert_eq!(
            vm.mem_mib,
            256 + sandbox::oci::translate::GUEST_OVERHEAD_MIB
        );
    }

    #[test]
    fn without_pod_limits_or_with_zero_the_spec_is_unchanged_and_annotations_win() {
        let s = spec(serde_json::json!({ANN_SANDBOX_MEMORY: "0"}));
        assert_eq!(pod_vm_spec(&s), s);
        let s = spec(serde_json::json!({
            ANN_SANDBOX_MEMORY: "268435456", "io.sandbox-vm.mem-mib": "512"}));
        let d = sandbox::oci::translate::Defaults {
            kernel: Some("/k".into()),
            agent_disk: Some("/a".into()),
            max_vcpus: 1,
            ..Default::default()
        };
        let paths = sandbox::SandboxPaths::in_dir(std::path::Path::new("/s")).vm_paths();
        let (vm, _) = sandbox::oci::translate::vm_config(&pod_vm_spec(&s), &d, &paths).unwrap();
        assert_eq!(vm.mem_mib, 512);
    }
}
