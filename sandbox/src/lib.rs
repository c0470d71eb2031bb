//! The host side of a cocoon sandbox, shared by the containerd shim and the `cocoon run` launcher:
//! what the host must have ([`host`]: guest files, KVM), the VMM process ([`vm`]), the agent's
//! control channel over hybrid vsock ([`client`]), the Unix sockets the agent connects process
//! stdio to ([`host_port`]), a pod's network namespace joined to a tap ([`pod_network`]), OCI
//! specs with the defaults a container gets ([`spec`]), and writable volumes coming back
//! ([`volume_import`]).

pub mod client;
pub mod host;
pub mod host_port;
pub mod pod_network;
pub mod spec;
pub mod vm;
pub mod volume_import;

pub use client::{AgentClient, ClientError};
pub use cocoon_common::has_hardware_virtualization;
pub use host::{check_kvm, GuestFiles, HostError};
pub use host_port::{HostPort, ProcessPorts, ProcessStreams};
pub use vm::{Vm, VmNet, VmOptions};
