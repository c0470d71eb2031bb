//! Guest physical memory layout. The low addresses follow the Linux x86 boot protocol and mirror what
//! Firecracker uses, so the same kernels boot the same way.

/// GDT written for the boot CPU.
pub const BOOT_GDT_START: u64 = 0x500;
/// Empty IDT (interrupts stay disabled until the kernel installs its own).
pub const BOOT_IDT_START: u64 = 0x520;
/// The zero page (`struct boot_params`).
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Initial stack pointer for the boot CPU.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Identity-mapping page tables: PML4, PDPT and one page directory of 2 MiB pages (first 1 GiB).
pub const PML4_START: u64 = 0x9000;
pub const PDPTE_START: u64 = 0xa000;
pub const PDE_START: u64 = 0xb000;
/// Kernel command line.
pub const CMDLINE_START: u64 = 0x20000;
/// `COMMAND_LINE_SIZE` of x86 Linux, terminating NUL included.
pub const CMDLINE_MAX_SIZE: usize = 2048;
/// Start of the Extended BIOS Data Area: low RAM ends here, the MP table lives here.
pub const EBDA_START: u64 = 0x9fc00;
/// First address above the legacy hole: the kernel is loaded from here up.
pub const HIMEM_START: u64 = 0x10_0000;
/// 32-bit MMIO hole below 4 GiB: guest RAM skips it.
pub const MMIO_GAP_START: u64 = 0xc000_0000;
pub const MMIO_GAP_END: u64 = 0x1_0000_0000;
/// Start of the virtio-mmio device window, inside the MMIO hole.
pub const MMIO_DEVICES_START: u64 = 0xd000_0000;
/// IO-APIC and local APIC register windows.
pub const IOAPIC_ADDR: u32 = 0xfec0_0000;
pub const APIC_ADDR: u32 = 0xfee0_0000;
/// Three pages KVM needs for the TSS on Intel hosts, at the very top of the 32-bit space.
pub const KVM_TSS_ADDRESS: usize = 0xfffb_d000;
/// Interrupt lines the IO-APIC routes (legacy 0-15 plus 16-23 for devices).
pub const IOAPIC_PINS: u8 = 24;
/// Smallest guest the VMM agrees to build: the kernel decompresses itself at 16 MiB.
pub const MIN_MEMORY_MIB: u32 = 32;

/// The RAM regions of a guest with `size` bytes of memory, skipping the MMIO hole.
pub fn ram_regions(size: u64) -> Vec<(u64, u64)> {
    if size <= MMIO_GAP_START {
        vec![(0, size)]
    } else {
        vec![(0, MMIO_GAP_START), (MMIO_GAP_END, size - MMIO_GAP_START)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_guest_is_one_region() {
        assert_eq!(ram_regions(128 << 20), vec![(0, 128 << 20)]);
    }

    #[test]
    fn large_guest_skips_the_mmio_hole() {
        let regions = ram_regions(4 << 30);
        assert_eq!(regions, vec![(0, MMIO_GAP_START), (MMIO_GAP_END, 1 << 30)]);
        let total: u64 = regions.iter().map(|r| r.1).sum();
        assert_eq!(total, 4 << 30);
    }
}
