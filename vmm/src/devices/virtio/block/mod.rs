//! virtio-blk: a raw image file as a disk, read-only or read-write, with flush. Requests are checked
//! descriptor by descriptor (direction, size, range): a malformed request fails alone with an error
//! status, and a chain that cannot even take a status byte is returned with nothing written.
//!
//! A disk can also be an empty *slot* (capacity 0) whose image is attached and detached while the
//! guest runs: virtio-mmio has no hot-plug, so pods boot with slots and fill them per container.
//! A change of image updates the capacity and raises a configuration-change interrupt, on which
//! Linux's virtio_blk resizes the disk.
//!
//! The files: [`device`] is the half the transport owns (features, configuration space,
//! activation); [`handler`] the event-loop half that serves the queue; [`request`] parses and
//! executes one request; [`slot`] swaps a slot's image; [`image`] opens image files; [`state`]
//! is what the halves share.

mod device;
mod handler;
mod image;
mod request;
mod slot;
mod state;
#[cfg(test)]
mod tests;

pub use device::Block;
pub use handler::{BlockHandle, BlockQueueHandler};
pub use image::DiskError;
pub use slot::{BlockSlot, SlotError};
pub use state::{BLOCK_DEVICE_TYPE, QUEUE_SIZE};
