//! virtio-net: the guest's Ethernet interface, its frames carried by a host backend — a tap
//! device (with the virtio-net header, so checksum and segmentation offloads pass through and
//! TCP is not cut into MTU-sized frames) or a stream socket in qemu's framing (passt).
//!
//! The guest is hostile: every descriptor chain is checked (direction, size, guest memory); a
//! malformed chain loses its own frame only. Frames the guest sends from a MAC or IPv4 address
//! other than its own, or to the link-local metadata range, are dropped here — frames redirected
//! from a tap bypass the host's netfilter, so the VMM is where they are filtered. Buffering both
//! ways is one frame; a slow or dead backend stalls only its own device.
//!
//! The files: [`device`] is the half the transport owns (features, configuration space,
//! activation); [`handler`] the event-loop half that moves frames; [`frame`] reads a TX chain
//! and fills RX chains; [`filter`] is the anti-spoofing check; [`rate_limit`] the token
//! buckets; [`backend`] the backend trait, with [`tap`] and [`stream`] behind it; [`state`] what
//! the halves share.

mod backend;
mod device;
mod filter;
mod frame;
mod handler;
mod rate_limit;
mod state;
mod stream;
mod tap;
#[cfg(test)]
mod tests;

pub use backend::BackendError;
pub use device::{Net, NetError, NetHandlerBuilder};
pub use handler::NetHandler;
pub use state::{NET_DEVICE_TYPE, QUEUE_SIZE};
