//! Owns a VM's devices and where they sit: it hands out MMIO windows and IO-APIC pins, attaches
//! each device (its irqfd, its queue ioeventfds, its place on the bus), keeps the event-loop half
//! of each virtio device, and writes the `virtio_mmio.device=` entries that announce them on the
//! kernel command line. A new device is attached here, from the builder, and nowhere else.

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use event_manager::MutEventSubscriber;
use kvm_ioctls::{IoEventAddress, VmFd};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use crate::arch::x86_64::layout::MMIO_DEVICES_START;
use crate::config::{ConsoleConfig, VmConfig};
use crate::devices::console::ConsoleSink;
use crate::devices::i8042::{I8042, I8042_BASE, I8042_LEN};
use crate::devices::serial::{SerialDevice, COM1_BASE, COM1_IRQ, COM1_LEN};
use crate::devices::virtio::block::{Block, BlockSlot, DiskError};
use crate::devices::virtio::mmio::{
    MmioTransport, TransportError, MMIO_WINDOW_SIZE, QUEUE_NOTIFY_OFFSET,
};
use crate::devices::virtio::net::{Net, NetError};
use crate::devices::virtio::vsock::{ListenError, Vsock};
use crate::devices::virtio::{Interrupt, VirtioDevice};
use crate::devices::{BusOverlap, MmioBus, PioBus};
use crate::vstate::vcpu::Buses;

/// First IO-APIC pin for virtio devices (0-4 are the PIT, keyboard, cascade, COM2, COM1).
const FIRST_DEVICE_IRQ: u32 = 5;

/// The event-loop half of a device: what serves its queue kicks and backend sockets.
pub type Handler = Arc<Mutex<dyn MutEventSubscriber + Send>>;

/// A device could not be attached.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error(transparent)]
    Disk(#[from] DiskError),
    #[error(transparent)]
    Vsock(#[from] ListenError),
    #[error(transparent)]
    Net(#[from] NetError),
    #[error("{device}: {source}")]
    Transport {
        device: String,
        source: TransportError,
    },
    #[error("{device}: {source}")]
    Bus { device: String, source: BusOverlap },
    #[error("{what}: {source}")]
    Kvm {
        what: String,
        source: kvm_ioctls::Error,
    },
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
}

fn io_error(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> DeviceError {
    let what = what.into();
    move |source| DeviceError::Io { what, source }
}

fn kvm_error(what: impl Into<String>) -> impl FnOnce(kvm_ioctls::Error) -> DeviceError {
    let what = what.into();
    move |source| DeviceError::Kvm { what, source }
}

/// A VM's devices, as they are attached.
#[derive(Default)]
pub struct DeviceManager {
    mmio: MmioBus,
    pio: PioBus,
    handlers: Vec<Handler>,
    cmdline: String,
    virtio_count: usize,
    /// The empty disk slots, for the API socket to fill.
    slots: Vec<BlockSlot>,
}

/// What the running VM keeps of its devices once they are all attached.
pub struct AttachedDevices {
    pub buses: Buses,
    pub handlers: Vec<Handler>,
    pub slots: Vec<BlockSlot>,
}

/// The port-IO devices the running VM keeps a hand on.
pub struct LegacyDevices {
    /// The COM1 UART, for console input.
    pub serial: Arc<Mutex<SerialDevice>>,
    /// Set when the console saw the guest kernel panic.
    pub panicked: Arc<AtomicBool>,
}

impl DeviceManager {
    /// Attaches the configured disks (virtio-blk, in order: vda, vdb, ...), then the empty disk
    /// slots, then the vsock device, then the network interfaces (in order: eth0, eth1, ...).
    pub fn attach_virtio_devices(
        &mut self,
        vm: &VmFd,
        mem: &GuestMemoryMmap,
        config: &VmConfig,
    ) -> Result<(), DeviceError> {
        let disks = config.disks.iter().map(Some);
        let slots = (0..config.disk_slots).map(|_| None);
        for (index, disk) in disks.chain(slots).enumerate() {
            let id = format!("cocoon-disk{index}");
            let block = match disk {
                Some(disk) => Block::open(&disk.path, disk.read_only, &id)?,
                None => {
                    let block = Block::empty_slot(&id);
                    self.slots.push(block.slot());
                    block
                }
            };
            let handle = block.handle();
            self.attach_virtio(
                vm,
                mem,
                &format!("disk {index}"),
                Box::new(block),
                |mut events| Arc::new(Mutex::new(handle.queue_handler(events.remove(0)))),
            )?;
        }
        if let Some(vsock) = &config.vsock {
            let (device, handler) = Vsock::new(vsock.cid.into(), &vsock.uds)?;
            self.attach_virtio(vm, mem, "the vsock device", Box::new(device), |events| {
                Arc::new(Mutex::new(handler.build(events)))
            })?;
        }
        for (index, config) in config.nets.iter().enumerate() {
            let (device, handler) = Net::new(index, config)?;
            tracing::info!("net {index}: MAC {}", device.mac());
            self.attach_virtio(
                vm,
                mem,
                &format!("net {index}"),
                Box::new(device),
                |events| Arc::new(Mutex::new(handler.build(events))),
            )?;
        }
        Ok(())
    }

    /// Puts `device` behind the next virtio-mmio window, with an irqfd for its interrupt and an
    /// ioeventfd per queue, so neither costs a trip through the VMM's vCPU loop. `make_handler`
    /// gets the queue eventfds and returns the event-loop half of the device.
    pub fn attach_virtio(
        &mut self,
        vm: &VmFd,
        mem: &GuestMemoryMmap,
        name: &str,
        device: Box<dyn VirtioDevice>,
        make_handler: impl FnOnce(Vec<EventFd>) -> Handler,
    ) -> Result<(), DeviceError> {
        let index = self.virtio_count;
        let base = MMIO_DEVICES_START + index as u64 * MMIO_WINDOW_SIZE;
        let irq = FIRST_DEVICE_IRQ + index as u32;
        let irqfd =
            EventFd::new(libc::EFD_NONBLOCK).map_err(io_error("creating a device irqfd"))?;
        vm.register_irqfd(&irqfd, irq)
            .map_err(kvm_error(format!("registering the irqfd of {name}")))?;
        let interrupt = Arc::new(Interrupt::new(irqfd));
        let transport = MmioTransport::new(device, mem.clone(), interrupt).map_err(|source| {
            DeviceError::Transport {
                device: name.to_string(),
                source,
            }
        })?;
        let mut events = Vec::new();
        for (queue, event) in transport.queue_events().iter().enumerate() {
            vm.register_ioevent(
                event,
                &IoEventAddress::Mmio(base + QUEUE_NOTIFY_OFFSET),
                queue as u32,
            )
            .map_err(kvm_error(format!(
                "registering a queue ioeventfd of {name}"
            )))?;
            events.push(
                event
                    .try_clone()
                    .map_err(io_error("cloning a queue eventfd"))?,
            );
        }
        self.handlers.push(make_handler(events));
        self.mmio
            .insert(base, MMIO_WINDOW_SIZE, Arc::new(Mutex::new(transport)))
            .map_err(|source| DeviceError::Bus {
                device: name.to_string(),
                source,
            })?;
        self.cmdline.push_str(&format!(
            " virtio_mmio.device={}K@{base:#x}:{irq}",
            MMIO_WINDOW_SIZE >> 10
        ));
        self.virtio_count += 1;
        Ok(())
    }

    /// The kernel command-line entries that announce the virtio devices attached so far.
    pub fn cmdline_entries(&self) -> &str {
        &self.cmdline
    }

    /// Attaches the port-IO devices: the COM1 UART (its output to `console`, a file of which
    /// keeps at most `console_max_bytes` twice) and the i8042, whose reset line is how a cocoon
    /// guest stops.
    pub fn attach_legacy_devices(
        &mut self,
        vm: &VmFd,
        console: &ConsoleConfig,
        console_max_bytes: u64,
    ) -> Result<LegacyDevices, DeviceError> {
        let sink = ConsoleSink::open(console, console_max_bytes)
            .map_err(io_error("opening the console output"))?;
        let panicked = sink.panic_flag();
        let serial_irq =
            EventFd::new(libc::EFD_NONBLOCK).map_err(io_error("creating the serial irqfd"))?;
        vm.register_irqfd(&serial_irq, COM1_IRQ)
            .map_err(kvm_error("registering the serial irqfd"))?;
        let serial = Arc::new(Mutex::new(SerialDevice::new(serial_irq, sink)));
        let bus_error = |device: &str| {
            let device = device.to_string();
            move |source| DeviceError::Bus { device, source }
        };
        self.pio
            .insert(COM1_BASE.into(), COM1_LEN.into(), serial.clone())
            .map_err(bus_error("the serial port"))?;
        self.pio
            .insert(
                I8042_BASE.into(),
                I8042_LEN.into(),
                Arc::new(Mutex::new(I8042)),
            )
            .map_err(bus_error("the i8042"))?;
        Ok(LegacyDevices { serial, panicked })
    }

    /// Hands the devices over to the running VM.
    pub fn finish(self) -> AttachedDevices {
        AttachedDevices {
            buses: Buses {
                pio: Arc::new(self.pio),
                mmio: Arc::new(self.mmio),
            },
            handlers: self.handlers,
            slots: self.slots,
        }
    }
}
