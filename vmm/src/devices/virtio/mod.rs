//! Virtio devices over the virtio-mmio transport (virtio 1.x, "modern" only).

pub mod block;
pub mod mmio;
pub mod net;
pub mod vsock;

use std::sync::atomic::{AtomicU32, Ordering};

use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

/// Feature bit every cocoon device offers and every driver must accept: virtio 1.x.
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;
/// Feature bit: the driver and device tell each other when to notify (used/avail event indexes),
/// which spares most queue kicks and interrupts while either side is busy.
pub const VIRTIO_RING_F_EVENT_IDX: u64 = 1 << 29;
/// Interrupt status bits.
pub const INTERRUPT_USED_BUFFER: u32 = 0x1;
pub const INTERRUPT_CONFIG_CHANGE: u32 = 0x2;

/// The interrupt line of one device: its status register and the irqfd KVM injects from.
pub struct Interrupt {
    status: AtomicU32,
    irqfd: EventFd,
}

impl Interrupt {
    pub fn new(irqfd: EventFd) -> Self {
        Self {
            status: AtomicU32::new(0),
            irqfd,
        }
    }

    /// Sets `reason` in the interrupt status and raises the line.
    pub fn signal(&self, reason: u32) -> std::io::Result<()> {
        self.status.fetch_or(reason, Ordering::SeqCst);
        self.irqfd.write(1)
    }

    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    /// The driver acknowledged the bits in `mask`.
    pub fn acknowledge(&self, mask: u32) {
        self.status.fetch_and(!mask, Ordering::SeqCst);
    }

    pub fn irqfd(&self) -> &EventFd {
        &self.irqfd
    }
}

/// Reads `data.len()` bytes of a device configuration space at `offset`; bytes past its end read
/// as zero (so odd or out-of-range guest reads are harmless).
pub fn read_config_space(config: &[u8], offset: u64, data: &mut [u8]) {
    for (i, b) in data.iter_mut().enumerate() {
        *b = usize::try_from(offset)
            .ok()
            .and_then(|o| o.checked_add(i))
            .and_then(|o| config.get(o))
            .copied()
            .unwrap_or(0);
    }
}

/// A device failed to start with the queues the driver gave it.
#[derive(Debug, thiserror::Error)]
#[error("activating the virtio device: {0}")]
pub struct ActivateError(pub String);

/// A virtio device behind a transport. The transport owns feature negotiation and queue set-up;
/// the device owns its configuration space and what happens on its queues.
pub trait VirtioDevice: Send {
    /// Virtio device ID (2 block, 1 net, 19 vsock, ...).
    fn device_type(&self) -> u32;
    /// Largest size of each of the device's queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// Features offered, VIRTIO_F_VERSION_1 included.
    fn features(&self) -> u64;
    /// Reads the device configuration space; bytes past its end read as zero.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes the device configuration space (most devices ignore writes).
    fn write_config(&mut self, offset: u64, data: &[u8]);
    /// Changes whenever the device changes its configuration space by itself, so a driver reading
    /// it in several accesses can tell it read one version.
    fn config_generation(&self) -> u32 {
        0
    }
    /// Starts the device once the driver set DRIVER_OK. `queue_events` are signalled when the driver
    /// notifies the queue of the same index.
    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        features: u64,
        queues: Vec<Queue>,
        queue_events: Vec<EventFd>,
        interrupt: std::sync::Arc<Interrupt>,
    ) -> Result<(), ActivateError>;
    /// Stops the device after a driver reset; it may be activated again.
    fn reset(&mut self);
}
