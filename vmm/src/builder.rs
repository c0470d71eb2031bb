//! Builds a [`Vmm`] from a validated [`VmConfig`]: reads and checks the images, opens KVM, creates
//! the VM, its memory and devices, loads the guest with its boot tables, and configures the vCPUs.
//! Nothing runs yet (no vCPU thread, no API socket): what comes between [`build`] and
//! [`Vmm::run`] (a seccomp filter, a snapshot restore) sees a complete VM. Each failure is a
//! [`BuildError`] whose message names the fix.

use std::sync::{Arc, Mutex};

use event_manager::{EventManager, SubscriberOps};
use kvm_bindings::KVM_MAX_CPUID_ENTRIES;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::signal::{register_signal_handler, SIGRTMIN};

use crate::api::Api;
use crate::arch::x86_64::bootparams::{self, BootParamsError};
use crate::arch::x86_64::layout::{CMDLINE_MAX_SIZE, EBDA_START, HIMEM_START};
use crate::arch::x86_64::mptable::{self, MptableError};
use crate::arch::x86_64::regs::{self, RegsError};
use crate::config::{self, ConfigError, ConsoleConfig, VmConfig};
use crate::device_manager::{DeviceError, DeviceManager, Handler};
use crate::event_loop::{stop_signal_fd, ConsoleInput, StopWatcher};
use crate::loader::{self, LoadError};
use crate::timing::BootTimer;
use crate::vmm::Vmm;
use crate::vstate::kvm::{self, KvmError};
use crate::vstate::memory::{self, MemoryError};
use crate::vstate::vcpu::{Vcpu, VcpuControl, VcpuSetupError};
use crate::vstate::vm::{self, VmCreateError};

/// Extra knobs that are not part of the VM's configuration.
#[derive(Debug, Default)]
pub struct RunOptions {
    pub boot_timer: Option<BootTimer>,
}

/// Why a VM could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error(transparent)]
    Kvm(#[from] KvmError),
    #[error(transparent)]
    Vm(#[from] VmCreateError),
    #[error(transparent)]
    Memory(#[from] MemoryError),
    #[error(transparent)]
    Device(#[from] DeviceError),
    #[error("the kernel command line with the virtio devices is {len} bytes; the limit is {max} (shorten --cmdline or attach fewer disks)", max = CMDLINE_MAX_SIZE - 1)]
    CmdlineTooLong { len: usize },
    #[error(transparent)]
    BootParams(#[from] BootParamsError),
    #[error(transparent)]
    Mptable(#[from] MptableError),
    #[error(transparent)]
    BootTables(#[from] RegsError),
    #[error("KVM_GET_SUPPORTED_CPUID: {0}")]
    Cpuid(kvm_ioctls::Error),
    #[error(transparent)]
    Vcpu(#[from] VcpuSetupError),
    #[error("{what}: {reason}")]
    Setup { what: &'static str, reason: String },
}

fn setup<E: std::fmt::Display>(what: &'static str) -> impl FnOnce(E) -> BuildError {
    move |e| BuildError::Setup {
        what,
        reason: e.to_string(),
    }
}

/// The guest's images, read (and digest-checked) before any KVM object exists.
struct GuestImages {
    kernel: Vec<u8>,
    initrd: Option<Vec<u8>>,
}

fn read_images(config: &VmConfig) -> Result<GuestImages, LoadError> {
    let kernel = loader::read_image("kernel", &config.kernel, config.kernel_sha256.as_deref())?;
    if loader::kernel_format(&kernel).is_none() {
        return Err(LoadError::UnknownKernelFormat {
            path: config.kernel.display().to_string(),
        });
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

/// Loads kernel, initramfs and command line, and writes the zero page, MP table and boot tables.
/// Returns the kernel's 64-bit entry point.
fn load_guest(
    config: &VmConfig,
    cmdline: &str,
    images: GuestImages,
    mem: &GuestMemoryMmap,
) -> Result<u64, BuildError> {
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

extern "C" fn kick_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// Builds the VM `config` describes, ready to [`run`](Vmm::run). Must be called on the thread
/// that will run it: the stop signals are blocked here (and stay blocked if the `Vmm` is dropped
/// unrun), and the threads `run` starts inherit the mask.
pub fn build(config: &VmConfig, options: RunOptions) -> Result<Vmm, BuildError> {
    let mark = |milestone: &str| {
        if let Some(timer) = &options.boot_timer {
            timer.mark(milestone);
        }
    };
    mark("vmm-start");
    config::validate(config)?;
    let images = read_images(config)?;
    mark("images-read");
    let kvm = kvm::open()?;
    kvm::check(&kvm, config.vcpus)?;
    if !cocoon_common::has_hardware_virtualization() {
        tracing::warn!(
            "this CPU has no vmx/svm: /dev/kvm here is not hardware-backed (nested or paravirtual, e.g. PVM) and may run a Linux guest very slowly or not at all"
        );
    }
    let vm = vm::create(&kvm)?;
    mark("vm-created");

    let mem = memory::create(&vm, config.memory_bytes())?;
    mark("memory-ready");
    let mut devices = DeviceManager::default();
    devices.attach_virtio_devices(&vm, &mem, config)?;
    let cmdline = format!("{}{}", config.cmdline, devices.cmdline_entries());
    if cmdline.len() >= CMDLINE_MAX_SIZE {
        return Err(BuildError::CmdlineTooLong { len: cmdline.len() });
    }
    let entry = load_guest(config, &cmdline, images, &mem)?;
    mark("guest-loaded");
    let legacy = devices.attach_legacy_devices(&vm, &config.console, config.console_max_bytes)?;
    let devices = devices.finish();

    let supported_cpuid = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(BuildError::Cpuid)?;
    let control = Arc::new(VcpuControl::default());
    let vcpus = (0..config.vcpus)
        .map(|id| {
            Vcpu::new(
                &vm,
                id,
                config.vcpus,
                &supported_cpuid,
                entry,
                devices.buses.clone(),
                control.clone(),
            )
        })
        .collect::<Result<Vec<_>, _>>()?;
    mark("vcpus-configured");

    // Stop sources; the signal mask is inherited by every thread started from here on.
    let signals = stop_signal_fd().map_err(setup("setting up SIGTERM/SIGINT handling"))?;
    register_signal_handler(SIGRTMIN(), kick_handler)
        .map_err(setup("installing the vCPU kick signal handler"))?;
    let vcpu_exit =
        EventFd::new(libc::EFD_NONBLOCK).map_err(setup("creating the vCPU exit eventfd"))?;
    let watcher = Arc::new(Mutex::new(StopWatcher::new(
        vcpu_exit.try_clone().map_err(setup("cloning an eventfd"))?,
        signals,
    )));
    let mut events: EventManager<Handler> =
        EventManager::new().map_err(|e| setup("creating the event loop")(format!("{e:?}")))?;
    events.add_subscriber(watcher.clone());
    for handler in devices.handlers {
        events.add_subscriber(handler);
    }
    if config.console == ConsoleConfig::Stdout && ConsoleInput::stdin_is_pollable() {
        events.add_subscriber(Arc::new(Mutex::new(ConsoleInput::new(legacy.serial))));
    }
    let api = config
        .api_socket
        .clone()
        .map(|path| (path, Api::new(devices.slots)));

    Ok(Vmm::new(crate::vmm::VmmParts {
        vm,
        mem,
        vcpus,
        control,
        events,
        watcher,
        vcpu_exit,
        panicked: legacy.panicked,
        api,
        boot_timer: options.boot_timer,
    }))
}
