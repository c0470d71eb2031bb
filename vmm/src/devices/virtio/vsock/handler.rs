//! The event-loop half of the vsock device: serves the TX queue (guest packets to the backend),
//! fills the RX queue (backend packets to the guest), and watches the backend's sockets.

use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};

use cocoon_common::lock;
use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use virtio_queue::{QueueOwnedT, QueueT};
use virtio_vsock::packet::{VsockPacket, PKT_HEADER_SIZE};
use vmm_sys_util::eventfd::EventFd;

use super::backend::{Backend, Registration};
use super::packet::Header;
use super::state::*;
use crate::devices::virtio::INTERRUPT_USED_BUFFER;

/// The event-loop half: queue notifications, the listening socket and every host socket.
pub struct VsockHandler {
    pub(super) shared: Arc<Mutex<Shared>>,
    pub(super) backend: Backend,
    pub(super) queue_events: Vec<EventFd>,
    pub(super) resets_seen: u64,
    pub(super) scratch: Vec<u8>,
}

impl VsockHandler {
    /// Serves every packet the guest queued for sending.
    fn process_tx(&mut self, shared: &mut Shared) {
        let Some(active) = shared.active.as_mut().filter(|_| !shared.broken) else {
            return;
        };
        let mut used = false;
        loop {
            // No kicks while draining; re-enabling tells whether more arrived meanwhile.
            let _ = active.tx.disable_notification(&active.mem);
            while let Some(mut chain) = active.tx.pop_descriptor_chain(&active.mem) {
                let head = chain.head_index();
                match VsockPacket::from_tx_virtq_chain(&active.mem, &mut chain, MAX_PACKET_DATA) {
                    Ok(packet) => {
                        let header = Header::from_packet(&packet);
                        let len = match packet.data_slice() {
                            Some(slice) => slice.len().min(header.len as usize),
                            None => 0,
                        };
                        if let Some(slice) = packet.data_slice() {
                            slice.copy_to(&mut self.scratch[..len]);
                        }
                        self.backend
                            .handle_guest_packet(&header, &self.scratch[..len]);
                    }
                    Err(e) => tracing::debug!("virtio-vsock: dropping a malformed TX packet: {e}"),
                }
                if active.tx.add_used(&active.mem, head, 0).is_err() {
                    tracing::warn!(
                        "virtio-vsock: the guest's TX used ring is not writable; device stopped"
                    );
                    shared.broken = true;
                    return;
                }
                used = true;
            }
            if !active.tx.enable_notification(&active.mem).unwrap_or(false) {
                break;
            }
        }
        if used && active.tx.needs_notification(&active.mem).unwrap_or(true) {
            let _ = active.interrupt.signal(INTERRUPT_USED_BUFFER);
        }
    }

    /// Fills the guest's receive buffers with what the host side owes it.
    fn process_rx(&mut self, shared: &mut Shared) {
        let Some(active) = shared.active.as_mut().filter(|_| !shared.broken) else {
            return;
        };
        let mut used = false;
        'fill: while self.backend.has_rx_work() {
            let Some(mut chain) = active.rx.pop_descriptor_chain(&active.mem) else {
                // Out of receive buffers with data still owed: ask the driver to kick when it adds
                // some (with EVENT_IDX that moves avail_event up to here; without it the driver
                // only kicks when asked) and look again, in case it added some meanwhile. Without
                // this the guest refills silently and both sides wait for each other.
                if active.rx.enable_notification(&active.mem).unwrap_or(false) {
                    continue 'fill;
                }
                break;
            };
            let head = chain.head_index();
            let used_len =
                match VsockPacket::from_rx_virtq_chain(&active.mem, &mut chain, MAX_PACKET_DATA) {
                    Ok(mut packet) => {
                        let capacity = packet.data_slice().map_or(0, |s| s.len());
                        let buf = &mut self.scratch[..capacity.min(MAX_PACKET_DATA as usize)];
                        match self.backend.next_rx_packet(buf) {
                            Some((header, n)) => {
                                header.write_to(&mut packet);
                                if let Some(slice) = packet.data_slice() {
                                    slice.copy_from(&buf[..n]);
                                }
                                (PKT_HEADER_SIZE + n) as u32
                            }
                            None => {
                                active.rx.go_to_previous_position();
                                break 'fill;
                            }
                        }
                    }
                    Err(e) => {
                        tracing::debug!(
                            "virtio-vsock: returning a malformed RX buffer unused: {e}"
                        );
                        0
                    }
                };
            if active.rx.add_used(&active.mem, head, used_len).is_err() {
                tracing::warn!(
                    "virtio-vsock: the guest's RX used ring is not writable; device stopped"
                );
                shared.broken = true;
                return;
            }
            used = true;
        }
        if used && active.rx.needs_notification(&active.mem).unwrap_or(true) {
            let _ = active.interrupt.signal(INTERRUPT_USED_BUFFER);
        }
    }

    /// One pass after any event: drop the old driver's connections after a reset, serve TX (which
    /// may owe the guest answers), then RX.
    pub(super) fn serve_queues(&mut self) {
        let shared = self.shared.clone();
        let mut shared = lock(&shared);
        if shared.resets != self.resets_seen {
            self.resets_seen = shared.resets;
            self.backend.reset();
        }
        self.process_tx(&mut shared);
        self.process_rx(&mut shared);
    }

    fn apply_registrations(&mut self, ops: &mut EventOps) {
        for registration in self.backend.take_registrations() {
            let result = match registration {
                Registration::Add(fd) => ops.add(Events::with_data_raw(
                    fd,
                    fd as u32,
                    EventSet::IN | EventSet::OUT | EventSet::EDGE_TRIGGERED,
                )),
                Registration::Remove(fd) => ops.remove(Events::with_data_raw(
                    fd,
                    fd as u32,
                    EventSet::IN | EventSet::OUT | EventSet::EDGE_TRIGGERED,
                )),
            };
            if let Err(e) = result {
                tracing::warn!("virtio-vsock: event loop registration {registration:?}: {e:?}");
            }
        }
        self.backend.release_closed();
    }
}

impl MutEventSubscriber for VsockHandler {
    fn init(&mut self, ops: &mut EventOps) {
        for event in &self.queue_events {
            if let Err(e) = ops.add(Events::new(event, EventSet::IN)) {
                tracing::error!("virtio-vsock: cannot watch a queue: {e:?}");
            }
        }
        let listener = self.backend.listener_fd();
        if let Err(e) = ops.add(Events::with_data_raw(
            listener,
            listener as u32,
            EventSet::IN,
        )) {
            tracing::error!("virtio-vsock: cannot watch the listening socket: {e:?}");
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let fd = events.fd();
        let set = events.event_set();
        if let Some(queue) = self.queue_events.iter().position(|e| e.as_raw_fd() == fd) {
            // RX: new receive buffers; TX: packets to send; event queue: buffers for events this
            // device never sends. Both data queues are served below either way.
            let _ = self.queue_events[queue].read();
        } else if fd == self.backend.listener_fd() {
            self.backend.accept_host_clients();
        } else {
            let readable = set.intersects(EventSet::IN | EventSet::HANG_UP | EventSet::ERROR);
            let writable = set.intersects(EventSet::OUT | EventSet::HANG_UP | EventSet::ERROR);
            self.backend.on_host_socket_event(fd, readable, writable);
        }
        self.serve_queues();
        self.apply_registrations(ops);
    }
}
