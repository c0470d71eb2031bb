//! cocoon-vmm: a minimal KVM virtual machine monitor built on the rust-vmm crates. It boots a Linux
//! guest (bzImage or ELF vmlinux) directly in 64-bit mode, without firmware, and gives it an 8250
//! serial console, virtio-mmio disks and a hybrid vsock. The guest is treated as hostile: nothing
//! it does may panic the VMM.
//!
//! Where things are: [`builder`] builds a [`Vmm`] from a [`VmConfig`] (checked by [`config`]);
//! [`vmm`] runs it; [`device_manager`] attaches devices; [`vstate`] wraps KVM's objects;
//! [`devices`] holds one folder per device (`devices/virtio/<name>/` for virtio ones); [`arch`]
//! the x86 boot tables; [`api`] the API socket.

pub mod api;
pub mod arch;
pub mod builder;
pub mod config;
pub mod device_manager;
pub mod devices;
pub mod event_loop;
pub mod loader;
pub mod timing;
pub mod vmm;
pub mod vstate;

pub use builder::{build, BuildError, RunOptions};
pub use config::{ConsoleConfig, VmConfig};
pub use vmm::{RunError, VmOutcome, Vmm};

/// A VM could not be built, or could not be started once built.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Build(#[from] BuildError),
    #[error(transparent)]
    Run(#[from] RunError),
}
