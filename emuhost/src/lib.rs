//! The emulated KVM host, for machines whose CPU has no vmx/svm (or whose /dev/kvm cannot boot
//! Linux, like a PVM-backed nested KVM): qemu TCG with `-cpu max`, which offers AMD SVM to its
//! guest, boots Debian's cloud kernel with its KVM modules from an initramfs carrying cocoon,
//! and runs a script against the real /dev/kvm inside. Used by the end-to-end tests and by
//! `cocoon run --emulated`.
//!
//! [`tools`] finds qemu, the kernel and busybox here; [`host`] builds and boots the host;
//! [`cocoon`] puts cocoon's VMM and guest images in it; [`process`] runs a child with a deadline.

pub mod cocoon;
pub mod host;
pub mod process;
pub mod tools;

pub use cocoon::{cocoon_host, run_command, CocoonFiles, SuiteFile};
pub use host::{EmulatedHost, HostFile, HostNeeds};
pub use tools::{host_tools, HostTools};
