//! Fuzz entry point for the OCI translation (`sandbox/fuzz`, target `oci_translate`):
//! arbitrary bytes as config.json through everything `create` does with a spec before it
//! touches the host: the raw-name checks, the typed parse, validation, the annotations, `vm_config` and
//! `container_request`. Nothing may panic, and whatever translates must be a VM config the
//! VMM accepts.

use std::path::Path;

use oci_spec::runtime::Spec;
use serde_json::Value;

use super::annotations::Annotations;
use super::translate::{container_request, vm_config, Defaults, HostPath, RootfsMode, VmPaths};
use super::validate;

/// Host paths answer by their length, so bind sources of every kind appear.
fn probe(p: &Path) -> HostPath {
    match p.as_os_str().len() % 3 {
        0 => HostPath::File,
        1 => HostPath::Dir,
        _ => HostPath::Other,
    }
}

/// One input.
pub fn oci_translate(data: &[u8]) {
    let Ok(raw) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    // The CLI rejects bad names before the typed parse; the translation must not need it.
    let _ = validate::raw_names(&raw);
    let Ok(spec) = serde_json::from_value::<Spec>(raw) else {
        return;
    };
    let valid = validate::spec(&spec).is_ok();
    let defaults = Defaults {
        kernel: Some("/k/vmlinux".into()),
        initrd: Some("/k/agent.cpio".into()),
        agent_disk: data.len().is_multiple_of(2).then(|| "/k/agent.ext4".into()),
        max_vcpus: 4,
    };
    let d = Path::new("/run/sandbox-vm/fuzz");
    let paths = VmPaths {
        vsock: d.join("vsock.sock"),
        console_log: d.join("console.log"),
        fs_socket: d.join("virtiofsd.sock"),
        volumes_fs_socket: d.join("virtiofsd-volumes.sock"),
        rootfs_disk: d.join("rootfs.img"),
    };
    let translated = Annotations::parse(&spec)
        .and_then(|ann| vm_config(&spec, &ann, &defaults, &paths).map(|vm| (vm, ann.rootfs)));
    let mode = match translated {
        Ok((vm, mode)) => {
            assert!(valid, "an invalid spec translated");
            if let Err(e) = vm.validate() {
                panic!("translated into a VM config the VMM rejects: {e}");
            }
            let _ = serde_json::to_string(&vm);
            mode
        }
        Err(_) => RootfsMode::Share,
    };
    if let Ok(plan) = container_request("fuzz", &spec, Path::new("/b/rootfs"), mode, &probe) {
        assert!(valid, "an invalid container spec translated");
        let _ = serde_json::to_string(&plan.request);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bounded random mutations of a valid spec, on every `cargo test`.
    #[test]
    fn random_specs_never_panic() {
        let base = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/fuzz/seeds/oci_translate/full.json"
        ))
        .unwrap();
        oci_translate(&base);
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut rnd = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let alphabet = b"{}[]\":,0-1/.a\\ ";
        for _ in 0..3000 {
            let mut input = base.clone();
            for _ in 0..(rnd() % 4 + 1) {
                let i = (rnd() as usize) % input.len();
                match rnd() % 3 {
                    0 => input[i] = alphabet[(rnd() as usize) % alphabet.len()],
                    1 => {
                        input.remove(i);
                    }
                    _ => input.insert(i, alphabet[(rnd() as usize) % alphabet.len()]),
                }
            }
            oci_translate(&input);
        }
    }
}
