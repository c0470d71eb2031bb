//! Thin wrappers over KVM's objects, in the order a VM is made of them: the KVM handle and what
//! this host's KVM can do ([`kvm`]), the VM with its in-kernel irqchip and PIT ([`vm`]), guest
//! memory registered with it ([`memory`]), and the vCPUs that run it ([`vcpu`]). The builder puts
//! them together; nothing here knows about configuration files, and of devices only the buses a
//! vCPU's exits go to.

pub mod kvm;
pub mod memory;
pub mod vcpu;
pub mod vm;
