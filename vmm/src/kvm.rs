//! Opening KVM and checking that it can run our VMs.

use kvm_ioctls::{Cap, Kvm, VmFd};

/// The only KVM API version there has ever been.
const KVM_API_VERSION: i32 = 12;

/// Capabilities the VMM cannot work without, with a name for error messages.
const REQUIRED_CAPS: &[(Cap, &str)] = &[
    (Cap::UserMemory, "KVM_CAP_USER_MEMORY"),
    (Cap::Irqchip, "KVM_CAP_IRQCHIP"),
    (Cap::Irqfd, "KVM_CAP_IRQFD"),
    (Cap::Ioeventfd, "KVM_CAP_IOEVENTFD"),
    (Cap::Pit2, "KVM_CAP_PIT2"),
    (Cap::SetTssAddr, "KVM_CAP_SET_TSS_ADDR"),
    (Cap::ExtCpuid, "KVM_CAP_EXT_CPUID"),
];

/// Errors opening KVM or creating the VM.
#[derive(Debug, thiserror::Error)]
pub enum KvmError {
    #[error("/dev/kvm does not exist: this host has no KVM (load kvm_intel/kvm_amd or enable nested virtualization)")]
    NoDevice,
    #[error("no permission to open /dev/kvm: run as root or add the user to the kvm group")]
    NoPermission,
    #[error("cannot open /dev/kvm: {0}")]
    Open(kvm_ioctls::Error),
    #[error("KVM API version {0} is not supported (need {KVM_API_VERSION})")]
    ApiVersion(i32),
    #[error("KVM lacks {0}, which sandbox-vm needs")]
    MissingCap(&'static str),
    #[error("cannot create the KVM VM: {0}")]
    CreateVm(kvm_ioctls::Error),
    #[error("{0} vCPUs requested, but this host's KVM allows at most {1}")]
    TooManyVcpus(u8, usize),
    #[error("vcpus must be at least 1")]
    NoVcpus,
}

/// An open `/dev/kvm` that passed the checks.
pub struct KvmContext {
    kvm: Kvm,
    max_vcpus: usize,
}

impl KvmContext {
    /// Opens `/dev/kvm` and checks the API version and required capabilities.
    pub fn open() -> Result<Self, KvmError> {
        let kvm = Kvm::new().map_err(|e| match e.errno() {
            libc::ENOENT | libc::ENXIO | libc::ENODEV => KvmError::NoDevice,
            libc::EACCES | libc::EPERM => KvmError::NoPermission,
            _ => KvmError::Open(e),
        })?;
        let version = kvm.get_api_version();
        if version != KVM_API_VERSION {
            return Err(KvmError::ApiVersion(version));
        }
        if let Some(name) = first_missing(|cap| kvm.check_extension(cap)) {
            return Err(KvmError::MissingCap(name));
        }
        let max_vcpus = kvm.get_max_vcpus();
        Ok(Self { kvm, max_vcpus })
    }

    /// The `Kvm` handle (for CPUID and MSR queries).
    pub fn kvm(&self) -> &Kvm {
        &self.kvm
    }

    /// Checks a vCPU count against this host's limit.
    pub fn check_vcpus(&self, vcpus: u8) -> Result<(), KvmError> {
        check_vcpu_count(vcpus, self.max_vcpus)
    }

    /// Creates an empty VM.
    pub fn create_vm(&self) -> Result<VmFd, KvmError> {
        self.kvm.create_vm().map_err(KvmError::CreateVm)
    }
}

/// The name of the first required capability `has` says is absent.
fn first_missing(has: impl Fn(Cap) -> bool) -> Option<&'static str> {
    REQUIRED_CAPS
        .iter()
        .find(|(cap, _)| !has(*cap))
        .map(|(_, name)| *name)
}

fn check_vcpu_count(vcpus: u8, max: usize) -> Result<(), KvmError> {
    match vcpus {
        0 => Err(KvmError::NoVcpus),
        n if usize::from(n) > max => Err(KvmError::TooManyVcpus(n, max)),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_capability_is_named() {
        assert_eq!(first_missing(|_| true), None);
        assert_eq!(first_missing(|c| c != Cap::Irqfd), Some("KVM_CAP_IRQFD"));
        let msg = KvmError::MissingCap("KVM_CAP_IRQFD").to_string();
        assert!(msg.contains("KVM_CAP_IRQFD"), "{msg}");
    }

    #[test]
    fn vcpu_limits() {
        assert!(matches!(check_vcpu_count(0, 4), Err(KvmError::NoVcpus)));
        assert!(check_vcpu_count(4, 4).is_ok());
        assert!(matches!(
            check_vcpu_count(5, 4),
            Err(KvmError::TooManyVcpus(5, 4))
        ));
    }
}
