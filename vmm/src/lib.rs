//! cocoon-vmm: a minimal KVM virtual machine monitor built on the rust-vmm crates. It boots a Linux
//! guest (bzImage or ELF vmlinux) directly in 64-bit mode, without firmware, and gives it an 8250
//! serial console. The guest is treated as hostile: nothing it does may panic the VMM.

pub mod api;
pub mod arch;
pub mod config;
pub mod devices;
pub mod event_loop;
pub mod loader;
pub mod timing;
pub mod vcpu;
pub mod vm;

pub use config::{ConsoleConfig, VmConfig};
pub use vm::{run, RunOptions, VmOutcome};
