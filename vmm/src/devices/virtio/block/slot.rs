//! A disk slot: an empty disk whose image is attached and detached while the guest runs.

use std::path::Path;
use std::sync::{Arc, Mutex};

use cocoon_common::lock;

use super::image::{open_image, DiskError};
use super::state::State;

/// A disk slot's image, swapped while the guest runs. See [`Block::slot`].
#[derive(Clone)]
pub struct BlockSlot(pub(super) Arc<Mutex<State>>);

/// Why a slot's image could not be swapped.
#[derive(Debug, thiserror::Error)]
pub enum SlotError {
    #[error("the slot already holds a disk image; detach it first")]
    Busy,
    #[error(transparent)]
    Disk(#[from] DiskError),
}

impl BlockSlot {
    /// Puts the image at `path` into the empty slot and tells the guest its new capacity. A
    /// read-only image is opened read-only and every write to it fails (the slot was offered to
    /// the guest as writable, so that is the device's to enforce).
    pub fn attach(&self, path: &Path, read_only: bool) -> Result<u64, SlotError> {
        if lock(&self.0).file.is_some() {
            return Err(SlotError::Busy);
        }
        // Opened before the device is locked: its queue and config reads do not wait on the host.
        let (file, capacity_bytes) = open_image(path, read_only)?;
        let mut state = lock(&self.0);
        if state.file.is_some() {
            return Err(SlotError::Busy);
        }
        state.file = Some(file);
        state.read_only = read_only;
        state.set_capacity(capacity_bytes);
        Ok(capacity_bytes)
    }

    /// Empties the slot (requests still in flight fail) and tells the guest; true if it held an
    /// image.
    pub fn detach(&self) -> bool {
        let mut state = lock(&self.0);
        let held = state.file.take().is_some();
        state.read_only = false;
        state.set_capacity(0);
        held
    }
}
