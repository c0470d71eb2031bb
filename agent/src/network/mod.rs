//! The guest's network, as the host sets it up through the agent: interfaces (found by the MAC
//! the host gave each virtio-net device), routes and neighbours, through rtnetlink. Every
//! container of the sandbox shares this network: the VM's network namespace is the pod's.

mod announce;
mod interface;
mod neighbours;
mod routes;

pub use interface::update_interface;
pub use neighbours::add_neighbours;
pub use routes::update_routes;
