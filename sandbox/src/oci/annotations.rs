//! The annotations sandbox-vm reads, as one table: each key with the form its value must
//! take, what it means and what holds without it. [`Annotations::parse`] reads a spec's
//! annotations once, through the table, into a typed struct; `sandbox-vm features` and the
//! README's list come from the same table ([`TABLE`], [`markdown_table`]).
//!
//! One rule for every key: a key of the table whose value does not have the key's form is
//! an error that names the key, the value and the form. Keys outside the table are the
//! spec's own business and are ignored.

use std::path::PathBuf;

use oci_spec::runtime::Spec;
use vmm_api::config::CompatSetting;

use super::translate::{RootfsMode, TranslateError};
use crate::template::TemplateUse;

/// Guest kernel path.
pub const KERNEL: &str = "io.sandbox-vm.kernel";
/// Agent initramfs path.
pub const INITRD: &str = "io.sandbox-vm.initrd";
/// The guest image: the agent as a read-only ext4 root disk.
pub const AGENT_DISK: &str = "io.sandbox-vm.agent-disk";
/// Extra guest kernel parameters.
pub const KERNEL_PARAMS: &str = "io.sandbox-vm.kernel-params";
/// vCPUs (overrides the CPU limit).
pub const VCPUS: &str = "io.sandbox-vm.vcpus";
/// Guest RAM in MiB (overrides the memory limit).
pub const MEM_MIB: &str = "io.sandbox-vm.mem-mib";
/// Host-compatibility profile.
pub const COMPAT: &str = "io.sandbox-vm.compat";
/// How the rootfs reaches the guest.
pub const ROOTFS: &str = "io.sandbox-vm.rootfs";
/// Whether the sandbox may restore a template.
pub const TEMPLATE: &str = "io.sandbox-vm.template";
/// CRI: the container's role in the pod.
pub const CRI_CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
/// CRI: the pod sandbox's id (one shim and one VM per value).
pub const CRI_SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";
/// CRI (containerd 1.7+): the pod's memory limit in bytes.
pub const CRI_SANDBOX_MEMORY: &str = "io.kubernetes.cri.sandbox-memory";
/// CRI (containerd 1.7+): the pod's CPU quota.
pub const CRI_SANDBOX_CPU_QUOTA: &str = "io.kubernetes.cri.sandbox-cpu-quota";
/// CRI (containerd 1.7+): the pod's CPU period.
pub const CRI_SANDBOX_CPU_PERIOD: &str = "io.kubernetes.cri.sandbox-cpu-period";

/// CRI's role of a container in its pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CriType {
    /// The pod's sandbox (pause) container.
    Sandbox,
    /// One of the pod's workload containers.
    Container,
}

/// What CRI says about the pod.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Cri {
    pub container_type: Option<CriType>,
    pub sandbox_id: Option<String>,
    /// The pod's memory limit, bytes (`None` when absent, zero or negative: unlimited).
    pub sandbox_memory: Option<i64>,
    /// The pod's CPU quota and period (`None` when absent, zero or negative).
    pub sandbox_cpu_quota: Option<i64>,
    pub sandbox_cpu_period: Option<i64>,
}

/// What a container created through the shim is to its pod, from CRI's annotations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Membership {
    /// CRI's sandbox (pause) container: it boots the pod's VM.
    PodSandbox,
    /// A CRI container of a pod whose VM already runs.
    PodMember,
    /// No pod (`ctr run`, plain containerd clients): a VM of its own.
    Standalone,
}

impl Cri {
    /// The container's place in its pod.
    pub fn membership(&self) -> Membership {
        match (self.container_type, &self.sandbox_id) {
            (Some(CriType::Sandbox), _) => Membership::PodSandbox,
            (Some(CriType::Container), Some(_)) => Membership::PodMember,
            _ => Membership::Standalone,
        }
    }

    /// The shim grouping of container `id`: its pod's sandbox id, else its own id (one
    /// shim and one VM per value).
    pub fn grouping<'a>(&'a self, id: &'a str) -> &'a str {
        self.sandbox_id.as_deref().unwrap_or(id)
    }
}

/// A spec's annotations, parsed (see the module docs).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Annotations {
    pub kernel: Option<PathBuf>,
    pub initrd: Option<PathBuf>,
    pub agent_disk: Option<PathBuf>,
    pub kernel_params: Option<String>,
    pub vcpus: Option<u8>,
    pub mem_mib: Option<u64>,
    pub compat: CompatSetting,
    pub rootfs: RootfsMode,
    pub template: TemplateUse,
    pub cri: Cri,
}

/// One key of the table.
pub struct Key {
    pub key: &'static str,
    /// The form a value must take.
    pub form: &'static str,
    pub meaning: &'static str,
    /// What holds when the key is absent.
    pub default: &'static str,
    /// Stores a well-formed value; `None` for a malformed one.
    set: fn(&mut Annotations, &str) -> Option<()>,
}

fn path(v: &str) -> Option<PathBuf> {
    (!v.is_empty()).then(|| PathBuf::from(v))
}

fn positive(v: &str) -> Option<Option<i64>> {
    v.trim().parse::<i64>().ok().map(|n| (n > 0).then_some(n))
}

fn choice<T: Copy>(v: &str, choices: &[(&str, T)]) -> Option<T> {
    choices.iter().find(|(name, _)| *name == v).map(|(_, t)| *t)
}

/// Every annotation sandbox-vm reads.
pub const TABLE: &[Key] = &[
    Key {
        key: KERNEL,
        form: "a path",
        meaning: "the guest kernel",
        default: "the host's (SANDBOX_VM_KERNEL, the build cache, /usr/share/sandbox-vm)",
        set: |a, v| {
            a.kernel = Some(path(v)?);
            Some(())
        },
    },
    Key {
        key: INITRD,
        form: "a path",
        meaning: "the agent initramfs, used when there is no guest image",
        default: "the host's (SANDBOX_VM_INITRD, images/out, /usr/share/sandbox-vm)",
        set: |a, v| {
            a.initrd = Some(path(v)?);
            Some(())
        },
    },
    Key {
        key: AGENT_DISK,
        form: "a path",
        meaning: "the guest image: the agent as a read-only ext4 root disk",
        default: "the host's (SANDBOX_VM_AGENT_DISK, images/out, /usr/share/sandbox-vm)",
        set: |a, v| {
            a.agent_disk = Some(path(v)?);
            Some(())
        },
    },
    Key {
        key: KERNEL_PARAMS,
        form: "text",
        meaning: "guest kernel parameters appended to the default command line",
        default: "none",
        set: |a, v| {
            a.kernel_params = Some(v.to_string());
            Some(())
        },
    },
    Key {
        key: VCPUS,
        form: "a vCPU count from 1 to 255",
        meaning: "the VM's vCPUs (clamped to the host's), over the CPU limit",
        default: "from the CPU quota/period or cpuset, else 1",
        set: |a, v| {
            a.vcpus = Some(v.parse::<u8>().ok().filter(|n| *n >= 1)?);
            Some(())
        },
    },
    Key {
        key: MEM_MIB,
        form: "a size in MiB",
        meaning: "the VM's RAM, over the memory limit",
        default: "the memory limit + 96 MiB, else 128 MiB",
        set: |a, v| {
            a.mem_mib = Some(v.parse().ok()?);
            Some(())
        },
    },
    Key {
        key: COMPAT,
        form: "auto, on or off",
        meaning: "the host-compatibility profile (for hosts that emulate guest kernel mode)",
        default: "auto",
        set: |a, v| {
            let c = [
                ("auto", CompatSetting::Auto),
                ("on", CompatSetting::On),
                ("off", CompatSetting::Off),
            ];
            a.compat = choice(v, &c)?;
            Some(())
        },
    },
    Key {
        key: ROOTFS,
        form: "share or block",
        meaning: "how the rootfs reaches the guest: virtio-fs share, or an ext4 copy on virtio-blk",
        default: "share",
        set: |a, v| {
            let c = [("share", RootfsMode::Share), ("block", RootfsMode::Block)];
            a.rootfs = choice(v, &c)?;
            Some(())
        },
    },
    Key {
        key: TEMPLATE,
        form: "auto or off",
        meaning: "restore a matching template, or always boot cold",
        default: "auto",
        set: |a, v| {
            let c = [("auto", TemplateUse::Auto), ("off", TemplateUse::Off)];
            a.template = choice(v, &c)?;
            Some(())
        },
    },
    Key {
        key: CRI_CONTAINER_TYPE,
        form: "sandbox or container",
        meaning: "CRI: the pod's sandbox container boots the VM, its containers join it",
        default: "a container with a VM of its own",
        set: |a, v| {
            let c = [
                ("sandbox", CriType::Sandbox),
                ("container", CriType::Container),
            ];
            a.cri.container_type = Some(choice(v, &c)?);
            Some(())
        },
    },
    Key {
        key: CRI_SANDBOX_ID,
        form: "text",
        meaning: "CRI: the pod (one shim and one VM per pod)",
        default: "the container's own id",
        set: |a, v| {
            a.cri.sandbox_id = (!v.is_empty()).then(|| v.to_string());
            Some(())
        },
    },
    Key {
        key: CRI_SANDBOX_MEMORY,
        form: "an integer (bytes)",
        meaning: "CRI: the pod's memory limit, which sizes the pod's VM",
        default: "the sandbox container's own limit",
        set: |a, v| {
            a.cri.sandbox_memory = positive(v)?;
            Some(())
        },
    },
    Key {
        key: CRI_SANDBOX_CPU_QUOTA,
        form: "an integer (microseconds)",
        meaning: "CRI: the pod's CPU quota, which sizes the pod's VM with the period",
        default: "the sandbox container's own CPU limit",
        set: |a, v| {
            a.cri.sandbox_cpu_quota = positive(v)?;
            Some(())
        },
    },
    Key {
        key: CRI_SANDBOX_CPU_PERIOD,
        form: "an integer (microseconds)",
        meaning: "CRI: the pod's CPU period",
        default: "the sandbox container's own CPU limit",
        set: |a, v| {
            a.cri.sandbox_cpu_period = positive(v)?;
            Some(())
        },
    },
];

impl Annotations {
    /// The spec's annotations of [`TABLE`]; a malformed value is an error.
    pub fn parse(spec: &Spec) -> Result<Annotations, TranslateError> {
        let mut parsed = Annotations::default();
        let Some(given) = spec.annotations() else {
            return Ok(parsed);
        };
        for k in TABLE {
            if let Some(value) = given.get(k.key) {
                (k.set)(&mut parsed, value).ok_or_else(|| TranslateError::BadAnnotation {
                    key: k.key,
                    value: value.clone(),
                    want: k.form,
                })?;
            }
        }
        Ok(parsed)
    }
}

/// The table for `sandbox-vm features`: key → "meaning (form; default: …)".
pub fn features() -> serde_json::Map<String, serde_json::Value> {
    TABLE
        .iter()
        .map(|k| {
            let text = format!("{} ({}; default: {})", k.meaning, k.form, k.default);
            (k.key.to_string(), text.into())
        })
        .collect()
}

/// The table as the README's Markdown list.
pub fn markdown_table() -> String {
    let mut out =
        String::from("| annotation | value | meaning | without it |\n|---|---|---|---|\n");
    for k in TABLE {
        out.push_str(&format!(
            "| `{}` | {} | {} | {} |\n",
            k.key, k.form, k.meaning, k.default
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::translate::test_specs::spec;

    fn parse(ann: serde_json::Value) -> Result<Annotations, TranslateError> {
        Annotations::parse(&spec(serde_json::json!({ "annotations": ann })))
    }

    #[test]
    fn absent_keys_give_the_defaults_and_unknown_keys_are_ignored() {
        let a = parse(serde_json::json!({"org.example.x": "whatever"})).unwrap();
        assert_eq!(a, Annotations::default());
        assert_eq!(a.rootfs, RootfsMode::Share);
        assert_eq!(a.template, TemplateUse::Auto);
        assert_eq!(a.compat, CompatSetting::Auto);
    }

    #[test]
    fn every_key_is_parsed_into_its_field() {
        let a = parse(serde_json::json!({
            KERNEL: "/k", INITRD: "/i", AGENT_DISK: "/d", KERNEL_PARAMS: "loglevel=7",
            VCPUS: "3", MEM_MIB: "512", COMPAT: "off", ROOTFS: "block", TEMPLATE: "off",
            CRI_CONTAINER_TYPE: "sandbox", CRI_SANDBOX_ID: "pod1",
            CRI_SANDBOX_MEMORY: "268435456", CRI_SANDBOX_CPU_QUOTA: "250000",
            CRI_SANDBOX_CPU_PERIOD: "100000",
        }))
        .unwrap();
        assert_eq!(a.kernel, Some("/k".into()));
        assert_eq!(a.initrd, Some("/i".into()));
        assert_eq!(a.agent_disk, Some("/d".into()));
        assert_eq!(a.kernel_params.as_deref(), Some("loglevel=7"));
        assert_eq!((a.vcpus, a.mem_mib), (Some(3), Some(512)));
        assert_eq!(a.compat, CompatSetting::Off);
        assert_eq!(a.rootfs, RootfsMode::Block);
        assert_eq!(a.template, TemplateUse::Off);
        assert_eq!(a.cri.container_type, Some(CriType::Sandbox));
        assert_eq!(a.cri.sandbox_id.as_deref(), Some("pod1"));
        assert_eq!(a.cri.sandbox_memory, Some(268435456));
        assert_eq!(
            (a.cri.sandbox_cpu_quota, a.cri.sandbox_cpu_period),
            (Some(250000), Some(100000))
        );
        // Zero or negative CRI limits mean none.
        let a = parse(serde_json::json!({CRI_SANDBOX_MEMORY: "0", CRI_SANDBOX_CPU_QUOTA: "-1"}));
        assert_eq!(a.unwrap().cri, Cri::default());
    }

    #[test]
    fn a_malformed_value_of_any_key_is_an_error_naming_it() {
        let bad = [
            (KERNEL, ""),
            (VCPUS, "many"),
            (VCPUS, "0"),
            (VCPUS, "256"),
            (MEM_MIB, "-5"),
            (COMPAT, "maybe"),
            (ROOTFS, "nfs"),
            (TEMPLATE, "yes"),
            (CRI_CONTAINER_TYPE, "pause"),
            (CRI_SANDBOX_MEMORY, "1G"),
            (CRI_SANDBOX_CPU_PERIOD, "x"),
        ];
        for (key, value) in bad {
            let e = parse(serde_json::json!({ key: value })).unwrap_err();
            let TranslateError::BadAnnotation {
                key: k, value: v, ..
            } = &e
            else {
                panic!("{key}={value}: {e}");
            };
            assert_eq!((*k, v.as_str()), (key, value));
            assert!(e.to_string().contains(key), "{e}");
        }
    }

    #[test]
    fn membership_and_grouping_follow_the_cri_annotations() {
        let sb = parse(serde_json::json!({
            CRI_CONTAINER_TYPE: "sandbox", CRI_SANDBOX_ID: "pod1"}))
        .unwrap();
        assert_eq!(sb.cri.membership(), Membership::PodSandbox);
        assert_eq!(sb.cri.grouping("pod1"), "pod1");
        let c = parse(serde_json::json!({
            CRI_CONTAINER_TYPE: "container", CRI_SANDBOX_ID: "pod1"}))
        .unwrap();
        assert_eq!(c.cri.membership(), Membership::PodMember);
        assert_eq!(c.cri.grouping("c7"), "pod1");
        let plain = parse(serde_json::json!({})).unwrap();
        assert_eq!(plain.cri.membership(), Membership::Standalone);
        assert_eq!(plain.cri.grouping("c7"), "c7");
    }

    #[test]
    fn keys_are_unique_and_features_list_them_all() {
        let mut keys: Vec<&str> = TABLE.iter().map(|k| k.key).collect();
        keys.sort();
        keys.dedup();
        assert_eq!(keys.len(), TABLE.len());
        let f = features();
        assert!(keys.iter().all(|k| f.contains_key(*k)));
    }

    #[test]
    fn the_readme_lists_the_table() {
        let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
            .expect("README.md");
        let table = markdown_table();
        assert!(
            readme.contains(&table),
            "README.md's annotation list is not the table's; put this in it:\n{table}"
        );
    }
}
