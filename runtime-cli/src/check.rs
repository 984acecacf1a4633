//! `sandbox-vm check`: whether this host can run sandboxes (like `kata-runtime check`), one
//! line per item, exit 0 when every required item is ok, 1 otherwise.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// The shim binary containerd looks for on its PATH for runtime type
/// `io.containerd.sandbox-vm.v2`.
pub const SHIM_BINARY: &str = "containerd-shim-sandbox-vm-v2";
/// The runtime type a containerd runtime entry must name.
pub const RUNTIME_TYPE: &str = "io.containerd.sandbox-vm.v2";
/// containerd's default config file.
pub const DEFAULT_CONTAINERD_CONFIG: &str = "/etc/containerd/config.toml";

/// One item's outcome.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Item {
    pub name: &'static str,
    pub ok: bool,
    pub detail: String,
}

impl Item {
    fn new(name: &'static str, ok: bool, detail: impl Into<String>) -> Item {
        Item {
            name,
            ok,
            detail: detail.into(),
        }
    }

    /// `ok   NAME: detail` or `FAIL NAME: detail`.
    pub fn line(&self) -> String {
        let tag = if self.ok { "ok  " } else { "FAIL" };
        format!("{tag} {}: {}", self.name, self.detail)
    }
}

/// How the guest kernel's code runs, from /proc/cpuinfo's flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelMode {
    /// vmx or svm: hardware virtualisation.
    Hardware,
    /// Neither: KVM emulates guest kernel mode (it works, about 2000x slower).
    Emulated,
}

/// The kernel mode /proc/cpuinfo's text implies.
pub fn kernel_mode(cpuinfo: &str) -> KernelMode {
    let hw = cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .flat_map(|l| l.split_once(':').map_or("", |(_, f)| f).split_whitespace())
        .any(|f| f == "vmx" || f == "svm");
    if hw {
        KernelMode::Hardware
    } else {
        KernelMode::Emulated
    }
}

/// The CRI runtime handlers in a containerd config whose `runtime_type` is ours (the
/// 1.x `io.containerd.grpc.v1.cri` and 2.x `io.containerd.cri.v1.runtime` layouts).
pub fn handlers_in_config(text: &str) -> Result<Vec<String>, String> {
    let doc: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| e.message().to_string())?;
    let plugins = doc.get("plugins").and_then(|p| p.as_table());
    let mut found = Vec::new();
    for plugin in ["io.containerd.grpc.v1.cri", "io.containerd.cri.v1.runtime"] {
        let runtimes = plugins
            .and_then(|p| p.get(plugin))
            .and_then(|c| c.get("containerd"))
            .and_then(|c| c.get("runtimes"))
            .and_then(|r| r.as_table());
        for (name, rt) in runtimes.into_iter().flatten() {
            if rt.get("runtime_type").and_then(|t| t.as_str()) == Some(RUNTIME_TYPE) {
                found.push(name.clone());
            }
        }
    }
    Ok(found)
}

/// The first executable file `name` in the directories of `path` (a `PATH` value).
pub fn find_on_path(name: &str, path: &std::ffi::OsStr) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    std::env::split_paths(path).map(|d| d.join(name)).find(|p| {
        p.metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    })
}

fn kvm() -> Item {
    match OpenOptions::new().read(true).write(true).open("/dev/kvm") {
        Ok(_) => Item::new("KVM", true, "/dev/kvm opens read-write"),
        Err(e) => Item::new("KVM", false, format!("cannot open /dev/kvm: {e} (load kvm_intel/kvm_amd, or add this user to the kvm group)")),
    }
}

fn cpu_mode() -> Item {
    let text = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    match kernel_mode(&text) {
        KernelMode::Hardware => Item::new("guest kernel mode", true, "hardware (vmx/svm)"),
        KernelMode::Emulated => Item::new(
            "guest kernel mode",
            true,
            "emulated (no vmx/svm flag): works, guest kernel code runs about 2000x slower; boots take tens of seconds",
        ),
    }
}

fn file_item(name: &'static str, found: Option<PathBuf>, how: &str) -> Item {
    match found {
        Some(p) if p.is_file() => Item::new(name, true, p.display().to_string()),
        Some(p) => Item::new(
            name,
            false,
            format!("{} does not exist: {how}", p.display()),
        ),
        None => Item::new(name, false, format!("not found: {how}")),
    }
}

fn containerd_config(path: &Path) -> Item {
    const NAME: &str = "containerd runtime";
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => return Item::new(NAME, false, format!("cannot read {}: {e}", path.display())),
    };
    match handlers_in_config(&text) {
        Ok(h) if !h.is_empty() => Item::new(NAME, true, format!("{} has handler {} (runtime_type {RUNTIME_TYPE})", path.display(), h.join(", "))),
        Ok(_) => Item::new(NAME, false, format!("{} has no CRI runtime with runtime_type = \"{RUNTIME_TYPE}\" (see README, Kubernetes)", path.display())),
        Err(e) => Item::new(NAME, false, format!("{} is not valid TOML: {e}", path.display())),
    }
}

/// Every item, in order.
pub fn items(host: &sandbox::HostConfig, containerd_config_path: &Path) -> Vec<Item> {
    let shim = find_on_path(SHIM_BINARY, &std::env::var_os("PATH").unwrap_or_default());
    vec![
        kvm(),
        cpu_mode(),
        file_item(
            "guest kernel",
            host.kernel.clone(),
            "build it with guest-kernel-config/build.sh or set SANDBOX_VM_KERNEL",
        ),
        file_item(
            "guest image",
            host.agent_disk.clone().or_else(|| host.initrd.clone()),
            "build it with images/build-agent-disk.sh or set SANDBOX_VM_AGENT_DISK",
        ),
        file_item(
            "VMM",
            host.vmm_exe.clone(),
            "install sandbox-vm-vmm beside sandbox-vm (cargo build --release --workspace builds both) or set SANDBOX_VM_VMM",
        ),
        file_item(
            "virtiofsd",
            host.virtiofsd.clone(),
            "run scripts/setup.sh (cargo install virtiofsd) or set SANDBOX_VM_VIRTIOFSD",
        ),
        file_item(
            "shim",
            shim,
            "containerd finds the shim only on its PATH: run scripts/setup.sh or link target/release/containerd-shim-sandbox-vm-v2 into /usr/local/bin",
        ),
        containerd_config(containerd_config_path),
    ]
}

/// `sandbox-vm check`: prints the items; exit 1 if any failed.
pub fn run(host: &sandbox::HostConfig, containerd_config_path: &Path) -> ExitCode {
    let all = items(host, containerd_config_path);
    for i in &all {
        println!("{}", i.line());
    }
    if all.iter().all(|i| i.ok) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vmx_or_svm_means_hardware() {
        let intel = "processor\t: 0\nflags\t\t: fpu vme vmx sse\n";
        let amd = "flags\t\t: fpu svm\n";
        let none = "processor\t: 0\nflags\t\t: fpu vme sse hypervisor\nvmx flags\t: ept\n";
        assert_eq!(kernel_mode(intel), KernelMode::Hardware);
        assert_eq!(kernel_mode(amd), KernelMode::Hardware);
        assert_eq!(kernel_mode(none), KernelMode::Emulated);
        assert_eq!(kernel_mode(""), KernelMode::Emulated);
    }

    #[test]
    fn the_runtime_is_found_in_both_config_layouts() {
        let v1 = r#"
version = 2
[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"
[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.sandbox-vm]
  runtime_type = "io.containerd.sandbox-vm.v2"
  pod_annotations = ["io.sandbox-vm.*"]
"#;
        assert_eq!(handlers_in_config(v1).unwrap(), vec!["sandbox-vm"]);
        let v2 = r#"
version = 3
[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.vm]
  runtime_type = 'io.containerd.sandbox-vm.v2'
"#;
        assert_eq!(handlers_in_config(v2).unwrap(), vec!["vm"]);
        let only_runc = r#"[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
runtime_type = "io.containerd.runc.v2""#;
        assert!(handlers_in_config(only_runc).unwrap().is_empty());
        assert!(handlers_in_config("").unwrap().is_empty());
        assert!(handlers_in_config("[plugins").is_err());
    }

    #[test]
    fn the_config_item_says_what_is_missing() {
        let d = std::env::temp_dir().join(format!("check-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let f = d.join("config.toml");
        std::fs::write(&f, "version = 2\n").unwrap();
        let i = containerd_config(&f);
        assert!(!i.ok);
        assert!(
            i.line().starts_with("FAIL containerd runtime:"),
            "{}",
            i.line()
        );
        assert!(i.detail.contains(RUNTIME_TYPE));
        std::fs::write(
            &f,
            "[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.sandbox-vm]\nruntime_type = \"io.containerd.sandbox-vm.v2\"\n",
        )
        .unwrap();
        assert!(containerd_config(&f).ok);
        assert!(!containerd_config(&d.join("missing.toml")).ok);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn only_executable_files_on_path_count() {
        use std::os::unix::fs::PermissionsExt;
        let d = std::env::temp_dir().join(format!("check-path-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let f = d.join(SHIM_BINARY);
        std::fs::write(&f, "#!/bin/sh\n").unwrap();
        let path = std::ffi::OsString::from(format!("/nonexistent:{}", d.display()));
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(find_on_path(SHIM_BINARY, &path), None);
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(find_on_path(SHIM_BINARY, &path), Some(f));
        let _ = std::fs::remove_dir_all(&d);
    }
}
