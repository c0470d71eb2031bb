//! Guest RAM: anonymous host mappings laid out around the x86 MMIO hole, registered with KVM.

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;
use vm_memory::{
    GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion, MemoryRegionAddress,
};

use crate::arch::x86_64::layout::ram_regions;

/// Guest memory could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("allocating {mib} MiB of guest memory: {source}")]
    Allocate {
        mib: u64,
        source: vm_memory::mmap::FromRangesError,
    },
    #[error("guest memory region {0} has no host mapping")]
    NoHostMapping(usize),
    #[error("registering guest memory slot {slot} with KVM: {source}")]
    Register {
        slot: usize,
        source: kvm_ioctls::Error,
    },
}

/// Allocates `size` bytes of guest RAM and gives each region a KVM memory slot.
pub fn create(vm: &VmFd, size: u64) -> Result<GuestMemoryMmap, MemoryError> {
    let ranges: Vec<(GuestAddress, usize)> = ram_regions(size)
        .into_iter()
        .map(|(start, len)| (GuestAddress(start), len as usize))
        .collect();
    let mem = GuestMemoryMmap::from_ranges(&ranges).map_err(|source| MemoryError::Allocate {
        mib: size >> 20,
        source,
    })?;
    for (slot, region) in mem.iter().enumerate() {
        let host = region
            .get_host_address(MemoryRegionAddress(0))
            .map_err(|_| MemoryError::NoHostMapping(slot))?;
        let desc = kvm_userspace_memory_region {
            slot: slot as u32,
            flags: 0,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: host as u64,
        };
        // SAFETY: the region is a live mapping owned by `mem`, which outlives the VM: the `Vmm`
        // keeps it until after every vCPU thread has been joined and the VM fd is closed.
        unsafe { vm.set_user_memory_region(desc) }
            .map_err(|source| MemoryError::Register { slot, source })?;
    }
    Ok(mem)
}
