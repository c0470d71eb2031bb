//! The half of the vsock device its transport owns: features, configuration (the guest's CID),
//! activation and reset; and the builder of the event-loop half.

use std::path::Path;
use std::sync::{Arc, Mutex};

use cocoon_common::lock;
use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::backend::{Backend, ListenError};
use super::handler::VsockHandler;
use super::state::*;
use crate::devices::virtio::{
    ActivateError, Interrupt, VirtioDevice, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX,
};

/// The device half, owned by its transport.
pub struct Vsock {
    pub(super) shared: Arc<Mutex<Shared>>,
    config: [u8; 8],
}

impl Vsock {
    /// A device for a guest with context ID `guest_cid`, its host side listening on `uds_path`.
    pub fn new(
        guest_cid: u64,
        uds_path: &Path,
    ) -> Result<(Self, VsockHandlerBuilder), ListenError> {
        let backend = Backend::bind(guest_cid, uds_path)?;
        let shared = Arc::new(Mutex::new(Shared::default()));
        Ok((
            Self {
                shared: shared.clone(),
                config: guest_cid.to_le_bytes(),
            },
            VsockHandlerBuilder { shared, backend },
        ))
    }
}

/// Makes the handler once the transport has created the queue eventfds.
pub struct VsockHandlerBuilder {
    shared: Arc<Mutex<Shared>>,
    backend: Backend,
}

impl VsockHandlerBuilder {
    pub fn build(self, queue_events: Vec<EventFd>) -> VsockHandler {
        VsockHandler {
            shared: self.shared,
            backend: self.backend,
            queue_events,
            resets_seen: 0,
            scratch: vec![0; MAX_PACKET_DATA as usize],
        }
    }
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        VSOCK_DEVICE_TYPE
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE, QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        crate::devices::virtio::read_config_space(&self.config, offset, data);
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        _features: u64,
        queues: Vec<Queue>,
        _queue_events: Vec<EventFd>,
        interrupt: Arc<Interrupt>,
    ) -> Result<(), ActivateError> {
        let [rx, tx, _event]: [Queue; 3] = queues
            .try_into()
            .map_err(|_| ActivateError("virtio-vsock has exactly three queues".into()))?;
        let mut shared = lock(&self.shared);
        shared.active = Some(Active {
            mem,
            rx,
            tx,
            interrupt,
        });
        shared.broken = false;
        Ok(())
    }

    fn reset(&mut self) {
        let mut shared = lock(&self.shared);
        shared.active = None;
        shared.resets += 1;
    }
}
