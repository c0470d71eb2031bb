//! What the two halves of the vsock device share (the active queues, driver resets), and its
//! constants.

use std::sync::Arc;

use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;

use crate::devices::virtio::Interrupt;

pub const VSOCK_DEVICE_TYPE: u32 = 19;
/// Every queue (RX, TX, event) holds this many descriptors at most.
pub const QUEUE_SIZE: u16 = 256;
/// Largest payload of one packet (the Linux driver sends at most 64 KiB).
pub(super) const MAX_PACKET_DATA: u32 = 64 << 10;

pub(super) struct Active {
    pub(super) mem: GuestMemoryMmap,
    pub(super) rx: Queue,
    pub(super) tx: Queue,
    pub(super) interrupt: Arc<Interrupt>,
}

#[derive(Default)]
pub(super) struct Shared {
    pub(super) active: Option<Active>,
    /// Bumped on every driver reset, so the event loop drops the connections of the old driver.
    pub(super) resets: u64,
    /// The guest broke a queue (its used ring cannot be written): the device stops serving.
    pub(super) broken: bool,
}
