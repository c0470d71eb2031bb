//! Intel MultiProcessor Specification 1.4 tables: how a guest without ACPI learns its CPUs, IO-APIC
//! and interrupt routing. Linux scans the last KiB of base memory (the EBDA) and finds them there.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::{APIC_ADDR, IOAPIC_ADDR, IOAPIC_PINS};

const MPC_SPEC: u8 = 4;
const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
const CPU_ENABLED: u8 = 1;
const CPU_BOOTPROCESSOR: u8 = 2;
const CPU_STEPPING: u32 = 0x600;
const CPU_FEATURE_APIC: u32 = 0x200;
const CPU_FEATURE_FPU: u32 = 0x001;
const ENTRY_PROCESSOR: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_INTSRC: u8 = 3;
const ENTRY_LINTSRC: u8 = 4;
const IRQ_TYPE_INT: u8 = 0;
const IRQ_TYPE_NMI: u8 = 1;
const IRQ_TYPE_EXTINT: u8 = 3;
const FLOATING_POINTER_LEN: usize = 16;
const HEADER_LEN: usize = 44;

/// The MP table does not fit where it must go, or has too many CPUs.
#[derive(Debug, thiserror::Error)]
pub enum MptableError {
    #[error("the MP table supports at most 254 vCPUs, {0} requested")]
    TooManyCpus(u8),
    #[error("writing the MP table into guest memory: {0}")]
    GuestMemory(#[from] vm_memory::GuestMemoryError),
    #[error("the MP table ({0} bytes) does not fit in the EBDA")]
    TooLarge(usize),
}

fn checksum(bytes: &[u8]) -> u8 {
    bytes
        .iter()
        .fold(0u8, |sum, b| sum.wrapping_add(*b))
        .wrapping_neg()
}

/// Builds the floating pointer and configuration table for `num_cpus` CPUs, as bytes to place at
/// guest address `start`.
pub fn build(start: u64, num_cpus: u8) -> Result<Vec<u8>, MptableError> {
    if num_cpus == 0 || num_cpus > 254 {
        return Err(MptableError::TooManyCpus(num_cpus));
    }
    let ioapic_id = num_cpus + 1;
    let config_start = start + FLOATING_POINTER_LEN as u64;

    let mut entries: Vec<u8> = Vec::new();
    let mut entry_count: u16 = 0;
    for cpu in 0..num_cpus {
        let flags = CPU_ENABLED | if cpu == 0 { CPU_BOOTPROCESSOR } else { 0 };
        entries.extend_from_slice(&[ENTRY_PROCESSOR, cpu, APIC_VERSION, flags]);
        entries.extend_from_slice(&CPU_STEPPING.to_le_bytes());
        entries.extend_from_slice(&(CPU_FEATURE_APIC | CPU_FEATURE_FPU).to_le_bytes());
        entries.extend_from_slice(&[0u8; 8]);
        entry_count += 1;
    }
    entries.extend_from_slice(&[ENTRY_BUS, 0]);
    entries.extend_from_slice(b"ISA   ");
    entry_count += 1;
    entries.extend_from_slice(&[ENTRY_IOAPIC, ioapic_id, IOAPIC_VERSION, 1]);
    entries.extend_from_slice(&IOAPIC_ADDR.to_le_bytes());
    entry_count += 1;
    for pin in 0..IOAPIC_PINS {
        // type, irq type, flags (u16: conforms to bus), source bus, source irq, dest apic, dest pin
        entries.extend_from_slice(&[ENTRY_INTSRC, IRQ_TYPE_INT, 0, 0, 0, pin, ioapic_id, pin]);
        entry_count += 1;
    }
    entries.extend_from_slice(&[ENTRY_LINTSRC, IRQ_TYPE_EXTINT, 0, 0, 0, 0, 0, 0]);
    entries.extend_from_slice(&[ENTRY_LINTSRC, IRQ_TYPE_NMI, 0, 0, 0, 0, 0xff, 1]);
    entry_count += 2;

    let table_len = HEADER_LEN + entries.len();
    let mut header = Vec::with_capacity(HEADER_LEN);
    header.extend_from_slice(b"PCMP");
    header.extend_from_slice(&(table_len as u16).to_le_bytes());
    header.push(MPC_SPEC);
    header.push(0); // checksum, filled below
    header.extend_from_slice(b"COCOON  ");
    header.extend_from_slice(b"MICROVM     ");
    header.extend_from_slice(&0u32.to_le_bytes()); // OEM table pointer
    header.extend_from_slice(&0u16.to_le_bytes()); // OEM table size
    header.extend_from_slice(&entry_count.to_le_bytes());
    header.extend_from_slice(&APIC_ADDR.to_le_bytes());
    header.extend_from_slice(&[0u8; 4]); // extended table length, checksum, reserved
    debug_assert_eq!(header.len(), HEADER_LEN);
    let mut table = header;
    table.extend_from_slice(&entries);
    table[7] = checksum(&table);

    let mut floating = Vec::with_capacity(FLOATING_POINTER_LEN);
    floating.extend_from_slice(b"_MP_");
    floating.extend_from_slice(&(config_start as u32).to_le_bytes());
    floating.push(1); // length in 16-byte units
    floating.push(MPC_SPEC);
    floating.push(0); // checksum
    floating.extend_from_slice(&[0u8; 5]); // feature bytes: no default config, no IMCR
    floating[10] = checksum(&floating);

    let mut out = floating;
    out.extend_from_slice(&table);
    Ok(out)
}

/// Writes the MP tables for `num_cpus` CPUs at `start`, which must leave them inside `limit`.
pub fn setup(
    mem: &GuestMemoryMmap,
    start: u64,
    limit: u64,
    num_cpus: u8,
) -> Result<(), MptableError> {
    let bytes = build(start, num_cpus)?;
    if start + bytes.len() as u64 > limit {
        return Err(MptableError::TooLarge(bytes.len()));
    }
    mem.write_slice(&bytes, GuestAddress(start))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(bytes: &[u8]) -> u8 {
        bytes.iter().fold(0u8, |s, b| s.wrapping_add(*b))
    }

    #[test]
    fn checksums_and_pointers_are_valid() {
        let start = 0x9fc00;
        let bytes = build(start, 2).unwrap();
        assert_eq!(&bytes[0..4], b"_MP_");
        assert_eq!(sum(&bytes[0..16]), 0);
        let phys = u32::from_le_bytes(bytes[4..8].try_into().unwrap()) as u64;
        assert_eq!(phys, start + 16);
        let table = &bytes[16..];
        assert_eq!(&table[0..4], b"PCMP");
        let len = u16::from_le_bytes([table[4], table[5]]) as usize;
        assert_eq!(len, table.len());
        assert_eq!(sum(table), 0);
    }

    #[test]
    fn one_processor_entry_per_cpu_and_one_bsp() {
        for cpus in [1u8, 2, 8, 254] {
            let bytes = build(0x9fc00, cpus).unwrap();
            let table = &bytes[16..];
            let count = u16::from_le_bytes([table[34], table[35]]);
            assert_eq!(count as usize, cpus as usize + 2 + IOAPIC_PINS as usize + 2);
            let mut off = HEADER_LEN;
            let mut bsp = 0;
            for cpu in 0..cpus {
                assert_eq!(table[off], ENTRY_PROCESSOR);
                assert_eq!(table[off + 1], cpu);
                if table[off + 3] & CPU_BOOTPROCESSOR != 0 {
                    bsp += 1;
                }
                off += 20;
            }
            assert_eq!(bsp, 1);
            assert_eq!(table[off], ENTRY_BUS);
        }
    }

    #[test]
    fn rejects_zero_and_too_many_cpus() {
        assert!(matches!(build(0, 0), Err(MptableError::TooManyCpus(0))));
        assert!(matches!(build(0, 255), Err(MptableError::TooManyCpus(255))));
    }

    #[test]
    fn refuses_to_overflow_its_window() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        assert!(setup(&mem, 0x9fc00, 0xa0000, 2).is_ok());
        assert!(matches!(
            setup(&mem, 0x9fc00, 0xa0000, 254),
            Err(MptableError::TooLarge(_))
        ));
    }
}
