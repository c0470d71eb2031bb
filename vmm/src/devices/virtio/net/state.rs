//! What the two halves of a virtio-net device share (the active queues, the negotiated
//! features, the link status), and virtio-net's constants.

use std::sync::Arc;

use virtio_bindings::virtio_net;
use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;

use crate::devices::virtio::{Interrupt, INTERRUPT_CONFIG_CHANGE};

pub const NET_DEVICE_TYPE: u32 = virtio_bindings::virtio_ids::VIRTIO_ID_NET;
/// Each queue (RX, TX) holds this many descriptors at most.
pub const QUEUE_SIZE: u16 = 256;

/// `struct virtio_net_hdr_v1`: flags, gso_type, hdr_len, gso_size, csum_start, csum_offset,
/// num_buffers. Virtio 1.x always has `num_buffers`, so the header is 12 bytes either way.
pub(super) const NET_HDR_LEN: usize = 12;
/// Where `num_buffers` sits in the header.
pub(super) const NUM_BUFFERS_OFFSET: usize = 10;
/// Largest Ethernet frame: a 64 KiB GSO packet plus the Ethernet and VLAN headers.
pub(super) const MAX_FRAME_LEN: usize = 65_535 + 14 + 4;
/// Largest chain a frame is read from or written to: header plus frame.
pub(super) const MAX_BUFFER_LEN: usize = NET_HDR_LEN + MAX_FRAME_LEN;

pub(super) const fn bit(feature: u32) -> u64 {
    1 << feature
}
pub(super) const F_CSUM: u64 = bit(virtio_net::VIRTIO_NET_F_CSUM);
pub(super) const F_GUEST_CSUM: u64 = bit(virtio_net::VIRTIO_NET_F_GUEST_CSUM);
pub(super) const F_MTU: u64 = bit(virtio_net::VIRTIO_NET_F_MTU);
pub(super) const F_MAC: u64 = bit(virtio_net::VIRTIO_NET_F_MAC);
pub(super) const F_GUEST_TSO4: u64 = bit(virtio_net::VIRTIO_NET_F_GUEST_TSO4);
pub(super) const F_GUEST_TSO6: u64 = bit(virtio_net::VIRTIO_NET_F_GUEST_TSO6);
pub(super) const F_HOST_TSO4: u64 = bit(virtio_net::VIRTIO_NET_F_HOST_TSO4);
pub(super) const F_HOST_TSO6: u64 = bit(virtio_net::VIRTIO_NET_F_HOST_TSO6);
pub(super) const F_MRG_RXBUF: u64 = bit(virtio_net::VIRTIO_NET_F_MRG_RXBUF);
pub(super) const F_STATUS: u64 = bit(virtio_net::VIRTIO_NET_F_STATUS);
/// The offloads a backend that carries the virtio-net header (a tap) passes through.
pub(super) const OFFLOADS: u64 =
    F_CSUM | F_GUEST_CSUM | F_GUEST_TSO4 | F_GUEST_TSO6 | F_HOST_TSO4 | F_HOST_TSO6;
pub(super) const LINK_UP: u16 = virtio_net::VIRTIO_NET_S_LINK_UP as u16;

pub(super) struct Active {
    pub(super) mem: GuestMemoryMmap,
    pub(super) rx: Queue,
    pub(super) tx: Queue,
    pub(super) interrupt: Arc<Interrupt>,
    /// What the driver accepted.
    pub(super) features: u64,
}

impl Active {
    pub(super) fn has(&self, feature: u64) -> bool {
        self.features & feature == feature
    }
}

#[derive(Default)]
pub(super) struct Shared {
    pub(super) active: Option<Active>,
    /// `VIRTIO_NET_S_LINK_UP` while the backend is there.
    pub(super) status: u16,
    pub(super) config_generation: u32,
    /// Bumped on every driver reset, so the event loop drops a half-moved frame of the old one.
    pub(super) resets: u64,
    /// The guest broke a queue (its used ring cannot be written): the device stops serving.
    pub(super) broken: bool,
}

impl Shared {
    /// The backend went away (or came back): the link status changes, and an active driver is
    /// told so.
    pub(super) fn set_link(&mut self, up: bool) {
        let status = if up { LINK_UP } else { 0 };
        if status == self.status {
            return;
        }
        self.status = status;
        self.config_generation = self.config_generation.wrapping_add(1);
        if let Some(active) = &self.active {
            let _ = active.interrupt.signal(INTERRUPT_CONFIG_CHANGE);
        }
    }
}
