//! cocoon-net: the network plumbing more than one cocoon program needs, in one place: a blocking
//! rtnetlink socket ([`netlink`]; the agent sets up the guest's interfaces with it, the host side a
//! pod's tap and its redirects) and tap devices ([`tap`]; the VMM's backend, the pod's tap).

pub mod netlink;
pub mod tap;

// Re-exported: users build messages with the same types.
pub use netlink::RouteSocket;
pub use netlink_packet_core as core;
pub use netlink_packet_route as route;
