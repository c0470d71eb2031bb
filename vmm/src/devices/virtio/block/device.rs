//! The half of a virtio-blk device its transport owns: features, configuration space (capacity,
//! segment limit), activation and reset.

use std::path::Path;
use std::sync::{Arc, Mutex};

use cocoon_common::lock;
use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::handler::BlockHandle;
use super::image::{open_image, DiskError};
use super::slot::BlockSlot;
use super::state::*;
use crate::devices::virtio::{
    ActivateError, Interrupt, VirtioDevice, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX,
};

/// The device half, owned by its transport.
pub struct Block {
    pub(super) state: Arc<Mutex<State>>,
    features: u64,
}

impl Block {
    /// Opens `path` as a disk. Its size is rounded down to whole sectors.
    pub fn open(path: &Path, read_only: bool, id: &str) -> Result<Self, DiskError> {
        let (file, capacity_bytes) = open_image(path, read_only)?;
        let block = Self::new(read_only, id);
        {
            let mut state = lock(&block.state);
            state.file = Some(file);
            state.capacity_bytes = capacity_bytes;
        }
        Ok(block)
    }

    /// An empty, writable slot: capacity 0 until an image is attached through its [`BlockSlot`].
    pub fn empty_slot(id: &str) -> Self {
        Self::new(false, id)
    }

    fn new(read_only: bool, id: &str) -> Self {
        let mut features = VIRTIO_F_VERSION_1
            | VIRTIO_RING_F_EVENT_IDX
            | VIRTIO_BLK_F_FLUSH
            | VIRTIO_BLK_F_SEG_MAX;
        if read_only {
            features |= VIRTIO_BLK_F_RO;
        }
        let mut id_bytes = [0u8; ID_LEN];
        for (d, s) in id_bytes.iter_mut().zip(id.bytes()) {
            *d = s;
        }
        Self {
            state: Arc::new(Mutex::new(State {
                file: None,
                read_only,
                capacity_bytes: 0,
                config_generation: 0,
                id: id_bytes,
                active: None,
                broken: false,
            })),
            features,
        }
    }

    /// The handle through which a slot's image is attached and detached while the VM runs.
    pub fn slot(&self) -> BlockSlot {
        BlockSlot(self.state.clone())
    }

    /// A handle on the device's state, from which the event-loop half is made once the transport
    /// (which owns the device) has created the queue's eventfd.
    pub fn handle(&self) -> BlockHandle {
        BlockHandle(self.state.clone())
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        BLOCK_DEVICE_TYPE
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        self.features
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let capacity_sectors = lock(&self.state).capacity_bytes >> SECTOR_SHIFT;
        let mut config = [0u8; 16];
        config[0..8].copy_from_slice(&capacity_sectors.to_le_bytes());
        config[12..16].copy_from_slice(&SEG_MAX.to_le_bytes());
        crate::devices::virtio::read_config_space(&config, offset, data);
    }

    fn config_generation(&self) -> u32 {
        lock(&self.state).config_generation
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        _features: u64,
        mut queues: Vec<Queue>,
        _queue_events: Vec<EventFd>,
        interrupt: Arc<Interrupt>,
    ) -> Result<(), ActivateError> {
        let queue = queues
            .pop()
            .filter(|_| queues.is_empty())
            .ok_or_else(|| ActivateError("virtio-blk has exactly one queue".into()))?;
        let mut state = lock(&self.state);
        state.active = Some(Active {
            mem,
            queue,
            interrupt,
        });
        state.broken = false;
        Ok(())
    }

    fn reset(&mut self) {
        lock(&self.state).active = None;
    }
}
