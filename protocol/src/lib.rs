//! The protocol between cocoon's host side (shim, launcher) and the in-guest agent, shared by both
//! so they cannot drift apart.
//!
//! The control channel is one vsock stream (agent port [`AGENT_PORT`]) carrying [`Message`]s in
//! frames (see [`frame`]): every request has an id, every response answers one id with a result or
//! an [`AgentError`] the host can show a user, and the agent may push [`Event`]s. Process stdio never
//! travels here: each stream gets a vsock connection of its own and flows as raw bytes.

pub mod defaults;
pub mod frame;
pub mod messages;
pub mod mounts;
pub mod port_token;
pub mod socket_path;
pub mod vm_config;
pub mod vmm_api;
pub mod volume_export;

pub use frame::{read_message, write_message, FrameError, MAX_FRAME_LEN, PROTOCOL_VERSION};
pub use messages::*;

/// The vsock port the agent listens on for the control channel.
pub const AGENT_PORT: u32 = 1024;
