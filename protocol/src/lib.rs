//! What cocoon's programs say to each other, in one crate so no side can drift from another: the
//! host side (shim, launcher) and the in-guest agent ([`messages`], [`frame`]), and the host side
//! and the VMM ([`vm_config`], the VM's configuration file; [`vmm_api`], its API socket).
//!
//! The control channel is one vsock stream (agent port [`AGENT_PORT`]) carrying [`Message`]s in
//! frames (see [`frame`]): every request has an id, every response answers one id with a result or
//! an [`AgentError`] the host can show a user, and the agent may push [`Event`]s. Process stdio never
//! travels here: each stream gets a vsock connection of its own and flows as raw bytes.

pub mod defaults;
pub mod frame;
pub mod guest_network;
pub mod messages;
pub mod mounts;
pub mod net_config;
pub mod port_token;
pub mod socket_path;
pub mod vm_config;
pub mod vmm_api;
pub mod volume_export;

pub use frame::{read_message, write_message, FrameError, MAX_FRAME_LEN, PROTOCOL_VERSION};
pub use messages::*;

/// The vsock port the agent listens on for the control channel.
pub const AGENT_PORT: u32 = 1024;
