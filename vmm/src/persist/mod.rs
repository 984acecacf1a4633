//! Snapshots: a paused VM's whole state in a directory, and the checks a restore makes.
//!
//! A snapshot directory holds two files:
//! - `state.json`: `{"header": SnapshotHeader, "config": VmConfig, "vm": VmState,
//!   "vcpus": [VcpuState…]}`. The header is read and checked first (magic, format version,
//!   CPU profile, kernel identity), so a snapshot from another format version, CPU profile
//!   or kernel is refused with one line before anything else is parsed.
//! - `memory`: guest RAM, sparse (see `memory`), mapped MAP_PRIVATE by a restore.
//!
//! Each piece of state is saved and restored by the module beside what it saves:
//! `vcpu` (per vCPU, on its own thread), `vm` (interrupt controllers, PIT, clock),
//! `memory`. `builder::build_from_snapshot` puts them back together.
//!
//! Syscalls (for seccomp allow-lists): `SnapshotSource::write` creates the directory and
//! writes files (mkdir, open, write, pwrite64, ftruncate, fsync, rename) and hashes the
//! kernel file (open, read); `read_snapshot`/`check_kernel` open, read and stat files.

pub mod memory;
pub mod vcpu;
pub mod vm;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use kvm_bindings::kvm_cpuid_entry2;
use kvm_ioctls::VmFd;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::{SerialOutput, VmConfig};
use crate::devices::virtio::mmio::persist::{TransportRestoreError, TransportState};
use crate::devices::virtio::mmio::MmioTransport;
use crate::memory::GuestMemory;
pub use memory::MemoryFileError;
pub use vcpu::{VcpuState, VcpuStateError};
pub use vm::{VmState, VmStateError};

use vmm_api::snapshot::hex;
pub use vmm_api::snapshot::{sha256_hex, FORMAT_VERSION, MAGIC, MEMORY_FILE, STATE_FILE};

/// Errors taking, reading or checking a snapshot. The refusals (`NotASnapshot`,
/// `FormatVersion`, `CpuProfile`, `Kernel`, `Shape`) are one line each saying what to do.
#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    #[error("{path}: {err}")]
    Io { path: PathBuf, err: std::io::Error },
    #[error("{path} is not a sandbox-vm snapshot state file: {reason}")]
    NotASnapshot { path: PathBuf, reason: String },
    #[error("snapshot {dir} has format version {found}; this sandbox-vm reads version {FORMAT_VERSION}: take the snapshot again with this version")]
    FormatVersion { dir: PathBuf, found: u32 },
    #[error("snapshot {dir} was taken with CPU profile {saved}; this host gives {here}: take the snapshot on a host of the same kind")]
    CpuProfile {
        dir: PathBuf,
        saved: String,
        here: String,
    },
    #[error("snapshot {dir} was taken with another kernel (sha256 {saved}) than {kernel} (sha256 {here}): rebuild the snapshot or template for this kernel")]
    Kernel {
        dir: PathBuf,
        kernel: PathBuf,
        saved: String,
        here: String,
    },
    #[error("snapshot {dir} is inconsistent: {0}", dir = .1.display())]
    Shape(String, PathBuf),
    #[error(transparent)]
    Vcpu(#[from] VcpuStateError),
    #[error(transparent)]
    Vm(#[from] VmStateError),
    #[error(transparent)]
    Memory(#[from] MemoryFileError),
    #[error("snapshot {dir}: {err}", dir = .0.display(), err = .1)]
    Device(PathBuf, TransportRestoreError),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> PersistError + '_ {
    move |err| PersistError::Io {
        path: path.to_path_buf(),
        err,
    }
}

/// What a snapshot must match to be restored here.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotHeader {
    pub magic: String,
    pub format_version: u32,
    pub cpu_profile: CpuProfile,
    pub kernel: KernelIdentity,
    pub shape: VmShape,
}

/// The guest's CPU as the VMM configured it: the host-compatibility profile (if on) and a
/// hash of vCPU 0's CPUID. A guest kernel picks code paths by CPUID at boot; restoring it
/// under another CPUID could run instructions the host lacks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CpuProfile {
    pub compat: Option<String>,
    pub cpuid_sha256: String,
}

impl std::fmt::Display for CpuProfile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let compat = self.compat.as_deref().unwrap_or("none");
        write!(f, "compat={compat} cpuid={}", short(&self.cpuid_sha256))
    }
}

impl CpuProfile {
    /// The profile of vCPU 0's configured CPUID.
    pub fn of(compat: Option<&str>, cpuid: &[kvm_cpuid_entry2]) -> Self {
        let mut h = Sha256::new();
        for e in cpuid {
            for v in [e.function, e.index, e.flags, e.eax, e.ebx, e.ecx, e.edx] {
                h.update(v.to_le_bytes());
            }
        }
        Self {
            compat: compat.map(str::to_string),
            cpuid_sha256: hex(&h.finalize()),
        }
    }
}

/// Which kernel the guest booted: its content hash, and the file's size, mtime and inode
/// so a restore can skip re-hashing an unchanged file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KernelIdentity {
    pub sha256: String,
    pub size: u64,
    pub mtime_ns: i128,
    pub inode: u64,
}

/// The VM's shape: what the restored VM is built with.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmShape {
    pub vcpus: u8,
    pub mem_mib: u64,
}

/// The whole state file.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Snapshot {
    pub header: SnapshotHeader,
    /// The config the VM was built from (restores apply their overrides to it).
    pub config: VmConfig,
    pub vm: VmState,
    pub vcpus: Vec<VcpuState>,
    /// The virtio devices, in attach order (the config's order: disks, vsock, rng, net, fs).
    pub devices: Vec<TransportState>,
}

fn short(h: &str) -> &str {
    h.get(..12).unwrap_or(h)
}

/// Hashes a file with SHA-256 (the kernel identity, the template cache key).
pub fn sha256_file(path: &Path) -> Result<String, PersistError> {
    vmm_api::snapshot::sha256_file(path).map_err(io_err(path))
}

/// The identity of the kernel file at `path`.
pub fn identify_kernel(path: &Path) -> Result<KernelIdentity, PersistError> {
    let meta = std::fs::metadata(path).map_err(io_err(path))?;
    Ok(KernelIdentity {
        sha256: sha256_file(path)?,
        size: meta.len(),
        mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
        inode: meta.ino(),
    })
}

/// Refuses the snapshot unless `kernel` is the kernel it was taken with. An unchanged file
/// (same size, mtime and inode) is not hashed again.
pub fn check_kernel(dir: &Path, saved: &KernelIdentity, kernel: &Path) -> Result<(), PersistError> {
    let meta = std::fs::metadata(kernel).map_err(io_err(kernel))?;
    let mtime_ns = i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec());
    if (meta.len(), mtime_ns, meta.ino()) == (saved.size, saved.mtime_ns, saved.inode) {
        return Ok(());
    }
    let here = sha256_file(kernel)?;
    if here == saved.sha256 {
        return Ok(());
    }
    Err(PersistError::Kernel {
        dir: dir.to_path_buf(),
        kernel: kernel.to_path_buf(),
        saved: short(&saved.sha256).to_string(),
        here: short(&here).to_string(),
    })
}

/// Refuses a snapshot whose CPU profile differs from this host's.
pub fn check_cpu_profile(
    dir: &Path,
    saved: &CpuProfile,
    here: &CpuProfile,
) -> Result<(), PersistError> {
    if saved == here {
        return Ok(());
    }
    Err(PersistError::CpuProfile {
        dir: dir.to_path_buf(),
        saved: saved.to_string(),
        here: here.to_string(),
    })
}

/// Reads `DIR/state.json`: the header first (refusing another magic or format version),
/// then the rest.
pub fn read_snapshot(dir: &Path) -> Result<Snapshot, PersistError> {
    let path = dir.join(STATE_FILE);
    let text = std::fs::read(&path).map_err(io_err(&path))?;
    let not = |reason: String| PersistError::NotASnapshot {
        path: path.clone(),
        reason,
    };
    let value: serde_json::Value = serde_json::from_slice(&text).map_err(|e| not(e.to_string()))?;
    let header = value.get("header").ok_or_else(|| not("no header".into()))?;
    if header.get("magic").and_then(|m| m.as_str()) != Some(MAGIC) {
        return Err(not("wrong magic".into()));
    }
    let version = header.get("format_version").and_then(|v| v.as_u64());
    match version.map(u32::try_from) {
        Some(Ok(FORMAT_VERSION)) => {}
        Some(Ok(found)) => {
            return Err(PersistError::FormatVersion {
                dir: dir.to_path_buf(),
                found,
            })
        }
        _ => return Err(not("no format version".into())),
    }
    let snap: Snapshot = serde_json::from_value(value).map_err(|e| not(e.to_string()))?;
    check_consistent(dir, &snap)?;
    Ok(snap)
}

/// The state must agree with itself: the shape with the config and the vCPU list.
fn check_consistent(dir: &Path, s: &Snapshot) -> Result<(), PersistError> {
    let bad = |what: String| Err(PersistError::Shape(what, dir.to_path_buf()));
    let shape = &s.header.shape;
    if (shape.vcpus, shape.mem_mib) != (s.config.vcpus, s.config.mem_mib) {
        return bad("its header and config disagree on the VM shape".into());
    }
    if s.vcpus.len() != usize::from(shape.vcpus) {
        return bad(format!(
            "{} vCPU states for {} vCPUs",
            s.vcpus.len(),
            shape.vcpus
        ));
    }
    if s.vcpus
        .iter()
        .enumerate()
        .any(|(i, v)| usize::from(v.id) != i)
    {
        return bad("the vCPU states are out of order".into());
    }
    Ok(())
}

/// What each restored VM (each clone of a template) changes in the snapshot's config.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestoreOverrides {
    /// The kernel the caller would boot: the restore is refused unless the snapshot was
    /// taken with this kernel (default: the snapshot config's kernel path, which must
    /// still hold the same kernel).
    #[serde(default)]
    pub kernel: Option<PathBuf>,
    #[serde(default)]
    pub serial: Option<SerialOutput>,
    /// The vsock device's host socket (each clone needs its own).
    #[serde(default)]
    pub vsock_uds: Option<PathBuf>,
    /// The guest's vsock CID.
    #[serde(default)]
    pub vsock_cid: Option<u64>,
    /// MACs for the net devices, in order (the guest sees a device's MAC when its driver
    /// probes; a running guest is told by its agent).
    #[serde(default)]
    pub macs: Vec<String>,
    /// vhost-user sockets for the virtio-fs devices, in order (each clone runs its own
    /// backend; the device reconnects to it with the saved ring positions).
    #[serde(default)]
    pub fs_sockets: Vec<PathBuf>,
}

impl RestoreOverrides {
    /// Applies the overrides to a snapshot's config.
    pub fn apply(&self, config: &mut VmConfig) {
        if let Some(k) = &self.kernel {
            config.kernel = k.clone();
        }
        if let Some(s) = &self.serial {
            config.serial = s.clone();
        }
        if let Some(v) = &mut config.vsock {
            if let Some(p) = &self.vsock_uds {
                v.uds_path = p.clone();
            }
            if let Some(cid) = self.vsock_cid {
                v.guest_cid = cid;
            }
        }
        for (net, mac) in config.net.iter_mut().zip(&self.macs) {
            net.mac = Some(mac.clone());
        }
        for (fs, socket) in config.fs.iter_mut().zip(&self.fs_sockets) {
            fs.socket = socket.clone();
        }
    }
}

fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Sets each saved device state into the transport attached in the same place.
pub fn restore_devices(
    dir: &Path,
    transports: &[Arc<Mutex<MmioTransport>>],
    saved: &[TransportState],
) -> Result<(), PersistError> {
    if transports.len() != saved.len() {
        return Err(PersistError::Shape(
            format!(
                "{} saved virtio devices for {} attached",
                saved.len(),
                transports.len()
            ),
            dir.to_path_buf(),
        ));
    }
    for (t, s) in transports.iter().zip(saved) {
        lock(t)
            .restore_state(s)
            .map_err(|e| PersistError::Device(dir.to_path_buf(), e))?;
    }
    Ok(())
}

pub use vmm_api::api::SnapshotInfo;

/// What a running VM keeps so it can be snapshotted from the API thread.
pub struct SnapshotSource {
    // Field order is drop order: the VM fd before the memory it maps.
    pub(crate) vm_fd: Arc<VmFd>,
    pub(crate) mem: GuestMemory,
    pub(crate) transports: Vec<Arc<Mutex<MmioTransport>>>,
    pub(crate) config: VmConfig,
    pub(crate) cpu_profile: CpuProfile,
}

impl SnapshotSource {
    /// Writes the snapshot of a paused VM whose vCPU states are `vcpus` into `dir`
    /// (created if needed; an earlier snapshot there is replaced).
    pub fn write(
        &self,
        dir: &Path,
        vcpus: Vec<VcpuState>,
        started: Instant,
    ) -> Result<SnapshotInfo, PersistError> {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        let path = dir.join(STATE_FILE);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io_err(&path)(e)),
            _ => {}
        }
        let vm = vm::save(&self.vm_fd)?;
        let state_us = us(started);
        let snap = Snapshot {
            header: SnapshotHeader {
                magic: MAGIC.into(),
                format_version: FORMAT_VERSION,
                cpu_profile: self.cpu_profile.clone(),
                kernel: identify_kernel(&self.config.kernel)?,
                shape: VmShape {
                    vcpus: self.config.vcpus,
                    mem_mib: self.config.mem_mib,
                },
            },
            config: self.config.clone(),
            vm,
            vcpus,
            devices: self
                .transports
                .iter()
                .map(|t| lock(t).save_state())
                .collect(),
        };
        let mem_started = Instant::now();
        let memory_bytes = memory::save_memory_file(&self.mem, &dir.join(MEMORY_FILE))?;
        let memory_us = us(mem_started);
        // The state file goes last and by rename: a directory with a state file is whole.
        let tmp = dir.join(format!("{STATE_FILE}.tmp"));
        let text = serde_json::to_vec(&snap).map_err(|e| PersistError::NotASnapshot {
            path: tmp.clone(),
            reason: e.to_string(),
        })?;
        std::fs::write(&tmp, text).map_err(io_err(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(io_err(&path))?;
        Ok(SnapshotInfo {
            dir: dir.to_path_buf(),
            memory_bytes,
            state_us,
            memory_us,
        })
    }
}

fn us(since: Instant) -> u64 {
    u64::try_from(since.elapsed().as_micros()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests;
