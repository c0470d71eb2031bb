//! x86-64 boot: memory layout, zero page and e820 map, MP table, CPUID, and the register state that
//! enters the kernel's 64-bit entry point directly (no firmware).

pub mod bootparams;
pub mod cpuid;
pub mod gdt;
pub mod layout;
pub mod mptable;
pub mod regs;
