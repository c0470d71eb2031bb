//! One vCPU: its KVM file descriptor, its boot state and the loop that runs it and serves its exits.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use kvm_bindings::{
    CpuId, KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN,
};
use kvm_ioctls::{VcpuExit, VcpuFd, VmFd};

use crate::arch::x86_64::{cpuid, regs};
use crate::devices::{DeviceAction, MmioBus, PioBus};
use crate::timing::BootTimer;

/// Why a vCPU stopped running without an error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VcpuStop {
    /// The guest reset the machine (i8042 reset line, or KVM's reset event): "VM stopped".
    Reset,
    /// The guest powered off (KVM's shutdown event) or halted with nothing left to wake it.
    PowerOff,
    /// The VMM asked the vCPU to stop.
    Requested,
}

/// A vCPU failed: the guest crashed or KVM could not run it. `state` holds the register dump.
#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    #[error("vCPU {id}: guest triple fault (KVM_EXIT_SHUTDOWN); {state}")]
    TripleFault { id: u8, state: String },
    #[error("vCPU {id}: KVM internal error, suberror {suberror}; {state}")]
    InternalError {
        id: u8,
        suberror: u32,
        state: String,
    },
    #[error("vCPU {id}: KVM could not enter the guest (hardware reason {reason:#x}); {state}")]
    FailEntry { id: u8, reason: u64, state: String },
    #[error("vCPU {id}: the guest reported a crash (KVM system event); {state}")]
    GuestCrash { id: u8, state: String },
    #[error("vCPU {id}: unexpected exit {exit}; {state}")]
    UnexpectedExit { id: u8, exit: String, state: String },
    #[error("vCPU {id}: KVM_RUN failed: {source}")]
    Run { id: u8, source: kvm_ioctls::Error },
}

/// Failure to create or configure a vCPU.
#[derive(Debug, thiserror::Error)]
pub enum VcpuSetupError {
    #[error("creating vCPU {id}: {source}")]
    Create { id: u8, source: kvm_ioctls::Error },
    #[error("setting the CPUID of vCPU {id}: {source}")]
    Cpuid { id: u8, source: kvm_ioctls::Error },
    #[error("configuring vCPU {id}: {source}")]
    Regs { id: u8, source: regs::RegsError },
}

/// The buses a vCPU's IO and MMIO exits go to, shared by all vCPUs.
#[derive(Clone)]
pub struct Buses {
    pub pio: Arc<PioBus>,
    pub mmio: Arc<MmioBus>,
}

/// What the VMM asks of running vCPUs: to stop, or to print their registers (each request bumps the
/// dump generation; a vCPU prints once per generation). Threads are kicked out of KVM_RUN to see it.
#[derive(Default)]
pub struct VcpuControl {
    pub stop: AtomicBool,
    pub dump_generation: AtomicU64,
}

pub struct Vcpu {
    id: u8,
    fd: VcpuFd,
    buses: Buses,
    control: Arc<VcpuControl>,
    dumps_seen: u64,
}

impl Vcpu {
    /// Creates vCPU `id` of `count`, with its topology-patched CPUID and boot state. vCPU 0 is the
    /// boot CPU and starts at `entry`; the others wait for the boot CPU's startup IPI.
    pub fn new(
        vm: &VmFd,
        id: u8,
        count: u8,
        supported_cpuid: &CpuId,
        entry: u64,
        buses: Buses,
        control: Arc<VcpuControl>,
    ) -> Result<Self, VcpuSetupError> {
        let fd = vm
            .create_vcpu(u64::from(id))
            .map_err(|source| VcpuSetupError::Create { id, source })?;
        let mut cpuid = supported_cpuid.clone();
        cpuid::patch_topology(&mut cpuid, id, count);
        fd.set_cpuid2(&cpuid)
            .map_err(|source| VcpuSetupError::Cpuid { id, source })?;
        regs::setup_common(&fd).map_err(|source| VcpuSetupError::Regs { id, source })?;
        if id == 0 {
            regs::setup_boot_cpu(&fd, entry)
                .map_err(|source| VcpuSetupError::Regs { id, source })?;
        }
        Ok(Self {
            id,
            fd,
            buses,
            control,
            dumps_seen: 0,
        })
    }

    pub fn id(&self) -> u8 {
        self.id
    }

    fn state(&self) -> String {
        regs::describe_state(&self.fd)
    }

    /// Runs the guest until it stops, fails, or the VMM sets the stop flag (and kicks this thread
    /// with a signal so KVM_RUN returns).
    pub fn run(&mut self, timer: Option<&BootTimer>) -> Result<VcpuStop, VcpuError> {
        let id = self.id;
        let mut first_entry = true;
        loop {
            if self.control.stop.load(Ordering::Acquire) {
                return Ok(VcpuStop::Requested);
            }
            let dumps = self.control.dump_generation.load(Ordering::Acquire);
            if dumps != self.dumps_seen {
                self.dumps_seen = dumps;
                eprintln!("cocoon-vmm: vCPU {id}: {}", self.state());
            }
            if first_entry {
                first_entry = false;
                if let (Some(timer), 0) = (timer, id) {
                    timer.mark("first-vcpu-entry");
                }
            }
            let exit = match self.fd.run() {
                Ok(exit) => exit,
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => continue,
                Err(source) => return Err(VcpuError::Run { id, source }),
            };
            match exit {
                VcpuExit::IoIn(port, data) => self.buses.pio.read(port, data),
                VcpuExit::IoOut(port, data) => {
                    if self.buses.pio.write(port, data) == DeviceAction::Reset {
                        return Ok(VcpuStop::Reset);
                    }
                }
                VcpuExit::MmioRead(addr, data) => self.buses.mmio.read(addr, data),
                VcpuExit::MmioWrite(addr, data) => self.buses.mmio.write(addr, data),
                VcpuExit::Hlt => return Ok(VcpuStop::PowerOff),
                VcpuExit::Intr => {}
                VcpuExit::Shutdown => {
                    return Err(VcpuError::TripleFault {
                        id,
                        state: self.state(),
                    })
                }
                VcpuExit::SystemEvent(kind, _) => {
                    return match kind {
                        KVM_SYSTEM_EVENT_RESET => Ok(VcpuStop::Reset),
                        KVM_SYSTEM_EVENT_SHUTDOWN => Ok(VcpuStop::PowerOff),
                        KVM_SYSTEM_EVENT_CRASH => Err(VcpuError::GuestCrash {
                            id,
                            state: self.state(),
                        }),
                        other => Err(VcpuError::UnexpectedExit {
                            id,
                            exit: format!("system event {other}"),
                            state: self.state(),
                        }),
                    }
                }
                VcpuExit::FailEntry(reason, _) => {
                    return Err(VcpuError::FailEntry {
                        id,
                        reason,
                        state: self.state(),
                    })
                }
                VcpuExit::InternalError => {
                    // SAFETY: after KVM_EXIT_INTERNAL_ERROR the kernel filled the `internal` member
                    // of the kvm_run union; reading a u32 from it is valid.
                    let suberror =
                        unsafe { self.fd.get_kvm_run().__bindgen_anon_1.internal.suberror };
                    return Err(VcpuError::InternalError {
                        id,
                        suberror,
                        state: self.state(),
                    });
                }
                other => {
                    let exit = format!("{other:?}");
                    return Err(VcpuError::UnexpectedExit {
                        id,
                        exit,
                        state: self.state(),
                    });
                }
            }
        }
    }
}
