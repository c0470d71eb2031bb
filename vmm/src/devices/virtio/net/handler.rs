//! The event-loop half of a virtio-net device: moves frames the guest queued on TX to the
//! backend, and frames from the backend into the guest's RX buffers, one pass after any event
//! (a queue kick, the backend ready, a rate limit's timer).
//!
//! Each direction holds at most one frame: TX one the backend could not take yet (or the rate
//! limit held back), RX one read before the guest had room for it. While it is held, that
//! direction waits — the backend is not read and the TX queue not drained — so a slow or dead
//! backend, or a guest that stops taking frames, stalls only this device.

use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cocoon_common::lock;
use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use virtio_queue::QueueT;
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::timerfd::TimerFd;

use super::backend::{Backend, BackendError};
use super::filter::{Dropped, Filter};
use super::frame::{check_tx_header, deliver, read_tx_chain, Delivery, Malformed};
use super::rate_limit::RateLimiter;
use super::state::*;
use crate::devices::log_limit::LogLimiter;
use crate::devices::virtio::INTERRUPT_USED_BUFFER;

/// Frames lost, by why; logged at most every few seconds ([`LogLimiter`]; the counts are kept
/// regardless).
#[derive(Default)]
pub(super) struct Drops {
    pub(super) spoofed: u64,
    pub(super) malformed: u64,
    pub(super) backend: u64,
    log: LogLimiter,
}

impl Drops {
    fn note(&mut self, name: &str, why: &dyn std::fmt::Display) {
        if self.log.allow().is_none() {
            return;
        }
        tracing::warn!(
            "virtio-net {name}: dropped a frame {why} (so far: {} spoofed, {} malformed, {} the backend refused)",
            self.spoofed,
            self.malformed,
            self.backend
        );
    }
}

/// A frame in `tx_buf` the TX side holds until the backend or the rate limit lets it go.
#[derive(Clone, Copy)]
struct HeldTx {
    /// Header included.
    len: usize,
    /// Its rate-limit tokens are taken already.
    paid: bool,
}

/// What became of a frame offered to the backend.
enum Sent {
    /// Gone (or lost to a backend error, which is counted).
    Gone,
    /// Not now: held.
    Later(HeldTx),
    LinkDown(BackendError),
}

/// Why a TX frame may not go.
enum Refused {
    Spoofed(Dropped),
    Malformed(Malformed),
}

pub struct NetHandler {
    pub(super) name: String,
    pub(super) shared: Arc<Mutex<Shared>>,
    pub(super) backend: Box<dyn Backend>,
    pub(super) queue_events: Vec<EventFd>,
    pub(super) timer: TimerFd,
    pub(super) filter: Filter,
    pub(super) mtu: u16,
    pub(super) tx_limit: RateLimiter,
    pub(super) rx_limit: RateLimiter,
    pub(super) drops: Drops,
    resets_seen: u64,
    activated: bool,
    backend_readable: bool,
    link_up: bool,
    timer_armed: bool,
    tx_buf: Box<[u8]>,
    tx_held: Option<HeldTx>,
    rx_buf: Box<[u8]>,
    /// The length of the frame in `rx_buf` waiting for the guest, header included.
    rx_held: Option<usize>,
    /// The held RX frame's rate-limit tokens are taken already.
    rx_paid: bool,
}

impl NetHandler {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        name: String,
        shared: Arc<Mutex<Shared>>,
        backend: Box<dyn Backend>,
        queue_events: Vec<EventFd>,
        timer: TimerFd,
        filter: Filter,
        mtu: u16,
        limits: (RateLimiter, RateLimiter),
    ) -> Self {
        Self {
            name,
            shared,
            backend,
            queue_events,
            timer,
            filter,
            mtu,
            tx_limit: limits.0,
            rx_limit: limits.1,
            drops: Drops::default(),
            resets_seen: 0,
            activated: false,
            backend_readable: true,
            link_up: true,
            timer_armed: false,
            tx_buf: vec![0; MAX_BUFFER_LEN].into_boxed_slice(),
            tx_held: None,
            rx_buf: vec![0; MAX_BUFFER_LEN].into_boxed_slice(),
            rx_held: None,
            rx_paid: false,
        }
    }

    fn link_down(&mut self, shared: &mut Shared, why: &BackendError) {
        if self.link_up {
            tracing::warn!("virtio-net {}: {why}; the link is down", self.name);
        }
        self.link_up = false;
        self.tx_held = None;
        self.rx_held = None;
        self.rx_paid = false;
        shared.set_link(false);
    }

    /// Comes back after `wait` (a rate limit's refill).
    fn wake_after(&mut self, wait: Duration) {
        if !self.timer_armed {
            self.timer_armed = self
                .timer
                .reset(wait.max(Duration::from_micros(100)), None)
                .is_ok();
        }
    }

    /// Checks the frame in `tx_buf` (`len` bytes, header included).
    fn check_tx(&self, len: usize, features: u64) -> Result<(), Refused> {
        let header = &self.tx_buf[..NET_HDR_LEN];
        check_tx_header(header, features).map_err(Refused::Malformed)?;
        if !self.backend.has_vnet_header() && header[..NUM_BUFFERS_OFFSET].iter().any(|b| *b != 0) {
            // Without a header on the backend no offload was offered.
            return Err(Refused::Malformed(Malformed::Offload));
        }
        let frame = &self.tx_buf[NET_HDR_LEN..len];
        let segmented =
            u32::from(header[1]) != virtio_bindings::virtio_net::VIRTIO_NET_HDR_GSO_NONE;
        // The MTU, plus the Ethernet header and a VLAN tag.
        if !segmented && frame.len() > usize::from(self.mtu) + 18 {
            return Err(Refused::Malformed(Malformed::TooLong));
        }
        self.filter.check(frame).map_err(Refused::Spoofed)
    }

    /// Offers the frame in `tx_buf` to the backend, through the rate limit.
    fn try_send(&mut self, mut held: HeldTx) -> Sent {
        if !held.paid {
            if let Err(wait) = self.tx_limit.take(held.len - NET_HDR_LEN) {
                self.wake_after(wait);
                return Sent::Later(held);
            }
            held.paid = true;
        }
        let start = if self.backend.has_vnet_header() {
            0
        } else {
            NET_HDR_LEN
        };
        match self.backend.write_frame(&self.tx_buf[start..held.len]) {
            Ok(true) => Sent::Gone,
            Ok(false) => Sent::Later(held),
            Err(BackendError::Io(e)) => {
                self.drops.backend += 1;
                self.drops
                    .note(&self.name, &format_args!("the backend refused ({e})"));
                Sent::Gone
            }
            Err(e) => Sent::LinkDown(e),
        }
    }

    /// Serves every frame the guest queued for sending, while the backend takes them.
    fn process_tx(&mut self, shared: &mut Shared) {
        if self.link_up && self.tx_held.is_none() {
            // The rest of a frame the backend took only in part (a held frame flushes it first).
            if let Err(e) = self.backend.flush() {
                return self.link_down(shared, &e);
            }
        }
        if let Some(held) = self.tx_held.take() {
            match self.try_send(held) {
                Sent::Gone => {}
                Sent::Later(held) => {
                    self.tx_held = Some(held);
                    return;
                }
                Sent::LinkDown(e) => return self.link_down(shared, &e),
            }
        }
        if !self.link_up {
            return;
        }
        let Some(active) = shared.active.as_mut().filter(|_| !shared.broken) else {
            return;
        };
        let mut used = false;
        let mut broken = false;
        let mut link_error = None;
        'drain: loop {
            // No kicks while draining; re-enabling tells whether more arrived meanwhile.
            let _ = active.tx.disable_notification(&active.mem);
            while let Some(chain) = active.tx.pop_descriptor_chain(&active.mem) {
                let head = chain.head_index();
                let read = read_tx_chain(&active.mem, chain, &mut self.tx_buf);
                if active.tx.add_used(&active.mem, head, 0).is_err() {
                    broken = true;
                    break 'drain;
                }
                used = true;
                let checked = read
                    .map_err(Refused::Malformed)
                    .and_then(|len| self.check_tx(len, active.features).map(|()| len));
                let len = match checked {
                    Ok(len) => len,
                    Err(Refused::Malformed(why)) => {
                        self.drops.malformed += 1;
                        self.drops.note(&self.name, &format_args!("with {why}"));
                        continue;
                    }
                    Err(Refused::Spoofed(why)) => {
                        self.drops.spoofed += 1;
                        self.drops.note(&self.name, &why);
                        continue;
                    }
                };
                match self.try_send(HeldTx { len, paid: false }) {
                    Sent::Gone => {}
                    Sent::Later(held) => {
                        self.tx_held = Some(held);
                        break 'drain;
                    }
                    Sent::LinkDown(e) => {
                        link_error = Some(e);
                        break 'drain;
                    }
                }
            }
            if !active.tx.enable_notification(&active.mem).unwrap_or(false) {
                break;
            }
        }
        if used && active.tx.needs_notification(&active.mem).unwrap_or(true) {
            let _ = active.interrupt.signal(INTERRUPT_USED_BUFFER);
        }
        if broken {
            tracing::warn!(
                "virtio-net {}: the guest's TX used ring is not writable; device stopped",
                self.name
            );
            shared.broken = true;
        }
        if let Some(e) = link_error {
            self.link_down(shared, &e);
        }
    }

    /// Reads the next frame from the backend into `rx_buf`, unless one is held already.
    fn fill_rx(&mut self, shared: &mut Shared) {
        if self.rx_held.is_some() || !self.backend_readable || !self.link_up {
            return;
        }
        let header = if self.backend.has_vnet_header() {
            0
        } else {
            NET_HDR_LEN
        };
        match self.backend.read_frame(&mut self.rx_buf[header..]) {
            Ok(Some(n)) if n + header >= NET_HDR_LEN => {
                if header > 0 {
                    self.rx_buf[..NET_HDR_LEN].fill(0);
                }
                self.rx_held = Some(n + header);
            }
            Ok(Some(_)) => {
                self.drops.malformed += 1;
                self.drops
                    .note(&self.name, &"from the backend shorter than its header");
            }
            Ok(None) => self.backend_readable = false,
            Err(BackendError::Io(e)) => {
                tracing::debug!("virtio-net {}: reading the backend: {e}", self.name);
                self.backend_readable = false;
            }
            Err(e) => self.link_down(shared, &e),
        }
    }

    /// Fills the guest's receive buffers with frames from the backend while both have some.
    fn process_rx(&mut self, shared: &mut Shared) {
        let mut used = false;
        let mut looked_again = false;
        loop {
            if shared.active.is_none() || shared.broken {
                break;
            }
            self.fill_rx(shared);
            let Some(len) = self.rx_held else {
                break;
            };
            if !self.rx_paid {
                if let Err(wait) = self.rx_limit.take(len - NET_HDR_LEN) {
                    self.wake_after(wait);
                    break;
                }
                self.rx_paid = true;
            }
            let active = shared.active.as_mut().expect("checked above");
            match deliver(active, &mut self.rx_buf[..len]) {
                Delivery::Delivered => {
                    used = true;
                    self.rx_held = None;
                    self.rx_paid = false;
                }
                Delivery::NoBuffers => {
                    // Ask the driver to kick when it adds buffers, and look once more in case it
                    // did meanwhile (once: the buffers there were not enough stay available).
                    let more = active.rx.enable_notification(&active.mem).unwrap_or(false);
                    if more && !looked_again {
                        looked_again = true;
                        continue;
                    }
                    break;
                }
                Delivery::Dropped(why) => {
                    used = true;
                    self.rx_held = None;
                    self.rx_paid = false;
                    self.drops.malformed += 1;
                    self.drops.note(
                        &self.name,
                        &format_args!("for the guest: its buffers had {why}"),
                    );
                }
                Delivery::Broken => {
                    tracing::warn!(
                        "virtio-net {}: the guest's RX used ring is not writable; device stopped",
                        self.name
                    );
                    shared.broken = true;
                    break;
                }
            }
        }
        if let Some(active) = shared.active.as_mut().filter(|_| used) {
            if active.rx.needs_notification(&active.mem).unwrap_or(true) {
                let _ = active.interrupt.signal(INTERRUPT_USED_BUFFER);
            }
        }
    }

    /// The backend has something to read (what its edge-triggered event says).
    pub(super) fn mark_backend_readable(&mut self) {
        self.backend_readable = true;
    }

    /// One pass after any event.
    pub(super) fn serve(&mut self) {
        let shared = self.shared.clone();
        let mut shared = lock(&shared);
        if shared.resets != self.resets_seen {
            // A new driver: what the old one sent or was sent is not its business.
            self.resets_seen = shared.resets;
            self.tx_held = None;
            self.rx_held = None;
            self.rx_paid = false;
            self.activated = false;
        }
        if !self.activated {
            let Some(active) = &shared.active else {
                return;
            };
            if let Err(e) = self.backend.set_offloads(active.features) {
                tracing::warn!("virtio-net {}: {e}", self.name);
            }
            self.activated = true;
        }
        self.process_tx(&mut shared);
        self.process_rx(&mut shared);
    }
}

/// The device's totals, once, when the VM ends: the rate-limited warnings may have missed the
/// last drops.
impl Drop for NetHandler {
    fn drop(&mut self) {
        let Drops {
            spoofed,
            malformed,
            backend,
            ..
        } = self.drops;
        if spoofed + malformed + backend > 0 {
            tracing::warn!(
                "virtio-net {}: frames dropped while the VM ran: {spoofed} spoofed, {malformed} malformed, {backend} the backend refused",
                self.name
            );
        }
    }
}

impl MutEventSubscriber for NetHandler {
    fn init(&mut self, ops: &mut EventOps) {
        for event in &self.queue_events {
            if let Err(e) = ops.add(Events::new(event, EventSet::IN)) {
                tracing::error!("virtio-net {}: cannot watch a queue: {e:?}", self.name);
            }
        }
        let backend = self.backend.fd();
        if let Err(e) = ops.add(Events::with_data_raw(
            backend,
            backend as u32,
            EventSet::IN | EventSet::OUT | EventSet::EDGE_TRIGGERED,
        )) {
            tracing::error!("virtio-net {}: cannot watch the backend: {e:?}", self.name);
        }
        if let Err(e) = ops.add(Events::new(&self.timer, EventSet::IN)) {
            tracing::error!(
                "virtio-net {}: cannot watch the rate limit's timer: {e:?}",
                self.name
            );
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let fd = events.fd();
        if let Some(queue) = self.queue_events.iter().position(|e| e.as_raw_fd() == fd) {
            let _ = self.queue_events[queue].read();
        } else if fd == self.timer.as_raw_fd() {
            let _ = self.timer.wait();
            self.timer_armed = false;
        } else if fd == self.backend.fd() {
            let set = events.event_set();
            if set.intersects(EventSet::IN | EventSet::HANG_UP | EventSet::ERROR) {
                self.mark_backend_readable();
            }
            if set.contains(EventSet::HANG_UP) && !set.contains(EventSet::IN) {
                let shared = self.shared.clone();
                self.link_down(&mut lock(&shared), &BackendError::Closed);
                let _ = ops.remove(events);
            }
        }
        self.serve();
    }
}
