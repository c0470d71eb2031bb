//! The KVM VM object: created with its TSS, in-kernel irqchip (PIC + IO-APIC) and PIT.

use kvm_bindings::{kvm_pit_config, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Cap, Kvm, VmFd};

use crate::arch::x86_64::layout::KVM_TSS_ADDRESS;

/// A KVM ioctl on the VM failed.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {source}")]
pub struct VmCreateError {
    what: &'static str,
    source: std::io::Error,
}

fn failed(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmCreateError {
    move |e| VmCreateError {
        what,
        source: std::io::Error::from_raw_os_error(e.errno()),
    }
}

/// Creates the VM with the interrupt controllers and timer every cocoon guest uses.
pub fn create(kvm: &Kvm) -> Result<VmFd, VmCreateError> {
    let vm = kvm
        .create_vm()
        .map_err(failed("creating the VM (KVM_CREATE_VM)"))?;
    vm.set_tss_address(KVM_TSS_ADDRESS)
        .map_err(failed("KVM_SET_TSS_ADDR"))?;
    vm.create_irq_chip()
        .map_err(failed("creating the in-kernel irqchip"))?;
    vm.create_pit2(kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    })
    .map_err(failed("creating the in-kernel PIT"))?;
    disable_pit_reinjection(kvm, &vm)?;
    Ok(vm)
}

vmm_sys_util::ioctl_io_nr!(KVM_REINJECT_CONTROL, kvm_bindings::KVMIO, 0x71);

/// Turns off the PIT's catch-up of missed ticks. A guest that was descheduled for a while would
/// otherwise get a burst of stale timer interrupts on its return; with a stalled or slow host (seen
/// under nested virtualization) KVM's PIT worker and the vCPU then livelock the host kernel. Guest
/// time comes from kvm-clock, not from counting PIT ticks, so nothing is lost.
fn disable_pit_reinjection(kvm: &Kvm, vm: &VmFd) -> Result<(), VmCreateError> {
    if !kvm.check_extension(Cap::ReinjectControl) {
        return Ok(());
    }
    let control = kvm_bindings::kvm_reinject_control {
        pit_reinject: 0,
        ..Default::default()
    };
    // SAFETY: KVM_REINJECT_CONTROL reads a kvm_reinject_control, which `control` is and which
    // outlives the call; the VM fd is valid for the duration.
    let ret = unsafe { vmm_sys_util::ioctl::ioctl_with_ref(vm, KVM_REINJECT_CONTROL(), &control) };
    if ret < 0 {
        return Err(VmCreateError {
            what: "KVM_REINJECT_CONTROL",
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}
