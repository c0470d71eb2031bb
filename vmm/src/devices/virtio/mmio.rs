//! The virtio-mmio transport, version 2 (virtio 1.x §4.2): the register window a guest driver uses to
//! discover a device, negotiate features, describe its queues and start it. Every access from the
//! guest is checked: an access of the wrong size or out of order is ignored (reads see zero), never a
//! panic.

use std::sync::Arc;

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::{Interrupt, VirtioDevice, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX};
use crate::devices::log_limit::LogLimiter;

/// Size of a device's register window, configuration space included.
pub const MMIO_WINDOW_SIZE: u64 = 0x1000;
const MAGIC: u32 = 0x7472_6976; // "virt"
const VERSION: u32 = 2;
const VENDOR_ID: u32 = 0x4e4f_4f43; // "COON"
const CONFIG_SPACE: u64 = 0x100;

const REG_MAGIC: u64 = 0x000;
const REG_VERSION: u64 = 0x004;
const REG_DEVICE_ID: u64 = 0x008;
const REG_VENDOR_ID: u64 = 0x00c;
const REG_DEVICE_FEATURES: u64 = 0x010;
const REG_DEVICE_FEATURES_SEL: u64 = 0x014;
const REG_DRIVER_FEATURES: u64 = 0x020;
const REG_DRIVER_FEATURES_SEL: u64 = 0x024;
const REG_QUEUE_SEL: u64 = 0x030;
const REG_QUEUE_NUM_MAX: u64 = 0x034;
const REG_QUEUE_NUM: u64 = 0x038;
const REG_QUEUE_READY: u64 = 0x044;
const REG_QUEUE_NOTIFY: u64 = 0x050;
const REG_INTERRUPT_STATUS: u64 = 0x060;
const REG_INTERRUPT_ACK: u64 = 0x064;
const REG_STATUS: u64 = 0x070;
const REG_QUEUE_DESC_LOW: u64 = 0x080;
const REG_QUEUE_DESC_HIGH: u64 = 0x084;
const REG_QUEUE_DRIVER_LOW: u64 = 0x090;
const REG_QUEUE_DRIVER_HIGH: u64 = 0x094;
const REG_QUEUE_DEVICE_LOW: u64 = 0x0a0;
const REG_QUEUE_DEVICE_HIGH: u64 = 0x0a4;
const REG_CONFIG_GENERATION: u64 = 0x0fc;

/// Device status bits (virtio 1.x §2.1).
pub const STATUS_ACKNOWLEDGE: u32 = 1;
pub const STATUS_DRIVER: u32 = 2;
pub const STATUS_DRIVER_OK: u32 = 4;
pub const STATUS_FEATURES_OK: u32 = 8;
pub const STATUS_DEVICE_NEEDS_RESET: u32 = 64;
pub const STATUS_FAILED: u32 = 128;

/// Offset of the queue-notify register, for an ioeventfd.
pub const QUEUE_NOTIFY_OFFSET: u64 = REG_QUEUE_NOTIFY;

/// One device behind its virtio-mmio register window.
pub struct MmioTransport {
    device: Box<dyn VirtioDevice>,
    mem: GuestMemoryMmap,
    interrupt: Arc<Interrupt>,
    queues: Vec<Queue>,
    queue_events: Vec<EventFd>,
    status: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    queue_sel: u32,
    activated: bool,
    /// A guest can fail activation in a loop (reset, set up wrong, again): logged at most every
    /// few seconds.
    activation_log: LogLimiter,
}

/// The transport could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("queue of size {0}: {1:?}")]
    Queue(u16, virtio_queue::Error),
    #[error("creating a queue eventfd: {0}")]
    EventFd(std::io::Error),
}

impl MmioTransport {
    pub fn new(
        device: Box<dyn VirtioDevice>,
        mem: GuestMemoryMmap,
        interrupt: Arc<Interrupt>,
    ) -> Result<Self, TransportError> {
        let queues = device
            .queue_max_sizes()
            .iter()
            .map(|&size| Queue::new(size).map_err(|e| TransportError::Queue(size, e)))
            .collect::<Result<Vec<_>, _>>()?;
        let queue_events = queues
            .iter()
            .map(|_| EventFd::new(libc::EFD_NONBLOCK).map_err(TransportError::EventFd))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            device,
            mem,
            interrupt,
            queues,
            queue_events,
            status: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            queue_sel: 0,
            activated: false,
            activation_log: LogLimiter::default(),
        })
    }

    /// Eventfds signalled on queue notifications, by queue index (for KVM ioeventfds).
    pub fn queue_events(&self) -> &[EventFd] {
        &self.queue_events
    }

    pub fn status(&self) -> u32 {
        self.status
    }

    pub fn is_activated(&self) -> bool {
        self.activated
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(self.queue_sel as usize)
    }

    /// Queue registers may change only between FEATURES_OK and DRIVER_OK, on a queue not yet ready.
    fn queue_writable(&mut self) -> bool {
        let configuring = self.status & (STATUS_FEATURES_OK | STATUS_DRIVER_OK | STATUS_FAILED)
            == STATUS_FEATURES_OK;
        configuring && self.selected_queue().is_some_and(|q| !q.ready())
    }

    fn device_features_word(&self) -> u32 {
        match self.device_features_sel {
            0 => self.device.features() as u32,
            1 => (self.device.features() >> 32) as u32,
            _ => 0,
        }
    }

    fn reset(&mut self) {
        if self.activated {
            self.device.reset();
            self.activated = false;
        }
        for q in &mut self.queues {
            q.reset();
        }
        self.status = 0;
        self.driver_features = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.queue_sel = 0;
        self.interrupt.acknowledge(u32::MAX);
    }

    fn set_status(&mut self, new: u32) {
        if new == 0 {
            self.reset();
            return;
        }
        // Bits only accumulate; FEATURES_OK is kept only if the negotiated features are acceptable.
        let added = new & !self.status;
        if new & self.status != self.status {
            return;
        }
        if added & STATUS_FEATURES_OK != 0 {
            let offered = self.device.features();
            let acceptable = self.driver_features & !offered == 0
                && self.driver_features & VIRTIO_F_VERSION_1 != 0
                && self.status & STATUS_DRIVER != 0;
            if !acceptable {
                self.status = new & !STATUS_FEATURES_OK;
                return;
            }
        }
        if added & STATUS_DRIVER_OK != 0 {
            if self.status & STATUS_FEATURES_OK == 0 {
                return;
            }
            self.status = new;
            self.activate();
            return;
        }
        self.status = new;
    }

    /// Starts the device; on any failure the device is marked DEVICE_NEEDS_RESET, which tells the
    /// driver to reset it, and the reason is logged.
    fn activate(&mut self) {
        match self.try_activate() {
            Ok(()) => self.activated = true,
            Err(why) => {
                if let Some(held_back) = self.activation_log.allow() {
                    tracing::warn!(
                        "virtio device {}: {why}; device needs reset ({held_back} more such failures not logged)",
                        self.device.device_type()
                    );
                }
                self.status |= STATUS_DEVICE_NEEDS_RESET;
            }
        }
    }

    fn try_activate(&mut self) -> Result<(), String> {
        let mem = &self.mem;
        if let Some(index) = self
            .queues
            .iter()
            .position(|q| q.ready() && !q.is_valid(mem))
        {
            return Err(format!("queue {index} is not valid"));
        }
        let events = self
            .queue_events
            .iter()
            .map(EventFd::try_clone)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("cloning queue eventfds: {e}"))?;
        // The device gets its own copies of the queues; the transport keeps the registers' view.
        let event_idx = self.driver_features & VIRTIO_RING_F_EVENT_IDX != 0;
        let queues = self
            .queues
            .iter()
            .map(|q| {
                Queue::try_from(q.state()).map(|mut q| {
                    q.set_event_idx(event_idx);
                    q
                })
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("copying the queues: {e:?}"))?;
        self.device
            .activate(
                self.mem.clone(),
                self.driver_features,
                queues,
                events,
                self.interrupt.clone(),
            )
            .map_err(|e| e.to_string())
    }

    /// A guest read of `data.len()` bytes at `offset` into the window.
    pub fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= CONFIG_SPACE {
            self.device.read_config(offset - CONFIG_SPACE, data);
            return;
        }
        if data.len() != 4 {
            data.fill(0);
            return;
        }
        let value = match offset {
            REG_MAGIC => MAGIC,
            REG_VERSION => VERSION,
            REG_DEVICE_ID => self.device.device_type(),
            REG_VENDOR_ID => VENDOR_ID,
            REG_DEVICE_FEATURES => self.device_features_word(),
            REG_QUEUE_NUM_MAX => self.selected_queue().map_or(0, |q| q.max_size().into()),
            REG_QUEUE_READY => self.selected_queue().map_or(0, |q| q.ready().into()),
            REG_INTERRUPT_STATUS => self.interrupt.status(),
            REG_STATUS => self.status,
            REG_CONFIG_GENERATION => self.device.config_generation(),
            _ => 0,
        };
        data.copy_from_slice(&value.to_le_bytes());
    }

    /// A guest write of `data` at `offset` into the window.
    pub fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= CONFIG_SPACE {
            if self.status & STATUS_DRIVER != 0 {
                self.device.write_config(offset - CONFIG_SPACE, data);
            }
            return;
        }
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            return;
        };
        let value = u32::from_le_bytes(bytes);
        let negotiating = self.status & (STATUS_DRIVER | STATUS_FEATURES_OK) == STATUS_DRIVER;
        match offset {
            REG_DEVICE_FEATURES_SEL => self.device_features_sel = value,
            REG_DRIVER_FEATURES_SEL => self.driver_features_sel = value,
            REG_DRIVER_FEATURES if negotiating => match self.driver_features_sel {
                0 => {
                    self.driver_features = (self.driver_features & !0xffff_ffff) | u64::from(value)
                }
                1 => {
                    self.driver_features =
                        (self.driver_features & 0xffff_ffff) | (u64::from(value) << 32)
                }
                _ => {}
            },
            REG_QUEUE_SEL => self.queue_sel = value,
            REG_QUEUE_NUM if self.queue_writable() => {
                if let (Some(q), Ok(size)) = (self.selected_queue(), u16::try_from(value)) {
                    q.set_size(size);
                }
            }
            REG_QUEUE_READY if self.queue_writable() || value == 0 => {
                if let Some(q) = self.selected_queue() {
                    q.set_ready(value == 1);
                }
            }
            REG_QUEUE_DESC_LOW
            | REG_QUEUE_DESC_HIGH
            | REG_QUEUE_DRIVER_LOW
            | REG_QUEUE_DRIVER_HIGH
            | REG_QUEUE_DEVICE_LOW
            | REG_QUEUE_DEVICE_HIGH
                if self.queue_writable() =>
            {
                let q = self.selected_queue().expect("queue_writable checked it");
                let (low, high) = if offset & 0x4 == 0 {
                    (Some(value), None)
                } else {
                    (None, Some(value))
                };
                match offset & !0x4 {
                    REG_QUEUE_DESC_LOW => q.set_desc_table_address(low, high),
                    REG_QUEUE_DRIVER_LOW => q.set_avail_ring_address(low, high),
                    _ => q.set_used_ring_address(low, high),
                }
            }
            REG_QUEUE_NOTIFY => {
                if let Some(evt) = self.queue_events.get(value as usize) {
                    let _ = evt.write(1);
                }
            }
            REG_INTERRUPT_ACK => self.interrupt.acknowledge(value),
            REG_STATUS => self.set_status(value),
            _ => {}
        }
    }
}

impl crate::devices::MmioDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        MmioTransport::read(self, offset, data)
    }
    fn write(&mut self, offset: u64, data: &[u8]) {
        MmioTransport::write(self, offset, data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::ActivateError;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use vm_memory::GuestAddress;

    /// A device that records activations and exposes 8 bytes of config.
    struct Probe {
        activations: Arc<AtomicUsize>,
        resets: Arc<AtomicUsize>,
        config: [u8; 8],
    }

    impl VirtioDevice for Probe {
        fn device_type(&self) -> u32 {
            2
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &[256, 16]
        }
        fn features(&self) -> u64 {
            VIRTIO_F_VERSION_1 | 1 << 5
        }
        fn read_config(&self, offset: u64, data: &mut [u8]) {
            for (i, b) in data.iter_mut().enumerate() {
                *b = *self.config.get(offset as usize + i).unwrap_or(&0);
            }
        }
        fn write_config(&mut self, _: u64, _: &[u8]) {}
        fn activate(
            &mut self,
            _: GuestMemoryMmap,
            features: u64,
            queues: Vec<Queue>,
            events: Vec<EventFd>,
            _: Arc<Interrupt>,
        ) -> Result<(), ActivateError> {
            assert_eq!(features & VIRTIO_F_VERSION_1, VIRTIO_F_VERSION_1);
            assert_eq!((queues.len(), events.len()), (2, 2));
            self.activations.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
        fn reset(&mut self) {
            self.resets.fetch_add(1, Ordering::SeqCst);
        }
    }

    struct Fixture {
        t: MmioTransport,
        activations: Arc<AtomicUsize>,
        resets: Arc<AtomicUsize>,
        interrupt: Arc<Interrupt>,
    }

    fn fixture() -> Fixture {
        let activations = Arc::new(AtomicUsize::new(0));
        let resets = Arc::new(AtomicUsize::new(0));
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let interrupt = Arc::new(Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap()));
        let probe = Probe {
            activations: activations.clone(),
            resets: resets.clone(),
            config: *b"cfgbytes",
        };
        let t = MmioTransport::new(Box::new(probe), mem, interrupt.clone()).unwrap();
        Fixture {
            t,
            activations,
            resets,
            interrupt,
        }
    }

    fn r(t: &mut MmioTransport, off: u64) -> u32 {
        let mut b = [0u8; 4];
        t.read(off, &mut b);
        u32::from_le_bytes(b)
    }

    fn w(t: &mut MmioTransport, off: u64, v: u32) {
        t.write(off, &v.to_le_bytes());
    }

    /// The Linux driver's sequence up to FEATURES_OK, then queue 0 (size 16) at valid addresses.
    fn negotiate_and_configure(t: &mut MmioTransport, driver_high_features: u32) {
        w(t, REG_STATUS, STATUS_ACKNOWLEDGE);
        w(t, REG_STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        w(t, REG_DRIVER_FEATURES_SEL, 1);
        w(t, REG_DRIVER_FEATURES, driver_high_features);
        w(t, REG_DRIVER_FEATURES_SEL, 0);
        w(t, REG_DRIVER_FEATURES, 1 << 5);
        w(
            t,
            REG_STATUS,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK,
        );
        w(t, REG_QUEUE_SEL, 0);
        w(t, REG_QUEUE_NUM, 16);
        w(t, REG_QUEUE_DESC_LOW, 0x1000);
        w(t, REG_QUEUE_DESC_HIGH, 0);
        w(t, REG_QUEUE_DRIVER_LOW, 0x2000);
        w(t, REG_QUEUE_DRIVER_HIGH, 0);
        w(t, REG_QUEUE_DEVICE_LOW, 0x3000);
        w(t, REG_QUEUE_DEVICE_HIGH, 0);
        w(t, REG_QUEUE_READY, 1);
    }

    #[test]
    fn identification_registers() {
        let mut f = fixture();
        assert_eq!(r(&mut f.t, REG_MAGIC), MAGIC);
        assert_eq!(r(&mut f.t, REG_VERSION), 2);
        assert_eq!(r(&mut f.t, REG_DEVICE_ID), 2);
        w(&mut f.t, REG_DEVICE_FEATURES_SEL, 1);
        assert_eq!(r(&mut f.t, REG_DEVICE_FEATURES), 1);
        w(&mut f.t, REG_DEVICE_FEATURES_SEL, 0);
        assert_eq!(r(&mut f.t, REG_DEVICE_FEATURES), 1 << 5);
        w(&mut f.t, REG_QUEUE_SEL, 1);
        assert_eq!(r(&mut f.t, REG_QUEUE_NUM_MAX), 16);
        w(&mut f.t, REG_QUEUE_SEL, 7);
        assert_eq!(r(&mut f.t, REG_QUEUE_NUM_MAX), 0, "no such queue");
        let mut cfg = [0u8; 3];
        f.t.read(CONFIG_SPACE + 3, &mut cfg);
        assert_eq!(&cfg, b"byt");
    }

    #[test]
    fn full_negotiation_activates_the_device() {
        let mut f = fixture();
        negotiate_and_configure(&mut f.t, 1);
        assert_eq!(
            r(&mut f.t, REG_STATUS) & STATUS_FEATURES_OK,
            STATUS_FEATURES_OK
        );
        let all = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK;
        w(&mut f.t, REG_STATUS, all);
        assert_eq!(f.activations.load(Ordering::SeqCst), 1);
        assert!(f.t.is_activated());
        assert_eq!(r(&mut f.t, REG_STATUS), all);

        // Notifications reach the queue's eventfd; unknown queues are ignored.
        w(&mut f.t, REG_QUEUE_NOTIFY, 0);
        assert_eq!(f.t.queue_events()[0].read().unwrap(), 1);
        w(&mut f.t, REG_QUEUE_NOTIFY, 99);

        // Interrupt status and acknowledgement.
        f.interrupt
            .signal(super::super::INTERRUPT_USED_BUFFER)
            .unwrap();
        assert_eq!(r(&mut f.t, REG_INTERRUPT_STATUS), 1);
        w(&mut f.t, REG_INTERRUPT_ACK, 1);
        assert_eq!(r(&mut f.t, REG_INTERRUPT_STATUS), 0);

        // Writing 0 resets the device.
        w(&mut f.t, REG_STATUS, 0);
        assert_eq!(f.resets.load(Ordering::SeqCst), 1);
        assert!(!f.t.is_activated());
        assert_eq!(r(&mut f.t, REG_QUEUE_READY), 0);
    }

    #[test]
    fn features_without_version_1_are_refused() {
        let mut f = fixture();
        negotiate_and_configure(&mut f.t, 0);
        assert_eq!(r(&mut f.t, REG_STATUS) & STATUS_FEATURES_OK, 0);
        w(
            &mut f.t,
            REG_STATUS,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_DRIVER_OK,
        );
        assert_eq!(f.activations.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn unoffered_features_are_refused() {
        let mut f = fixture();
        negotiate_and_configure(&mut f.t, 1 | 1 << 7);
        assert_eq!(r(&mut f.t, REG_STATUS) & STATUS_FEATURES_OK, 0);
    }

    #[test]
    fn queue_registers_are_frozen_outside_configuration() {
        let mut f = fixture();
        // Before FEATURES_OK: ignored.
        w(&mut f.t, REG_QUEUE_NUM, 8);
        w(&mut f.t, REG_QUEUE_READY, 1);
        assert_eq!(r(&mut f.t, REG_QUEUE_READY), 0);
        negotiate_and_configure(&mut f.t, 1);
        let all = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK;
        w(&mut f.t, REG_STATUS, all);
        // After DRIVER_OK: the ready queue keeps its size and addresses.
        w(&mut f.t, REG_QUEUE_DESC_LOW, 0xdead_0000);
        assert_eq!(f.t.queues[0].desc_table(), 0x1000);
    }

    #[test]
    fn invalid_queue_marks_the_device_for_reset_instead_of_activating() {
        let mut f = fixture();
        negotiate_and_configure(&mut f.t, 1);
        // Point the used ring outside guest memory.
        w(&mut f.t, REG_QUEUE_READY, 0);
        w(&mut f.t, REG_QUEUE_DEVICE_LOW, 0xffff_f000);
        w(&mut f.t, REG_QUEUE_DEVICE_HIGH, 0xffff);
        w(&mut f.t, REG_QUEUE_READY, 1);
        let all = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK;
        w(&mut f.t, REG_STATUS, all);
        assert_eq!(f.activations.load(Ordering::SeqCst), 0);
        assert_ne!(r(&mut f.t, REG_STATUS) & STATUS_DEVICE_NEEDS_RESET, 0);
    }

    #[test]
    fn odd_sized_accesses_are_harmless() {
        let mut f = fixture();
        let mut two = [0xffu8; 2];
        f.t.read(REG_MAGIC, &mut two);
        assert_eq!(two, [0, 0]);
        f.t.write(REG_STATUS, &[1]);
        assert_eq!(r(&mut f.t, REG_STATUS), 0);
        f.t.write(0xfff, &[1, 2, 3, 4, 5, 6, 7, 8]);
        let mut far = [0xffu8; 8];
        f.t.read(0xff8, &mut far);
        assert_eq!(far, [0; 8]);
        // Status bits can't be cleared piecemeal.
        w(&mut f.t, REG_STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        w(&mut f.t, REG_STATUS, STATUS_DRIVER);
        assert_eq!(r(&mut f.t, REG_STATUS), STATUS_ACKNOWLEDGE | STATUS_DRIVER);
    }
}
