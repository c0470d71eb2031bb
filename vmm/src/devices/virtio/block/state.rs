//! What the two halves of a virtio-blk device share (the image, the capacity, the active queue),
//! and virtio-blk's constants.

use std::fs::File;
use std::sync::Arc;

use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;

use crate::devices::virtio::{Interrupt, INTERRUPT_CONFIG_CHANGE};

pub const BLOCK_DEVICE_TYPE: u32 = 2;
pub const QUEUE_SIZE: u16 = 256;
pub(super) const SECTOR_SHIFT: u32 = 9;
pub(super) const SECTOR_SIZE: u64 = 1 << SECTOR_SHIFT;
pub(super) const VIRTIO_BLK_F_SEG_MAX: u64 = 1 << 2;
pub(super) const VIRTIO_BLK_F_RO: u64 = 1 << 5;
pub(super) const VIRTIO_BLK_F_FLUSH: u64 = 1 << 9;
pub(super) const SEG_MAX: u32 = QUEUE_SIZE as u32 - 2;
pub(super) const T_IN: u32 = 0;
pub(super) const T_OUT: u32 = 1;
pub(super) const T_FLUSH: u32 = 4;
pub(super) const T_GET_ID: u32 = 8;
pub(super) const S_OK: u8 = 0;
pub(super) const S_IOERR: u8 = 1;
pub(super) const S_UNSUPP: u8 = 2;
pub(super) const HEADER_LEN: u32 = 16;
pub(super) const ID_LEN: usize = 20;
/// Largest data transfer one request may carry (bounds the bounce buffer).
pub(super) const MAX_REQUEST_BYTES: u64 = 16 << 20;

pub(super) struct Active {
    pub(super) mem: GuestMemoryMmap,
    pub(super) queue: Queue,
    pub(super) interrupt: Arc<Interrupt>,
}

pub(super) struct State {
    /// The image; `None` for an empty slot.
    pub(super) file: Option<File>,
    pub(super) read_only: bool,
    pub(super) capacity_bytes: u64,
    /// Bumped whenever the configuration space changes (the image was swapped).
    pub(super) config_generation: u32,
    pub(super) id: [u8; ID_LEN],
    pub(super) active: Option<Active>,
    /// The guest broke the queue itself (the used ring cannot be written): stop serving it.
    pub(super) broken: bool,
}

impl State {
    /// A new capacity: the configuration space changed, and an active driver is told so.
    pub(super) fn set_capacity(&mut self, capacity_bytes: u64) {
        self.capacity_bytes = capacity_bytes;
        self.config_generation = self.config_generation.wrapping_add(1);
        if let Some(active) = &self.active {
            let _ = active.interrupt.signal(INTERRUPT_CONFIG_CHANGE);
        }
    }
}
