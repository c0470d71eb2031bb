//! virtio-vsock (device 19): stream sockets between the guest and host programs, through the
//! hybrid-vsock backend (see [`backend`]). Packets are parsed with the `virtio-vsock` crate; a
//! chain it rejects is returned to the guest unused and the device carries on.
//!
//! The files: [`device`] is the half the transport owns (features, configuration, activation);
//! [`handler`] the event-loop half that moves packets between the queues and the backend;
//! [`backend`] the hybrid-vsock host side, [`connection`] one stream, [`packet`] the headers;
//! [`state`] is what the halves share.

pub mod backend;
pub mod connection;
mod device;
mod handler;
pub mod packet;
mod state;
#[cfg(test)]
mod tests;

pub use backend::ListenError;
pub use device::{Vsock, VsockHandlerBuilder};
pub use handler::VsockHandler;
pub use state::{QUEUE_SIZE, VSOCK_DEVICE_TYPE};
