//! cocoon's end-to-end harness. Scenarios are small shell scripts that drive the real VMM against
//! the real guest kernel under real KVM, and print what they saw. They run
//! - directly, where this CPU has hardware virtualization (vmx/svm) and /dev/kvm opens; or
//! - inside an *emulated KVM host*: qemu TCG with `-cpu max` (which exposes AMD SVM) boots Debian's
//!   cloud kernel, loads its kvm modules, and runs the scenarios against the /dev/kvm inside.
//!
//! One run (one emulated-host boot) serves a whole list of scenarios; tests then assert on each
//! scenario's output and exit status.

pub mod artifacts;
pub mod container_bench;
pub mod containerd;
pub mod cri_stream;
pub mod images;
pub mod network_bench;
pub mod pty;
pub mod stuck_vms;
pub mod suite;

/// The emulated KVM host and the deadline runner live in `cocoon-emuhost`, which the launcher
/// uses too; these names keep the scenarios' paths.
pub use cocoon_emuhost::{host as emuhost, process};

pub use suite::{
    run_suite, run_suite_with, HostNeeds, Scenario, ScenarioResult, SuiteError, SuiteRun,
};
