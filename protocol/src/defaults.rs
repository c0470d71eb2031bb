//! Defaults both sides apply where an OCI spec is silent, so host and guest agree on them.

use oci_spec::runtime::{Capabilities, Capability, LinuxCapabilities};

/// Docker's default capability set.
pub const DEFAULT_CAPABILITIES: [Capability; 14] = [
    Capability::Chown,
    Capability::DacOverride,
    Capability::Fsetid,
    Capability::Fowner,
    Capability::Mknod,
    Capability::NetRaw,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setfcap,
    Capability::Setpcap,
    Capability::NetBindService,
    Capability::SysChroot,
    Capability::Kill,
    Capability::AuditWrite,
];

/// Docker's defaults as a process's capabilities: bounding, effective and permitted; nothing
/// inheritable or ambient.
pub fn default_capabilities() -> LinuxCapabilities {
    let set: Capabilities = DEFAULT_CAPABILITIES.into_iter().collect();
    let mut caps = LinuxCapabilities::default();
    caps.set_bounding(Some(set.clone()))
        .set_effective(Some(set.clone()))
        .set_permitted(Some(set))
        .set_inheritable(Some(Default::default()))
        .set_ambient(Some(Default::default()));
    caps
}
