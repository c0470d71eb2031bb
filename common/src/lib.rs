//! The helpers more than one cocoon program needs, written once: each would otherwise be copied
//! into the VMM, the agent, the sandbox library and the shim (they were, before this crate).

pub mod cpu;
pub mod digest;
pub mod inherit;
pub mod rotating_file;
pub mod sync;

pub use cpu::has_hardware_virtualization;
pub use digest::{sha256_hex, short_hash};
pub use rotating_file::RotatingFile;
pub use sync::{lock, ExitCell};
