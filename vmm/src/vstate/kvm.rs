//! `/dev/kvm`: opening it (its common failures turned into instructions) and checking that this
//! host's KVM has what a cocoon VM needs.

use kvm_ioctls::{Cap, Kvm};

/// KVM cannot be used here, with the fix in the message.
#[derive(Debug, thiserror::Error)]
pub enum KvmError {
    #[error("KVM is not available: /dev/kvm does not exist (enable hardware virtualization, load kvm_intel or kvm_amd, or use the emulated KVM host of the tests)")]
    Missing,
    #[error(
        "cannot open /dev/kvm: permission denied (add your user to the 'kvm' group or run as root)"
    )]
    PermissionDenied,
    #[error("cannot open /dev/kvm: {0}")]
    Open(kvm_ioctls::Error),
    #[error("this host's KVM lacks {0}, which cocoon needs")]
    MissingCapability(&'static str),
    #[error("--vcpus {requested} is more than this host's KVM allows ({max})")]
    TooManyVcpus { requested: u8, max: usize },
}

/// Opens /dev/kvm.
pub fn open() -> Result<Kvm, KvmError> {
    Kvm::new().map_err(|e| match e.errno() {
        libc::ENOENT => KvmError::Missing,
        libc::EACCES | libc::EPERM => KvmError::PermissionDenied,
        _ => KvmError::Open(e),
    })
}

/// Checks the capabilities cocoon relies on and that `vcpus` vCPUs fit.
pub fn check(kvm: &Kvm, vcpus: u8) -> Result<(), KvmError> {
    for (cap, name) in [
        (Cap::Irqchip, "KVM_CAP_IRQCHIP"),
        (Cap::Irqfd, "KVM_CAP_IRQFD"),
        (Cap::Ioeventfd, "KVM_CAP_IOEVENTFD"),
        (Cap::Pit2, "KVM_CAP_PIT2"),
        (Cap::UserMemory, "KVM_CAP_USER_MEMORY"),
        (Cap::SetTssAddr, "KVM_CAP_SET_TSS_ADDR"),
        (Cap::ExtCpuid, "KVM_CAP_EXT_CPUID"),
    ] {
        if !kvm.check_extension(cap) {
            return Err(KvmError::MissingCapability(name));
        }
    }
    let max = kvm.get_max_vcpus();
    if usize::from(vcpus) > max {
        return Err(KvmError::TooManyVcpus {
            requested: vcpus,
            max,
        });
    }
    Ok(())
}
