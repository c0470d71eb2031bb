//! One frame across the guest boundary: read from a TX descriptor chain (header, then frame) and
//! checked against the offloads the driver accepted; written over one RX chain, or over as many
//! as it needs with `VIRTIO_NET_F_MRG_RXBUF` (`num_buffers` says how many). Every descriptor is
//! checked for its direction, the total for its size, every access for guest memory.

use std::fmt;

use virtio_bindings::virtio_net;
use virtio_queue::desc::split::Descriptor;
use virtio_queue::{QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::state::*;

/// Why a chain lost its frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Malformed {
    /// A TX chain with a buffer for the device to write, or an RX chain with one to read.
    WrongDirection,
    /// More than the largest frame.
    TooLong,
    /// Not even a virtio-net header.
    TooShort,
    /// A buffer outside guest memory.
    Memory,
    /// A header asking for an offload the driver did not accept.
    Offload,
    /// An RX frame larger than the one buffer a driver without mergeable buffers gave.
    NoRoom,
}

impl fmt::Display for Malformed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::WrongDirection => "a buffer of the wrong direction",
            Self::TooLong => "longer than a frame can be",
            Self::TooShort => "shorter than the virtio-net header",
            Self::Memory => "a buffer outside guest memory",
            Self::Offload => "an offload the driver did not accept",
            Self::NoRoom => "a frame larger than the receive buffer",
        })
    }
}

/// Copies a TX chain into `buf` (room for [`MAX_BUFFER_LEN`]); returns its length.
pub fn read_tx_chain(
    mem: &GuestMemoryMmap,
    descriptors: impl Iterator<Item = Descriptor>,
    buf: &mut [u8],
) -> Result<usize, Malformed> {
    let mut len = 0usize;
    for descriptor in descriptors {
        if descriptor.is_write_only() {
            return Err(Malformed::WrongDirection);
        }
        let end = len
            .checked_add(descriptor.len() as usize)
            .filter(|end| *end <= buf.len())
            .ok_or(Malformed::TooLong)?;
        mem.read_slice(&mut buf[len..end], descriptor.addr())
            .map_err(|_| Malformed::Memory)?;
        len = end;
    }
    if len < NET_HDR_LEN {
        return Err(Malformed::TooShort);
    }
    Ok(len)
}

/// Checks a TX header against the accepted `features`: a checksum to fill in needs
/// `VIRTIO_NET_F_CSUM`, a segmentation `HOST_TSO4`/`HOST_TSO6`; nothing else is offered.
pub fn check_tx_header(header: &[u8], features: u64) -> Result<(), Malformed> {
    let flags = u32::from(header[0]);
    let gso_type = u32::from(header[1]);
    if flags & !virtio_net::VIRTIO_NET_HDR_F_NEEDS_CSUM != 0 {
        return Err(Malformed::Offload);
    }
    if flags & virtio_net::VIRTIO_NET_HDR_F_NEEDS_CSUM != 0 && features & F_CSUM == 0 {
        return Err(Malformed::Offload);
    }
    let needed = match gso_type {
        virtio_net::VIRTIO_NET_HDR_GSO_NONE => 0,
        virtio_net::VIRTIO_NET_HDR_GSO_TCPV4 => F_HOST_TSO4,
        virtio_net::VIRTIO_NET_HDR_GSO_TCPV6 => F_HOST_TSO6,
        _ => return Err(Malformed::Offload),
    };
    if features & needed != needed {
        return Err(Malformed::Offload);
    }
    Ok(())
}

/// What became of a frame offered to the guest.
#[derive(Debug, PartialEq, Eq)]
pub enum Delivery {
    Delivered,
    /// Not enough receive buffers yet: nothing was taken, try again when the driver adds some.
    NoBuffers,
    /// The frame is lost; the buffers it was to fill went back to the guest.
    Dropped(Malformed),
    /// The used ring cannot be written: the queue is unusable.
    Broken,
}

/// Writes `frame` (a virtio-net header, then the Ethernet frame) into the RX queue.
pub fn deliver(active: &mut Active, frame: &mut [u8]) -> Delivery {
    let mergeable = active.has(F_MRG_RXBUF);
    let mut chains: Vec<(u16, Vec<Descriptor>)> = Vec::new();
    let mut room = 0usize;
    let mut malformed = None;
    while room < frame.len() {
        let Some(chain) = active.rx.pop_descriptor_chain(&active.mem) else {
            for _ in &chains {
                active.rx.go_to_previous_position();
            }
            return Delivery::NoBuffers;
        };
        let head = chain.head_index();
        let descriptors: Vec<Descriptor> = chain.collect();
        if descriptors.iter().any(|d| !d.is_write_only()) {
            malformed = Some(Malformed::WrongDirection);
        }
        let chain_room: usize = descriptors.iter().map(|d| d.len() as usize).sum();
        if chains.is_empty() && descriptors.first().map_or(0, |d| d.len() as usize) < NET_HDR_LEN {
            // The header goes in the first buffer, whole.
            malformed = Some(Malformed::TooShort);
        }
        room = room.saturating_add(chain_room);
        chains.push((head, descriptors));
        if malformed.is_some() || !mergeable {
            break;
        }
    }
    if malformed.is_none() && room < frame.len() {
        // Only without mergeable buffers: the one buffer stays the guest's for a smaller frame.
        active.rx.go_to_previous_position();
        return Delivery::Dropped(Malformed::NoRoom);
    }
    let num_buffers = chains.len() as u16;
    frame[NUM_BUFFERS_OFFSET..NUM_BUFFERS_OFFSET + 2].copy_from_slice(&num_buffers.to_le_bytes());
    let mut offset = 0;
    for (head, descriptors) in &chains {
        let mut written = 0u32;
        if malformed.is_none() {
            for descriptor in descriptors {
                let n = (descriptor.len() as usize).min(frame.len() - offset);
                if n == 0 {
                    break;
                }
                if write_at(&active.mem, &frame[offset..offset + n], descriptor.addr()).is_err() {
                    malformed = Some(Malformed::Memory);
                    break;
                }
                offset += n;
                written += n as u32;
            }
        }
        if active.rx.add_used(&active.mem, *head, written).is_err() {
            return Delivery::Broken;
        }
    }
    match malformed {
        Some(why) => Delivery::Dropped(why),
        None => Delivery::Delivered,
    }
}

fn write_at(mem: &GuestMemoryMmap, bytes: &[u8], at: GuestAddress) -> Result<(), ()> {
    mem.write_slice(bytes, at).map_err(|_| ())
}
