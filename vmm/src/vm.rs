//! Builds a VM from a validated configuration and runs it to the end: KVM setup, guest memory,
//! images, boot tables, devices, one thread per vCPU, and the event loop on the calling thread.

use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use kvm_bindings::{
    kvm_pit_config, kvm_userspace_memory_region, KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{Cap, IoEventAddress, Kvm, VmFd};
use vm_memory::{
    GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion, MemoryRegionAddress,
};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::signal::{register_signal_handler, Killable, SIGRTMIN};

use crate::api::{Api, ApiServer};
use crate::arch::x86_64::layout::{
    ram_regions, CMDLINE_MAX_SIZE, EBDA_START, HIMEM_START, KVM_TSS_ADDRESS, MMIO_DEVICES_START,
};
use crate::arch::x86_64::{bootparams, mptable, regs};
use crate::config::{ConsoleConfig, VmConfig};
use crate::devices::console::ConsoleSink;
use crate::devices::i8042::{I8042, I8042_BASE, I8042_LEN};
use crate::devices::serial::{SerialDevice, COM1_BASE, COM1_IRQ, COM1_LEN};
use crate::devices::virtio::block::{Block, BlockSlot};
use crate::devices::virtio::mmio::{MmioTransport, MMIO_WINDOW_SIZE, QUEUE_NOTIFY_OFFSET};
use crate::devices::virtio::vsock::Vsock;
use crate::devices::virtio::{Interrupt, VirtioDevice};
use crate::devices::{lock, MmioBus, PioBus};
use crate::event_loop::{stop_signal_fd, ConsoleInput, StopTrigger, StopWatcher};
use crate::loader;
use crate::timing::BootTimer;
use crate::vcpu::{Buses, Vcpu, VcpuControl, VcpuError, VcpuStop};

/// How a VM run ended.
#[derive(Debug)]
pub enum VmOutcome {
    /// The guest rebooted or powered off: the normal end of a cocoon VM.
    GuestStopped,
    /// A termination signal stopped the VM.
    Signalled(i32),
    /// The guest kernel panicked (and then rebooted, per `panic=`).
    GuestPanicked,
    /// A vCPU failed: triple fault, KVM internal error, failed entry.
    VcpuFailed(VcpuError),
}

impl VmOutcome {
    /// The VMM's exit status: 0 for a clean stop, 2 for a guest crash (1 is setup errors).
    pub fn exit_code(&self) -> i32 {
        match self {
            Self::GuestStopped | Self::Signalled(_) => 0,
            Self::GuestPanicked | Self::VcpuFailed(_) => 2,
        }
    }
}

/// Extra knobs that are not part of the VM's configuration.
#[derive(Debug, Default)]
pub struct RunOptions {
    pub boot_timer: Option<BootTimer>,
}

/// Opens /dev/kvm, turning the common failures into instructions.
pub fn open_kvm() -> Result<Kvm> {
    Kvm::new().map_err(|e| match e.errno() {
        libc::ENOENT => anyhow!(
            "KVM is not available: /dev/kvm does not exist (enable hardware virtualization, load kvm_intel or kvm_amd, or use the emulated KVM host of the tests)"
        ),
        libc::EACCES | libc::EPERM => anyhow!(
            "cannot open /dev/kvm: permission denied (add your user to the 'kvm' group or run as root)"
        ),
        _ => anyhow!("cannot open /dev/kvm: {e}"),
    })
}

/// True when /proc/cpuinfo advertises Intel VT-x or AMD-V.
pub fn cpu_has_virtualization() -> bool {
    std::fs::read_to_string("/proc/cpuinfo")
        .map(|s| {
            s.lines()
                .filter(|l| l.starts_with("flags"))
                .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"))
        })
        .unwrap_or(false)
}

fn check_capabilities(kvm: &Kvm) -> Result<()> {
    for (cap, name) in [
        (Cap::Irqchip, "KVM_CAP_IRQCHIP"),
        (Cap::Irqfd, "KVM_CAP_IRQFD"),
        (Cap::Ioeventfd, "KVM_CAP_IOEVENTFD"),
        (Cap::Pit2, "KVM_CAP_PIT2"),
        (Cap::UserMemory, "KVM_CAP_USER_MEMORY"),
        (Cap::SetTssAddr, "KVM_CAP_SET_TSS_ADDR"),
        (Cap::ExtCpuid, "KVM_CAP_EXT_CPUID"),
    ] {
        if !kvm.check_extension(cap) {
            return Err(anyhow!("this host's KVM lacks {name}, which cocoon needs"));
        }
    }
    Ok(())
}

fn create_memory(vm: &VmFd, size: u64) -> Result<GuestMemoryMmap> {
    let ranges: Vec<(GuestAddress, usize)> = ram_regions(size)
        .into_iter()
        .map(|(start, len)| (GuestAddress(start), len as usize))
        .collect();
    let mem = GuestMemoryMmap::from_ranges(&ranges)
        .with_context(|| format!("allocating {} MiB of guest memory", size >> 20))?;
    for (slot, region) in mem.iter().enumerate() {
        let host = region
            .get_host_address(MemoryRegionAddress(0))
            .context("guest memory region has no host mapping")?;
        let desc = kvm_userspace_memory_region {
            slot: slot as u32,
            flags: 0,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: host as u64,
        };
        // SAFETY: the region is a live mapping owned by `mem`, which outlives the VM: it is kept
        // by `Vm` until after every vCPU thread has been joined.
        unsafe { vm.set_user_memory_region(desc) }
            .with_context(|| format!("registering guest memory slot {slot} with KVM"))?;
    }
    Ok(mem)
}

/// The guest's images, read (and digest-checked) before any KVM object exists.
struct GuestImages {
    kernel: Vec<u8>,
    initrd: Option<Vec<u8>>,
}

fn read_images(config: &VmConfig) -> Result<GuestImages> {
    let kernel = loader::read_image("kernel", &config.kernel, config.kernel_sha256.as_deref())?;
    if loader::kernel_format(&kernel).is_none() {
        return Err(loader::LoadError::UnknownKernelFormat {
            path: config.kernel.display().to_string(),
        }
        .into());
    }
    let initrd = match &config.initrd {
        Some(path) => Some(loader::read_image(
            "initrd",
            path,
            config.initrd_sha256.as_deref(),
        )?),
        None => None,
    };
    Ok(GuestImages { kernel, initrd })
}

vmm_sys_util::ioctl_io_nr!(KVM_REINJECT_CONTROL, kvm_bindings::KVMIO, 0x71);

/// Turns off the PIT's catch-up of missed ticks. A guest that was descheduled for a while would
/// otherwise get a burst of stale timer interrupts on its return; with a stalled or slow host (seen
/// under nested virtualization) KVM's PIT worker and the vCPU then livelock the host kernel. Guest
/// time comes from kvm-clock, not from counting PIT ticks, so nothing is lost.
fn disable_pit_reinjection(kvm: &Kvm, vm: &VmFd) -> Result<()> {
    if !kvm.check_extension(Cap::ReinjectControl) {
        return Ok(());
    }
    let control = kvm_bindings::kvm_reinject_control {
        pit_reinject: 0,
        ..Default::default()
    };
    // SAFETY: KVM_REINJECT_CONTROL reads a kvm_reinject_control, which `control` is and which
    // outlives the call; the VM fd is valid for the duration.
    let ret = unsafe { vmm_sys_util::ioctl::ioctl_with_ref(vm, KVM_REINJECT_CONTROL(), &control) };
    if ret < 0 {
        return Err(anyhow!(
            "KVM_REINJECT_CONTROL: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// Loads kernel, initramfs and command line, and writes the zero page, MP table and boot tables.
/// Returns the kernel's 64-bit entry point.
fn load_guest(
    config: &VmConfig,
    cmdline: &str,
    images: GuestImages,
    mem: &GuestMemoryMmap,
) -> Result<u64> {
    let kernel = loader::load_kernel(mem, &images.kernel, &config.kernel)?;
    tracing::info!(
        "loaded {:?} kernel {}, entry {:#x}",
        kernel.format,
        config.kernel.display(),
        kernel.entry
    );
    let initrd = match &images.initrd {
        Some(bytes) => Some(loader::load_initrd(mem, bytes, &kernel)?),
        None => None,
    };
    let cmdline_size = loader::load_command_line(mem, cmdline)?;
    bootparams::write_zero_page(
        mem,
        kernel.setup_header,
        cmdline_size,
        initrd,
        config.memory_bytes(),
    )?;
    mptable::setup(mem, EBDA_START, HIMEM_START, config.vcpus)?;
    regs::write_boot_tables(mem)?;
    Ok(kernel.entry)
}

/// The virtio devices of a VM: their MMIO bus, their queue handlers for the event loop, and the
/// `virtio_mmio.device=` entries that announce them on the kernel command line.
struct VirtioDevices {
    bus: MmioBus,
    handlers: Vec<Handler>,
    cmdline: String,
    count: usize,
    /// The empty disk slots, for the API socket to fill.
    slots: Vec<BlockSlot>,
}

/// First IO-APIC pin for virtio devices (0-4 are the PIT, keyboard, cascade, COM2, COM1).
const FIRST_DEVICE_IRQ: u32 = 5;

type Handler = Arc<Mutex<dyn MutEventSubscriber + Send>>;

impl VirtioDevices {
    /// Puts `device` behind the next virtio-mmio window, with an irqfd for its interrupt and an
    /// ioeventfd per queue, so neither costs a trip through the VMM's vCPU loop. `make_handler`
    /// gets the queue eventfds and returns the event-loop half of the device.
    fn attach(
        &mut self,
        vm: &VmFd,
        mem: &GuestMemoryMmap,
        name: &str,
        device: Box<dyn VirtioDevice>,
        make_handler: impl FnOnce(Vec<EventFd>) -> Handler,
    ) -> Result<()> {
        let index = self.count;
        let base = MMIO_DEVICES_START + index as u64 * MMIO_WINDOW_SIZE;
        let irq = FIRST_DEVICE_IRQ + index as u32;
        let irqfd = EventFd::new(libc::EFD_NONBLOCK).context("creating a device irqfd")?;
        vm.register_irqfd(&irqfd, irq)
            .with_context(|| format!("registering the irqfd of {name}"))?;
        let interrupt = Arc::new(Interrupt::new(irqfd));
        let transport = MmioTransport::new(device, mem.clone(), interrupt)?;
        let mut events = Vec::new();
        for (queue, event) in transport.queue_events().iter().enumerate() {
            vm.register_ioevent(
                event,
                &IoEventAddress::Mmio(base + QUEUE_NOTIFY_OFFSET),
                queue as u32,
            )
            .with_context(|| format!("registering a queue ioeventfd of {name}"))?;
            events.push(event.try_clone().context("cloning a queue eventfd")?);
        }
        self.handlers.push(make_handler(events));
        self.bus
            .insert(base, MMIO_WINDOW_SIZE, Arc::new(Mutex::new(transport)))?;
        self.cmdline.push_str(&format!(
            " virtio_mmio.device={}K@{base:#x}:{irq}",
            MMIO_WINDOW_SIZE >> 10
        ));
        self.count += 1;
        Ok(())
    }
}

/// Attaches the configured disks (virtio-blk, in order: vda, vdb, ...), then the empty disk slots,
/// then the vsock device.
fn attach_virtio_devices(
    vm: &VmFd,
    mem: &GuestMemoryMmap,
    config: &VmConfig,
) -> Result<VirtioDevices> {
    let mut devices = VirtioDevices {
        bus: MmioBus::default(),
        handlers: Vec::new(),
        cmdline: String::new(),
        count: 0,
        slots: Vec::new(),
    };
    let disks = config.disks.iter().map(Some);
    let slots = (0..config.disk_slots).map(|_| None);
    for (index, disk) in disks.chain(slots).enumerate() {
        let id = format!("cocoon-disk{index}");
        let block = match disk {
            Some(disk) => Block::open(&disk.path, disk.read_only, &id)?,
            None => {
                let block = Block::empty_slot(&id);
                devices.slots.push(block.slot());
                block
            }
        };
        let handle = block.handle();
        devices.attach(
            vm,
            mem,
            &format!("disk {index}"),
            Box::new(block),
            |mut events| Arc::new(Mutex::new(handle.queue_handler(events.remove(0)))),
        )?;
    }
    if let Some(vsock) = &config.vsock {
        let (device, handler) = Vsock::new(vsock.cid.into(), &vsock.uds)?;
        devices.attach(vm, mem, "the vsock device", Box::new(device), |events| {
            Arc::new(Mutex::new(handler.build(events)))
        })?;
    }
    Ok(devices)
}

/// Wakes the event loop when a vCPU thread ends, however it ends (a panic included).
struct NotifyOnExit(EventFd);

impl Drop for NotifyOnExit {
    fn drop(&mut self) {
        let _ = self.0.write(1);
    }
}

extern "C" fn kick_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// Builds the VM described by `config` and runs it until the guest stops, a vCPU fails, or a stop
/// signal arrives.
pub fn run(config: &VmConfig, options: RunOptions) -> Result<VmOutcome> {
    if let Some(timer) = &options.boot_timer {
        timer.mark("vmm-start");
    }
    let mark = |milestone: &str| {
        if let Some(timer) = &options.boot_timer {
            timer.mark(milestone);
        }
    };
    config.validate()?;
    let images = read_images(config)?;
    mark("images-read");
    let kvm = open_kvm()?;
    check_capabilities(&kvm)?;
    if !cpu_has_virtualization() {
        tracing::warn!(
            "this CPU has no vmx/svm: /dev/kvm here is not hardware-backed (nested or paravirtual, e.g. PVM) and may run a Linux guest very slowly or not at all"
        );
    }
    let max_vcpus = kvm.get_max_vcpus();
    if usize::from(config.vcpus) > max_vcpus {
        return Err(anyhow!(
            "--vcpus {} is more than this host's KVM allows ({max_vcpus})",
            config.vcpus
        ));
    }

    let vm = kvm.create_vm().context("creating the VM (KVM_CREATE_VM)")?;
    vm.set_tss_address(KVM_TSS_ADDRESS)
        .context("KVM_SET_TSS_ADDR")?;
    vm.create_irq_chip()
        .context("creating the in-kernel irqchip")?;
    vm.create_pit2(kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    })
    .context("creating the in-kernel PIT")?;
    disable_pit_reinjection(&kvm, &vm)?;
    mark("vm-created");

    let mem = create_memory(&vm, config.memory_bytes())?;
    mark("memory-ready");
    let virtio = attach_virtio_devices(&vm, &mem, config)?;
    let cmdline = format!("{}{}", config.cmdline, virtio.cmdline);
    if cmdline.len() >= CMDLINE_MAX_SIZE {
        return Err(anyhow!(
            "the kernel command line with the virtio devices is {} bytes; the limit is {} (shorten --cmdline or attach fewer disks)",
            cmdline.len(),
            CMDLINE_MAX_SIZE - 1
        ));
    }
    let entry = load_guest(config, &cmdline, images, &mem)?;
    mark("guest-loaded");

    // Devices.
    let sink = ConsoleSink::open(&config.console).context("opening the console output")?;
    let panicked = sink.panic_flag();
    let serial_irq = EventFd::new(libc::EFD_NONBLOCK).context("creating the serial irqfd")?;
    vm.register_irqfd(&serial_irq, COM1_IRQ)
        .context("registering the serial irqfd")?;
    let serial = Arc::new(Mutex::new(SerialDevice::new(serial_irq, sink)));
    let mut pio = PioBus::default();
    pio.insert(COM1_BASE.into(), COM1_LEN.into(), serial.clone())?;
    pio.insert(
        I8042_BASE.into(),
        I8042_LEN.into(),
        Arc::new(Mutex::new(I8042)),
    )?;
    let buses = Buses {
        pio: Arc::new(pio),
        mmio: Arc::new(virtio.bus),
    };

    // vCPUs.
    let supported_cpuid = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .context("KVM_GET_SUPPORTED_CPUID")?;
    let control = Arc::new(VcpuControl::default());
    let vcpus = (0..config.vcpus)
        .map(|id| {
            Vcpu::new(
                &vm,
                id,
                config.vcpus,
                &supported_cpuid,
                entry,
                buses.clone(),
                control.clone(),
            )
        })
        .collect::<Result<Vec<_>, _>>()?;
    mark("vcpus-configured");

    // Stop sources; the signal mask is inherited by the vCPU threads spawned below.
    let signals = stop_signal_fd().context("setting up SIGTERM/SIGINT handling")?;
    register_signal_handler(SIGRTMIN(), kick_handler)
        .map_err(|e| anyhow!("installing the vCPU kick signal handler: {e}"))?;
    let vcpu_exit = EventFd::new(libc::EFD_NONBLOCK).context("creating the vCPU exit eventfd")?;
    let watcher = Arc::new(Mutex::new(StopWatcher::new(
        vcpu_exit.try_clone().context("cloning an eventfd")?,
        signals,
    )));
    let mut events: EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>> =
        EventManager::new().map_err(|e| anyhow!("creating the event loop: {e:?}"))?;
    events.add_subscriber(watcher.clone());
    for handler in virtio.handlers {
        events.add_subscriber(handler);
    }
    if config.console == ConsoleConfig::Stdout && ConsoleInput::stdin_is_pollable() {
        events.add_subscriber(Arc::new(Mutex::new(ConsoleInput::new(serial.clone()))));
    }

    // Started after the stop signals are blocked, so its thread inherits the mask; the socket goes
    // when this function returns.
    let _api = config
        .api_socket
        .as_deref()
        .map(|path| ApiServer::start(path, Api::new(virtio.slots)))
        .transpose()?;

    let (results_tx, results_rx) = mpsc::channel();
    let timer = Arc::new(options.boot_timer);
    let mut threads: Vec<JoinHandle<()>> = Vec::new();
    for mut vcpu in vcpus {
        let tx = results_tx.clone();
        let exit = vcpu_exit.try_clone().context("cloning an eventfd")?;
        let timer = timer.clone();
        let handle = std::thread::Builder::new()
            .name(format!("vcpu{}", vcpu.id()))
            .spawn(move || {
                let _notify = NotifyOnExit(exit);
                let result = vcpu.run(timer.as_ref().as_ref());
                let _ = tx.send(result);
            })
            .context("spawning a vCPU thread")?;
        threads.push(handle);
    }
    drop(results_tx);

    let trigger = loop {
        if let Err(e) = events.run() {
            tracing::error!("event loop: {e:?}");
        }
        let mut watcher = lock(&watcher);
        if std::mem::take(&mut watcher.dump_requested) {
            control.dump_generation.fetch_add(1, Ordering::AcqRel);
            // Twice: a kick that lands just before a thread re-enters KVM_RUN is lost.
            for _ in 0..2 {
                for t in threads.iter().filter(|t| !t.is_finished()) {
                    let _ = t.kill(SIGRTMIN());
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        if let Some(trigger) = watcher.trigger {
            break trigger;
        }
    };

    // Stop every vCPU: set the flag, then kick threads out of KVM_RUN until all have returned.
    control.stop.store(true, Ordering::Release);
    while threads.iter().any(|t| !t.is_finished()) {
        for t in threads.iter().filter(|t| !t.is_finished()) {
            let _ = t.kill(SIGRTMIN());
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    for t in threads {
        let _ = t.join();
    }

    let mut first_failure = None;
    let mut stopped = false;
    for result in results_rx.try_iter() {
        match result {
            Ok(VcpuStop::Reset | VcpuStop::PowerOff) => stopped = true,
            Ok(VcpuStop::Requested) => {}
            Err(e) => {
                first_failure.get_or_insert(e);
            }
        }
    }
    drop(vm);
    drop(mem);
    Ok(match (trigger, first_failure) {
        (_, Some(e)) => VmOutcome::VcpuFailed(e),
        _ if panicked.load(Ordering::SeqCst) => VmOutcome::GuestPanicked,
        (StopTrigger::Signal(sig), _) if !stopped => VmOutcome::Signalled(sig),
        _ => VmOutcome::GuestStopped,
    })
}
