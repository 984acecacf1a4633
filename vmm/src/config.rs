//! `VmConfig`: the plain data that describes one microVM. `builder::build` is the one place
//! that turns it into running objects.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Errors reading or validating a configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read VM config {path}: {err}")]
    Read { path: PathBuf, err: std::io::Error },
    #[error("invalid VM config {path}: {err}")]
    Parse {
        path: PathBuf,
        err: serde_json::Error,
    },
    #[error("vcpus must be at least 1")]
    NoVcpus,
    #[error("mem_mib must be at least {min}, got {0}", min = crate::layout::MIN_MEM_BYTES >> 20)]
    MemTooSmall(u64),
}

/// Where the guest's 8250 serial console goes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum SerialOutput {
    /// The VMM's standard output.
    #[default]
    Stdout,
    /// Appended to a file.
    File(PathBuf),
    /// Discarded (the VMM still watches it for a guest kernel panic).
    Off,
}

/// Whether to apply the host-compatibility profile (see `compat`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CompatSetting {
    /// On when the host CPU shows no vmx/svm flag (KVM emulates guest kernel mode).
    #[default]
    Auto,
    /// Always on.
    On,
    /// Always off.
    Off,
}

fn default_vcpus() -> u8 {
    1
}

fn default_mem_mib() -> u64 {
    128
}

/// One microVM.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmConfig {
    /// Guest kernel: an ELF `vmlinux` or a `bzImage`.
    pub kernel: PathBuf,
    /// Initial ramdisk (an uncompressed cpio is fastest here).
    #[serde(default)]
    pub initrd: Option<PathBuf>,
    /// Kernel command line; `None` uses `builder::DEFAULT_CMDLINE`. The VMM always appends
    /// what it needs itself (reboot/panic handling, compat switches, virtio-mmio devices).
    #[serde(default)]
    pub cmdline: Option<String>,
    /// Number of vCPUs.
    #[serde(default = "default_vcpus")]
    pub vcpus: u8,
    /// Guest RAM in MiB.
    #[serde(default = "default_mem_mib")]
    pub mem_mib: u64,
    /// Serial console destination.
    #[serde(default)]
    pub serial: SerialOutput,
    /// Host-compatibility profile.
    #[serde(default)]
    pub compat_profile: CompatSetting,
}

impl VmConfig {
    /// A config with defaults for everything but the kernel.
    pub fn new(kernel: impl Into<PathBuf>) -> Self {
        Self {
            kernel: kernel.into(),
            initrd: None,
            cmdline: None,
            vcpus: default_vcpus(),
            mem_mib: default_mem_mib(),
            serial: SerialOutput::default(),
            compat_profile: CompatSetting::default(),
        }
    }

    /// Reads a JSON config file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|err| ConfigError::Read {
            path: path.into(),
            err,
        })?;
        serde_json::from_str(&text).map_err(|err| ConfigError::Parse {
            path: path.into(),
            err,
        })
    }

    /// Checks what can be checked without opening KVM or the files.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.vcpus == 0 {
            return Err(ConfigError::NoVcpus);
        }
        if self.mem_mib.saturating_mul(1 << 20) < crate::layout::MIN_MEM_BYTES {
            return Err(ConfigError::MemTooSmall(self.mem_mib));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimal_json_gets_defaults() {
        let c: VmConfig = serde_json::from_str(r#"{"kernel": "/k"}"#).unwrap();
        assert_eq!(c, VmConfig::new("/k"));
        c.validate().unwrap();
    }

    #[test]
    fn full_json_round_trips() {
        let text = r#"{"kernel":"/k","initrd":"/i","cmdline":"quiet","vcpus":2,"mem_mib":256,
            "serial":{"file":"/tmp/s"},"compat_profile":"off"}"#;
        let c: VmConfig = serde_json::from_str(text).unwrap();
        assert_eq!(c.serial, SerialOutput::File("/tmp/s".into()));
        assert_eq!(c.compat_profile, CompatSetting::Off);
        let back: VmConfig = serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn unknown_fields_and_bad_values_are_rejected() {
        assert!(serde_json::from_str::<VmConfig>(r#"{"kernel":"/k","vcpu":2}"#).is_err());
        assert!(serde_json::from_str::<VmConfig>(r#"{"kernel":"/k","vcpus":-1}"#).is_err());
        let mut c = VmConfig::new("/k");
        c.vcpus = 0;
        assert!(matches!(c.validate(), Err(ConfigError::NoVcpus)));
        c.vcpus = 1;
        c.mem_mib = 1;
        assert!(matches!(c.validate(), Err(ConfigError::MemTooSmall(1))));
    }
}
