//! The CPUID a vCPU sees: what KVM supports on this host, with the topology fields rewritten so the
//! guest sees `count` single-threaded cores in one package and this vCPU's own APIC ID.

use kvm_bindings::{kvm_cpuid_entry2, CpuId};

const LEAF_FEATURES: u32 = 0x1;
const LEAF_CACHE_PARAMS: u32 = 0x4;
const LEAF_EXT_TOPOLOGY: u32 = 0xb;
const LEAF_V2_EXT_TOPOLOGY: u32 = 0x1f;
const LEAF_AMD_ADDRESS_SIZES: u32 = 0x8000_0008;
const LEAF_AMD_EXT_APIC_ID: u32 = 0x8000_001e;

const ECX_HYPERVISOR: u32 = 1 << 31;
const EDX_HTT: u32 = 1 << 28;
const LEVEL_TYPE_SMT: u32 = 1;
const LEVEL_TYPE_CORE: u32 = 2;

/// Bits needed to number `count` cores: the APIC-ID shift of the core level.
fn core_id_bits(count: u32) -> u32 {
    if count <= 1 {
        0
    } else {
        32 - (count - 1).leading_zeros()
    }
}

fn patch_entry(entry: &mut kvm_cpuid_entry2, apic_id: u32, count: u32) {
    match entry.function {
        LEAF_FEATURES => {
            // EBX[31:24] initial APIC ID, EBX[23:16] logical processors per package.
            entry.ebx = (entry.ebx & 0x0000_ffff) | (apic_id << 24) | ((count & 0xff) << 16);
            entry.ecx |= ECX_HYPERVISOR;
            if count > 1 {
                entry.edx |= EDX_HTT;
            } else {
                entry.edx &= !EDX_HTT;
            }
        }
        LEAF_CACHE_PARAMS => {
            // EAX[31:26]: cores per package - 1; EAX[25:14]: threads sharing this cache - 1.
            entry.eax &= 0x0000_3fff;
            entry.eax |= (count - 1) << 26;
            let cache_level = (entry.eax >> 5) & 0x7;
            if cache_level >= 3 {
                entry.eax |= (count - 1) << 14;
            }
        }
        LEAF_EXT_TOPOLOGY | LEAF_V2_EXT_TOPOLOGY => {
            entry.edx = apic_id;
            match entry.index {
                0 => {
                    entry.eax = 0;
                    entry.ebx = 1;
                    entry.ecx = (LEVEL_TYPE_SMT << 8) | entry.index;
                }
                1 => {
                    entry.eax = core_id_bits(count);
                    entry.ebx = count;
                    entry.ecx = (LEVEL_TYPE_CORE << 8) | entry.index;
                }
                _ => {
                    entry.eax = 0;
                    entry.ebx = 0;
                    entry.ecx = entry.index;
                }
            }
        }
        LEAF_AMD_ADDRESS_SIZES => {
            // ECX[7:0]: cores in the package - 1; ECX[15:12]: APIC-ID bits for the core number.
            entry.ecx = (entry.ecx & !0xf0ff) | (core_id_bits(count) << 12) | (count - 1);
        }
        LEAF_AMD_EXT_APIC_ID => {
            entry.eax = apic_id;
            entry.ebx = apic_id & 0xff; // one thread per core, core id = APIC ID
            entry.ecx = 0; // node 0, one node per package
        }
        _ => {}
    }
}

/// Rewrites `cpuid` (a copy of KVM's supported CPUID) for vCPU `apic_id` of `count` vCPUs.
pub fn patch_topology(cpuid: &mut CpuId, apic_id: u8, count: u8) {
    let count = u32::from(count.max(1));
    for entry in cpuid.as_mut_slice() {
        patch_entry(entry, u32::from(apic_id), count);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            ebx: 0x0000_0800,
            ..Default::default()
        }
    }

    #[test]
    fn leaf_1_carries_apic_id_and_count() {
        let mut cpuid = CpuId::from_entries(&[entry(1, 0)]).unwrap();
        patch_topology(&mut cpuid, 3, 4);
        let e = cpuid.as_slice()[0];
        assert_eq!(e.ebx >> 24, 3);
        assert_eq!((e.ebx >> 16) & 0xff, 4);
        assert_eq!(e.ebx & 0xffff, 0x0800, "CLFLUSH size kept");
        assert_ne!(e.ecx & ECX_HYPERVISOR, 0);
        assert_ne!(e.edx & EDX_HTT, 0);
    }

    #[test]
    fn extended_topology_levels() {
        let mut cpuid =
            CpuId::from_entries(&[entry(0xb, 0), entry(0xb, 1), entry(0xb, 2)]).unwrap();
        patch_topology(&mut cpuid, 1, 2);
        let e = cpuid.as_slice();
        assert_eq!((e[0].eax, e[0].ebx, e[0].ecx >> 8, e[0].edx), (0, 1, 1, 1));
        assert_eq!((e[1].eax, e[1].ebx, e[1].ecx >> 8, e[1].edx), (1, 2, 2, 1));
        assert_eq!((e[2].ebx, e[2].ecx), (0, 2));
    }

    #[test]
    fn amd_core_count() {
        let mut cpuid = CpuId::from_entries(&[entry(0x8000_0008, 0)]).unwrap();
        patch_topology(&mut cpuid, 0, 6);
        let e = cpuid.as_slice()[0];
        assert_eq!(e.ecx & 0xff, 5);
        assert_eq!((e.ecx >> 12) & 0xf, 3);
    }

    #[test]
    fn core_bits() {
        assert_eq!(core_id_bits(1), 0);
        assert_eq!(core_id_bits(2), 1);
        assert_eq!(core_id_bits(3), 2);
        assert_eq!(core_id_bits(4), 2);
        assert_eq!(core_id_bits(5), 3);
    }
}
