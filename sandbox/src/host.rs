//! [`HostConfig`]: what this host gives every sandbox (guest artifacts, helper binaries,
//! the template cache, the VMM's confinement), resolved once by each binary's `main` from
//! its flags, its environment and the defaults, then passed down. Nothing in this library
//! reads the environment: [`HostConfig::resolve`] is handed a lookup.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::oci::translate::Defaults;
use crate::vmm_process::VMM_BIN;

/// How long a guest may take to boot to its agent (boots take about half a minute on
/// hosts that emulate guest kernel mode, several under load).
pub const AGENT_TIMEOUT: Duration = Duration::from_secs(600);

/// The environment variables [`HostConfig::resolve`] reads, for `--help` texts and docs.
pub const ENV_VARS: &[(&str, &str)] = &[
    ("SANDBOX_VM_KERNEL", "the guest kernel"),
    ("SANDBOX_VM_INITRD", "the agent initramfs"),
    ("SANDBOX_VM_AGENT_DISK", "the guest image (agent disk)"),
    ("SANDBOX_VM_VIRTIOFSD", "the virtiofsd binary"),
    ("SANDBOX_VM_VMM", "the VMM binary (sandbox-vm-vmm)"),
    ("SANDBOX_VM_TEMPLATE_DIR", "where templates are kept"),
    ("SANDBOX_VM_JAIL", "`off`: run the VMM outside its jail"),
    (
        "SANDBOX_VM_SECCOMP",
        "the VMM's seccomp mode (its `--seccomp`)",
    ),
];

/// Where virtiofsd is looked for after `PATH` and `~/.cargo/bin`: where distributions put it.
const VIRTIOFSD_CANDIDATES: &[&str] = &[
    "/usr/local/bin/virtiofsd",
    "/usr/libexec/virtiofsd",
    "/usr/lib/qemu/virtiofsd",
];

/// What the host gives every sandbox (see the module docs).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostConfig {
    pub kernel: Option<PathBuf>,
    pub initrd: Option<PathBuf>,
    pub agent_disk: Option<PathBuf>,
    /// vCPUs the host can give one VM.
    pub max_vcpus: u8,
    /// The virtio-fs backend.
    pub virtiofsd: Option<PathBuf>,
    /// The VMM binary (`sandbox-vm-vmm`).
    pub vmm_exe: Option<PathBuf>,
    /// Where templates are kept.
    pub templates: PathBuf,
    /// Whether VMMs run in their jail.
    pub jail: bool,
    /// The VMM's `--seccomp` mode, when not its default.
    pub seccomp: Option<String>,
    /// How long a guest may take to boot to its agent.
    pub agent_timeout: Duration,
}

/// First existing file among `candidates`.
fn first_file(candidates: impl IntoIterator<Item = PathBuf>) -> Option<PathBuf> {
    candidates.into_iter().find(|p| p.is_file())
}

/// A guest artifact: `rel` in the source tree the binary was built in (found from the
/// executable's path or this crate's manifest directory), else `system`.
fn find_artifact(exe: Option<&Path>, rel: &str, system: &str) -> Option<PathBuf> {
    let from_exe = exe
        .into_iter()
        .flat_map(|e| e.ancestors().skip(1).map(|a| a.join(rel)))
        .collect::<Vec<_>>();
    let built_in = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel);
    first_file(
        from_exe
            .into_iter()
            .chain([built_in, PathBuf::from(system)]),
    )
}

/// The VMM binary beside the executable `exe` (its real path: the shim is often a symlink
/// on containerd's `PATH`), else in the first directory of `path` that has it.
fn vmm_beside_or_on_path(exe: Option<&Path>, path: &std::ffi::OsStr) -> Option<PathBuf> {
    let real = exe.and_then(|e| e.canonicalize().ok());
    let beside = real
        .as_deref()
        .and_then(Path::parent)
        .map(|d| d.join(VMM_BIN));
    first_file(
        beside
            .into_iter()
            .chain(std::env::split_paths(path).map(|d| d.join(VMM_BIN))),
    )
}

impl HostConfig {
    /// Resolves the host's settings: `env` looks a variable up (a binary passes
    /// `std::env::var_os`), `exe` is the running binary (the VMM binary is looked for
    /// beside it, guest images in the source tree it was built in). Each setting is its
    /// variable ([`ENV_VARS`]) when set, else found: the kernel in the build cache, the
    /// images under `images/out`, then `/usr/share/sandbox-vm`; the VMM beside `exe`, then
    /// on `PATH`; virtiofsd on `PATH`, in `~/.cargo/bin`, then where distributions put it.
    pub fn resolve(env: impl Fn(&str) -> Option<OsString>, exe: Option<&Path>) -> HostConfig {
        let var = |k: &str| env(k).filter(|v| !v.is_empty()).map(PathBuf::from);
        let home = env("HOME").map(PathBuf::from);
        let kernel = var("SANDBOX_VM_KERNEL").or_else(|| {
            first_file(
                home.iter()
                    .map(|h| h.join(".cache/sandbox-vm/kernel/current/vmlinux"))
                    .chain([PathBuf::from("/usr/share/sandbox-vm/vmlinux")]),
            )
        });
        let initrd = var("SANDBOX_VM_INITRD").or_else(|| {
            find_artifact(
                exe,
                "images/out/agent-initramfs.cpio",
                "/usr/share/sandbox-vm/agent-initramfs.cpio",
            )
        });
        let agent_disk = var("SANDBOX_VM_AGENT_DISK").or_else(|| {
            find_artifact(
                exe,
                "images/out/agent.ext4",
                "/usr/share/sandbox-vm/agent.ext4",
            )
        });
        let path = env("PATH").unwrap_or_default();
        let virtiofsd = var("SANDBOX_VM_VIRTIOFSD").or_else(|| {
            first_file(
                std::env::split_paths(&path)
                    .chain(home.iter().map(|h| h.join(".cargo/bin")))
                    .map(|d| d.join("virtiofsd"))
                    .chain(VIRTIOFSD_CANDIDATES.iter().map(PathBuf::from)),
            )
        });
        let templates = var("SANDBOX_VM_TEMPLATE_DIR").unwrap_or_else(|| {
            home.clone()
                .unwrap_or_else(|| "/root".into())
                .join(".cache/sandbox-vm/templates")
        });
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        HostConfig {
            kernel,
            initrd,
            agent_disk,
            max_vcpus: cpus.min(255) as u8,
            virtiofsd,
            vmm_exe: var("SANDBOX_VM_VMM").or_else(|| vmm_beside_or_on_path(exe, &path)),
            templates,
            jail: env("SANDBOX_VM_JAIL").is_none_or(|v| v != "off"),
            seccomp: env("SANDBOX_VM_SECCOMP").and_then(|v| v.into_string().ok()),
            agent_timeout: AGENT_TIMEOUT,
        }
    }

    /// What the spec → VM translation may fall back on.
    pub fn defaults(&self) -> Defaults {
        Defaults {
            kernel: self.kernel.clone(),
            initrd: self.initrd.clone(),
            agent_disk: self.agent_disk.clone(),
            max_vcpus: self.max_vcpus,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<OsString> {
        let m: HashMap<String, OsString> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), OsString::from(v)))
            .collect();
        move |k| m.get(k).cloned()
    }

    #[test]
    fn variables_win_over_what_is_found() {
        let h = HostConfig::resolve(
            env(&[
                ("SANDBOX_VM_KERNEL", "/k"),
                ("SANDBOX_VM_INITRD", "/i"),
                ("SANDBOX_VM_AGENT_DISK", "/d"),
                ("SANDBOX_VM_VIRTIOFSD", "/v"),
                ("SANDBOX_VM_TEMPLATE_DIR", "/t"),
                ("SANDBOX_VM_JAIL", "off"),
                ("SANDBOX_VM_SECCOMP", "log"),
                ("SANDBOX_VM_VMM", "/opt/y/vmm"),
            ]),
            Some(Path::new("/opt/x/sandbox-vm")),
        );
        assert_eq!(h.kernel, Some("/k".into()));
        assert_eq!(h.initrd, Some("/i".into()));
        assert_eq!(h.agent_disk, Some("/d".into()));
        assert_eq!(h.virtiofsd, Some("/v".into()));
        assert_eq!(h.templates, PathBuf::from("/t"));
        assert!(!h.jail);
        assert_eq!(h.seccomp.as_deref(), Some("log"));
        assert_eq!(h.vmm_exe, Some("/opt/y/vmm".into()));
        assert!(h.max_vcpus >= 1);
        assert_eq!(h.defaults().kernel, h.kernel);
    }

    #[test]
    fn without_variables_the_defaults_hold_and_the_process_environment_is_not_read() {
        let home = std::env::temp_dir().join(format!("svm-host-{}", std::process::id()));
        let bin = home.join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::write(bin.join("virtiofsd"), b"").unwrap();
        let (h, p) = (home.to_str().unwrap(), bin.to_str().unwrap());
        let c = HostConfig::resolve(env(&[("HOME", h), ("PATH", p)]), None);
        assert_eq!(c.virtiofsd, Some(bin.join("virtiofsd")));
        assert_eq!(c.templates, home.join(".cache/sandbox-vm/templates"));
        assert!(c.jail);
        assert_eq!(c.seccomp, None);
        assert_eq!(c.vmm_exe, None);
        assert_eq!(c.agent_timeout, AGENT_TIMEOUT);
        let _ = std::fs::remove_dir_all(&home);
    }

    #[test]
    fn the_vmm_is_found_beside_the_callers_real_path_before_path() {
        let d = std::env::temp_dir().join(format!("svm-find-vmm-{}", std::process::id()));
        let (bin, other, links) = (d.join("bin"), d.join("other"), d.join("links"));
        for dir in [&bin, &other, &links] {
            std::fs::create_dir_all(dir).unwrap();
        }
        let exe = bin.join("shim");
        std::fs::write(&exe, b"").unwrap();
        // Called through a symlink elsewhere (the shim on containerd's PATH).
        let link = links.join("shim");
        std::os::unix::fs::symlink(&exe, &link).unwrap();
        let path = std::env::join_paths([&other]).unwrap();
        let find = || {
            let p = path.clone();
            HostConfig::resolve(move |k| (k == "PATH").then(|| p.clone()), Some(&link)).vmm_exe
        };
        assert_eq!(find(), None);
        std::fs::write(other.join(VMM_BIN), b"").unwrap();
        assert_eq!(find(), Some(other.join(VMM_BIN)));
        std::fs::write(bin.join(VMM_BIN), b"").unwrap();
        assert_eq!(find(), Some(bin.join(VMM_BIN)));
        let _ = std::fs::remove_dir_all(d);
    }
}
