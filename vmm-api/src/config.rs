//! `VmConfig`: the plain data that describes one microVM. The VMM's `builder::build` is the
//! one place that turns it into running objects; `validate` checks here what can be
//! checked without the VMM (the limits below are the VMM's, which refers to them).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Smallest guest RAM the VMM accepts (its guest layout's `HIMEM_START` plus 1 MiB: below
/// this even the fixed low-memory layout does not fit; the VMM asserts the sum).
pub const MIN_MEM_BYTES: u64 = 0x20_0000;
/// Number of virtio-mmio windows (so virtio devices) the VMM hands out.
pub const VIRTIO_MMIO_MAX_DEVICES: u64 = 16;
/// The guest command line when the config gives none: a quiet console on COM1 and no
/// work the boot does not need.
///
/// Each switch was measured on the emulating hosts (guest-kernel-config/README.md) and is
/// harmless on real KVM: per-CPU areas from pages rather than a zeroed 2 MiB block, no
/// LOCK-prefix rewriting for one vCPU, no quadratic /sys/module parameter setup, small
/// boot-time hash tables for a small VM, no IO-APIC timer probe loop.
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 percpu_alloc=page noreplace-smp \
     initcall_blacklist=param_sysfs_builtin_init no_timer_check \
     dhash_entries=1024 ihash_entries=1024 thash_entries=256 uhash_entries=256";
/// Longest virtio-fs tag (`struct virtio_fs_config`'s `tag[36]`, not NUL-terminated when
/// full).
pub const FS_TAG_MAX_LEN: usize = 36;
/// Largest virtio-fs queue the transport and virtio allow.
pub const FS_QUEUE_SIZE_MAX: u16 = 32768;
/// Most virtio-fs request queues a device may have (the VMM's bound, well within
/// vhost-user's 256 rings).
pub const FS_REQUEST_QUEUES_MAX: u16 = 64;

/// A virtio-fs share's parameters that no device could take.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FsParamError {
    #[error("tag {0:?} must be 1 to 36 bytes without NUL")]
    Tag(String),
    #[error("queue size {0} is not a power of two up to 32768")]
    QueueSize(u16),
    #[error("number of request queues {0} is not between 1 and 64")]
    RequestQueues(u16),
}

/// Checks a virtio-fs tag and queue parameters.
pub fn check_fs_params(
    tag: &str,
    num_request_queues: u16,
    queue_size: u16,
) -> Result<(), FsParamError> {
    if tag.is_empty() || tag.len() > FS_TAG_MAX_LEN || tag.contains('\0') {
        return Err(FsParamError::Tag(tag.into()));
    }
    if !queue_size.is_power_of_two() || queue_size > FS_QUEUE_SIZE_MAX {
        return Err(FsParamError::QueueSize(queue_size));
    }
    if !(1..=FS_REQUEST_QUEUES_MAX).contains(&num_request_queues) {
        return Err(FsParamError::RequestQueues(num_request_queues));
    }
    Ok(())
}

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
    #[error("mem_mib must be at least {min}, got {0}", min = MIN_MEM_BYTES >> 20)]
    MemTooSmall(u64),
    #[error("vsock guest_cid must be between 3 and {max}, got {0}", max = u32::MAX - 1)]
    BadCid(u64),
    #[error("invalid MAC address {0:?} (expected six hex bytes like 02:00:00:00:00:01)")]
    BadMac(String),
    #[error("too many virtio devices: {0} (at most {max})", max = VIRTIO_MMIO_MAX_DEVICES)]
    TooManyDevices(usize),
    #[error("virtio-fs {socket}: {err}")]
    Fs { socket: PathBuf, err: FsParamError },
    #[error("virtio-fs tag {0:?} is used twice (the guest mounts shares by tag)")]
    DuplicateFsTag(String),
}

/// A virtio-blk disk backed by a raw host file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskConfig {
    /// Host file (raw image).
    pub path: PathBuf,
    /// Guest writes fail with an I/O error.
    #[serde(default)]
    pub read_only: bool,
    /// Serial string the guest reads (VIRTIO_BLK_T_GET_ID); defaults to the disk's index.
    #[serde(default)]
    pub id: Option<String>,
}

fn default_cid() -> u64 {
    3
}

/// A virtio-vsock device backed by Unix sockets (Firecracker's hybrid scheme): the host
/// connects to `uds_path` and sends `CONNECT <port>`; guest connections to the host on port
/// N go to `<uds_path>_N`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VsockConfig {
    /// The guest's context ID.
    #[serde(default = "default_cid")]
    pub guest_cid: u64,
    /// Unix socket the VMM listens on.
    pub uds_path: PathBuf,
}

/// A virtio-net device on a host TAP interface.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetConfig {
    /// TAP interface name (created if absent and permitted).
    pub tap: String,
    /// Guest MAC address, `aa:bb:cc:dd:ee:ff`; random if absent.
    #[serde(default)]
    pub mac: Option<String>,
}

impl NetConfig {
    /// The MAC as bytes, if one is configured.
    pub fn mac_bytes(&self) -> Result<Option<[u8; 6]>, ConfigError> {
        let Some(text) = &self.mac else {
            return Ok(None);
        };
        let bad = || ConfigError::BadMac(text.clone());
        let parts: Vec<&str> = text.split(':').collect();
        if parts.len() != 6 {
            return Err(bad());
        }
        let mut mac = [0u8; 6];
        for (b, p) in mac.iter_mut().zip(parts) {
            if p.len() != 2 {
                return Err(bad());
            }
            *b = u8::from_str_radix(p, 16).map_err(|_| bad())?;
        }
        Ok(Some(mac))
    }
}

fn default_fs_request_queues() -> u16 {
    1
}

fn default_fs_queue_size() -> u16 {
    1024
}

/// A virtio-fs share served by a vhost-user backend (virtiofsd) listening on `socket`; the
/// guest mounts it with `mount -t virtiofs TAG DIR`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FsConfig {
    /// The backend's vhost-user socket (virtiofsd `--socket-path`); it must be listening
    /// when the VM is built.
    pub socket: PathBuf,
    /// The name the guest mounts: 1 to 36 bytes, no NUL.
    pub tag: String,
    /// Request queues besides the hiprio queue (the backend must serve them all).
    #[serde(default = "default_fs_request_queues")]
    pub num_request_queues: u16,
    /// Largest size of each queue the driver may choose: a power of two up to 32768.
    #[serde(default = "default_fs_queue_size")]
    pub queue_size: u16,
}

impl FsConfig {
    /// A share with the default queues.
    pub fn new(socket: impl Into<PathBuf>, tag: impl Into<String>) -> Self {
        Self {
            socket: socket.into(),
            tag: tag.into(),
            num_request_queues: default_fs_request_queues(),
            queue_size: default_fs_queue_size(),
        }
    }

    /// Checks the tag and the queues.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_fs_params(&self.tag, self.num_request_queues, self.queue_size).map_err(|err| {
            ConfigError::Fs {
                socket: self.socket.clone(),
                err,
            }
        })
    }
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
    /// Kernel command line; `None` uses `DEFAULT_CMDLINE`. The VMM always appends
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
    /// virtio-blk disks, in guest order (`/dev/vda`, `/dev/vdb`, ...).
    #[serde(default)]
    pub disks: Vec<DiskConfig>,
    /// virtio-vsock device.
    #[serde(default)]
    pub vsock: Option<VsockConfig>,
    /// A virtio-rng device (`/dev/hwrng`) fed from the host's getrandom.
    #[serde(default)]
    pub rng: bool,
    /// virtio-net devices.
    #[serde(default)]
    pub net: Vec<NetConfig>,
    /// virtio-fs shares (vhost-user backends).
    #[serde(default)]
    pub fs: Vec<FsConfig>,
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
            disks: Vec::new(),
            vsock: None,
            rng: false,
            net: Vec::new(),
            fs: Vec::new(),
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
        if self.mem_mib.saturating_mul(1 << 20) < MIN_MEM_BYTES {
            return Err(ConfigError::MemTooSmall(self.mem_mib));
        }
        if let Some(v) = &self.vsock {
            if v.guest_cid < 3 || v.guest_cid >= u64::from(u32::MAX) {
                return Err(ConfigError::BadCid(v.guest_cid));
            }
        }
        for n in &self.net {
            n.mac_bytes()?;
        }
        for (i, fs) in self.fs.iter().enumerate() {
            fs.validate()?;
            if self.fs[..i].iter().any(|other| other.tag == fs.tag) {
                return Err(ConfigError::DuplicateFsTag(fs.tag.clone()));
            }
        }
        let devices = self.disks.len()
            + self.net.len()
            + self.fs.len()
            + usize::from(self.rng)
            + usize::from(self.vsock.is_some());
        if devices as u64 > VIRTIO_MMIO_MAX_DEVICES {
            return Err(ConfigError::TooManyDevices(devices));
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
    fn devices_parse_and_validate() {
        let text = r#"{"kernel":"/k","disks":[{"path":"/d","read_only":true}],
            "vsock":{"uds_path":"/v.sock"},"rng":true,"net":[{"tap":"tap0","mac":"02:00:00:00:00:0a"}]}"#;
        let c: VmConfig = serde_json::from_str(text).unwrap();
        c.validate().unwrap();
        assert!(c.disks[0].read_only);
        assert_eq!(c.vsock.as_ref().unwrap().guest_cid, 3);
        assert_eq!(c.net[0].mac_bytes().unwrap(), Some([2, 0, 0, 0, 0, 10]));
        let mut bad = c.clone();
        bad.vsock.as_mut().unwrap().guest_cid = 2;
        assert!(matches!(bad.validate(), Err(ConfigError::BadCid(2))));
        for mac in ["02:00:00:00:00", "02:00:00:00:00:zz", "0200:00:00:00:00:0a"] {
            let mut bad = c.clone();
            bad.net[0].mac = Some(mac.into());
            assert!(
                matches!(bad.validate(), Err(ConfigError::BadMac(_))),
                "{mac}"
            );
        }
        let mut many = c;
        many.disks = vec![many.disks[0].clone(); 20];
        assert!(matches!(
            many.validate(),
            Err(ConfigError::TooManyDevices(23))
        ));
    }

    #[test]
    fn fs_shares_parse_with_defaults_and_validate() {
        let text = r#"{"kernel":"/k","fs":[{"socket":"/run/fs.sock","tag":"share"},
            {"socket":"/run/fs2.sock","tag":"two","num_request_queues":2,"queue_size":256}]}"#;
        let c: VmConfig = serde_json::from_str(text).unwrap();
        c.validate().unwrap();
        assert_eq!(c.fs[0], FsConfig::new("/run/fs.sock", "share"));
        assert_eq!((c.fs[0].num_request_queues, c.fs[0].queue_size), (1, 1024));
        assert_eq!((c.fs[1].num_request_queues, c.fs[1].queue_size), (2, 256));

        let unknown = r#"{"kernel":"/k","fs":[{"socket":"/s","tag":"t","dax":true}]}"#;
        assert!(serde_json::from_str::<VmConfig>(unknown).is_err());
        let no_tag = r#"{"kernel":"/k","fs":[{"socket":"/s"}]}"#;
        assert!(serde_json::from_str::<VmConfig>(no_tag).is_err());

        let bad = |f: fn(&mut FsConfig)| {
            let mut c = c.clone();
            f(&mut c.fs[1]);
            c.validate().unwrap_err().to_string()
        };
        assert!(bad(|f| f.tag = String::new()).contains("tag"));
        assert!(bad(|f| f.tag = "x".repeat(37)).contains("tag"));
        assert!(bad(|f| f.tag = "a\0b".into()).contains("tag"));
        assert!(bad(|f| f.queue_size = 1000).contains("queue size 1000"));
        assert!(bad(|f| f.queue_size = 0).contains("queue size 0"));
        assert!(bad(|f| f.num_request_queues = 0).contains("request queues 0"));
        let dup = bad(|f| f.tag = "share".into());
        assert!(dup.contains("\"share\" is used twice"), "{dup}");

        let mut many = c;
        many.fs = (0..21)
            .map(|i| FsConfig::new("/s", format!("t{i}")))
            .collect();
        assert!(matches!(
            many.validate(),
            Err(ConfigError::TooManyDevices(21))
        ));
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
