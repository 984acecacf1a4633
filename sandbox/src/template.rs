//! Templates: a guest booted to agent-ready once, snapshotted, and restored for each new
//! sandbox instead of booting it (`Sandbox::create` does so when one matches).
//!
//! A template is keyed like the kernel build cache: by a hash of what the booted guest
//! depends on — the kernel and initrd contents, the read-only disks (path, size, mtime,
//! inode), the command line, the VM shape (vCPUs, memory, compat profile, devices) and the
//! snapshot format version — and never by per-sandbox paths (sockets, console log), which
//! each clone overrides. It lives in `<the host's template directory>/<key>/`
//! (`HostConfig::templates`) as a VMM snapshot directory (`vmm_api::snapshot`).
//!
//! Only VMs whose devices carry no per-sandbox state can be templates: only read-only disks
//! (the shared guest image), and no NIC but the one template NIC, whose TAP name and MAC
//! are the same for every clone (`network::template`: a clone's VMM opens its pod's TAP
//! under that name in the pod's netns, and gets the pod's MAC). Other VMs boot cold. The
//! key has the NIC's presence and shape, never a pod's MAC, address or TAP.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use vmm_api::config::VmConfig;
use vmm_api::snapshot as persist;

/// Errors finding or keying a template.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("cannot identify {0} for the template key: {1}")]
    Identify(PathBuf, std::io::Error),
    #[error("{path}: {err}", path = .0.display(), err = .1)]
    Hash(PathBuf, std::io::Error),
    #[error("this VM cannot be a template: {0}")]
    NotTemplatable(&'static str),
}

/// Whether a sandbox may start from a template (`io.sandbox-vm.template`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TemplateUse {
    /// Restore from a matching template when one exists; boot cold otherwise.
    #[default]
    Auto,
    /// Always boot cold.
    Off,
}

/// Why `vm` cannot be a template, if it cannot.
pub fn not_templatable(vm: &VmConfig) -> Option<&'static str> {
    match vm.net.as_slice() {
        [] => {}
        [nic] if *nic == crate::network::template::nic() => {}
        [_] => {
            return Some("its network device is not the template NIC (a per-sandbox TAP or MAC)")
        }
        _ => return Some("it has more than one network device"),
    }
    if vm.disks.iter().any(|d| !d.read_only) {
        return Some("it has a writable disk (a per-sandbox rootfs)");
    }
    if vm.vsock.is_none() {
        return Some("it has no vsock device, so no agent to hand the clone its identity");
    }
    None
}

/// The template key of `vm` (see the module doc).
pub fn key(vm: &VmConfig) -> Result<String, TemplateError> {
    if let Some(why) = not_templatable(vm) {
        return Err(TemplateError::NotTemplatable(why));
    }
    let mut parts = vec![
        format!("format {}", persist::FORMAT_VERSION),
        format!("kernel {}", hash_file(&vm.kernel)?),
    ];
    if let Some(initrd) = &vm.initrd {
        parts.push(format!("initrd {}", hash_file(initrd)?));
    }
    for d in &vm.disks {
        let m =
            std::fs::metadata(&d.path).map_err(|e| TemplateError::Identify(d.path.clone(), e))?;
        parts.push(format!(
            "disk {} {} {} {} {:?}",
            d.path.display(),
            m.len(),
            m.mtime_nsec() + m.mtime() * 1_000_000_000,
            m.ino(),
            d.id
        ));
    }
    parts.push(format!("cmdline {:?}", vm.cmdline));
    parts.push(format!(
        "shape vcpus={} mem={} compat={:?} rng={} cid={:?}",
        vm.vcpus,
        vm.mem_mib,
        vm.compat_profile,
        vm.rng,
        vm.vsock.as_ref().map(|v| v.guest_cid)
    ));
    for n in &vm.net {
        parts.push(format!("net {} {:?}", n.tap, n.mac));
    }
    for fs in &vm.fs {
        parts.push(format!(
            "fs {} {} {}",
            fs.tag, fs.num_request_queues, fs.queue_size
        ));
    }
    Ok(persist::sha256_hex(parts.join("\n").as_bytes()))
}

fn hash_file(path: &Path) -> Result<String, TemplateError> {
    persist::sha256_file(path).map_err(|e| TemplateError::Hash(path.to_path_buf(), e))
}

/// The template directory for `vm` under `root`, if a complete one exists.
pub fn find(root: &Path, vm: &VmConfig) -> Result<Option<PathBuf>, TemplateError> {
    let dir = root.join(key(vm)?);
    Ok(dir.join(persist::STATE_FILE).is_file().then_some(dir))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network::template::nic;
    use vmm_api::config::{DiskConfig, NetConfig, SerialOutput, VsockConfig};

    fn vm(dir: &Path) -> VmConfig {
        std::fs::write(dir.join("vmlinux"), b"kernel").unwrap();
        std::fs::write(dir.join("initrd"), b"initrd").unwrap();
        let mut vm = VmConfig::new(dir.join("vmlinux"));
        vm.initrd = Some(dir.join("initrd"));
        vm.vsock = Some(VsockConfig {
            guest_cid: 3,
            uds_path: dir.join("a/vsock.sock"),
        });
        vm
    }

    #[test]
    fn the_key_ignores_per_sandbox_paths_and_follows_what_the_guest_booted() {
        let d = std::env::temp_dir().join(format!("sandbox-template-key-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let a = vm(&d);
        let k = key(&a).unwrap();
        let mut b = a.clone();
        b.vsock.as_mut().unwrap().uds_path = d.join("b/vsock.sock");
        b.serial = SerialOutput::File(d.join("b/console.log"));
        assert_eq!(key(&b).unwrap(), k, "per-sandbox paths changed the key");

        let mut c = a.clone();
        c.mem_mib *= 2;
        assert_ne!(key(&c).unwrap(), k);
        std::fs::write(d.join("vmlinux"), b"another kernel").unwrap();
        assert_ne!(key(&a).unwrap(), k, "a new kernel must not match");

        let root = d.join("templates");
        assert_eq!(find(&root, &a).unwrap(), None);
        let t = root.join(key(&a).unwrap());
        std::fs::create_dir_all(&t).unwrap();
        assert_eq!(find(&root, &a).unwrap(), None, "no state file: incomplete");
        std::fs::write(t.join(persist::STATE_FILE), b"{}").unwrap();
        assert_eq!(find(&root, &a).unwrap(), Some(t));
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn per_sandbox_devices_are_not_templatable() {
        let d = std::env::temp_dir().join(format!("sandbox-template-no-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let mut v = vm(&d);
        v.disks.push(DiskConfig {
            path: d.join("rootfs.img"),
            read_only: false,
            id: None,
        });
        assert!(matches!(key(&v), Err(TemplateError::NotTemplatable(_))));
        let mut v = vm(&d);
        v.net.push(NetConfig {
            tap: "tap0".into(),
            mac: None,
        });
        assert!(not_templatable(&v).is_some());
        // A pod's own TAP or MAC is not the template NIC; nor are two NICs.
        let mut v = vm(&d);
        v.net.push(NetConfig {
            mac: Some("0a:58:0a:58:00:02".into()),
            ..nic()
        });
        assert!(not_templatable(&v).unwrap().contains("template NIC"));
        let mut v = vm(&d);
        v.net.push(NetConfig {
            tap: "tap_svm1".into(),
            ..nic()
        });
        assert!(not_templatable(&v).is_some());
        let mut v = vm(&d);
        v.net = vec![nic(), nic()];
        assert!(not_templatable(&v).unwrap().contains("more than one"));
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn the_template_nic_is_templatable_and_its_presence_is_in_the_key() {
        let d = std::env::temp_dir().join(format!("sandbox-template-nic-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let a = vm(&d);
        let with = crate::network::template::with_nic(&a);
        assert_eq!(not_templatable(&with), None);
        let k = key(&with).unwrap();
        assert_ne!(k, key(&a).unwrap(), "a NIC template is another template");
        // Per-sandbox paths still do not count.
        let mut b = with.clone();
        b.vsock.as_mut().unwrap().uds_path = d.join("b/vsock.sock");
        assert_eq!(key(&b).unwrap(), k);
        std::fs::remove_dir_all(&d).unwrap();
    }
}
