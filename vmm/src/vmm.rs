//! A built VM and its run: one thread per vCPU, the event loop (device queues, backend sockets,
//! stop sources) on the calling thread, and the [`VmOutcome`] once every vCPU has stopped. A
//! `Vmm` exists between the builder's `build` and [`run`](Vmm::run); pause, resume and
//! snapshot belong here, on that value.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use cocoon_common::lock;
use event_manager::EventManager;
use kvm_ioctls::VmFd;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::signal::{Killable, SIGRTMIN};

use crate::api::{Api, ApiError, ApiServer};
use crate::device_manager::Handler;
use crate::event_loop::{StopTrigger, StopWatcher};
use crate::timing::BootTimer;
use crate::vstate::vcpu::{Vcpu, VcpuControl, VcpuError, VcpuStop};

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

/// The VM could not be started.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Api(#[from] ApiError),
    #[error("{what}: {reason}")]
    Thread {
        what: &'static str,
        reason: std::io::Error,
    },
}

/// What the builder hands over.
pub(crate) struct VmmParts {
    pub vm: VmFd,
    pub mem: GuestMemoryMmap,
    pub vcpus: Vec<Vcpu>,
    pub control: Arc<VcpuControl>,
    pub events: EventManager<Handler>,
    pub watcher: Arc<Mutex<StopWatcher>>,
    pub vcpu_exit: EventFd,
    pub panicked: Arc<AtomicBool>,
    /// The API socket to serve, and what it serves (started by `run`, before the vCPUs).
    pub api: Option<(PathBuf, Api)>,
    pub boot_timer: Option<BootTimer>,
}

/// A VM that is built and not yet running (or, inside [`run`](Self::run), running).
pub struct Vmm {
    parts: VmmParts,
}

/// Wakes the event loop when a vCPU thread ends, however it ends (a panic included).
struct NotifyOnExit(EventFd);

impl Drop for NotifyOnExit {
    fn drop(&mut self) {
        let _ = self.0.write(1);
    }
}

/// Sets the stop flag, then kicks threads out of KVM_RUN until all have returned, and joins them.
fn stop_vcpus(control: &VcpuControl, threads: Vec<JoinHandle<()>>) {
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
}

impl Vmm {
    pub(crate) fn new(parts: VmmParts) -> Self {
        Self { parts }
    }

    /// Starts the vCPUs and serves the VM until the guest stops, a vCPU fails, or a stop signal
    /// arrives; returns once every vCPU thread has been joined.
    pub fn run(self) -> Result<VmOutcome, RunError> {
        let VmmParts {
            vm,
            mem,
            vcpus,
            control,
            mut events,
            watcher,
            vcpu_exit,
            panicked,
            api,
            boot_timer,
        } = self.parts;
        // Its thread inherits the stop signals' mask, as the vCPU threads do; the socket goes
        // when the run ends.
        let api = api
            .map(|(path, api)| ApiServer::start(&path, api))
            .transpose()?;
        let (results_tx, results_rx) = mpsc::channel();
        let timer = Arc::new(boot_timer);
        let mut threads: Vec<JoinHandle<()>> = Vec::new();
        for mut vcpu in vcpus {
            let tx = results_tx.clone();
            let started = vcpu_exit
                .try_clone()
                .map_err(|reason| RunError::Thread {
                    what: "cloning an eventfd",
                    reason,
                })
                .and_then(|exit| {
                    let timer = timer.clone();
                    std::thread::Builder::new()
                        .name(format!("vcpu{}", vcpu.id()))
                        .spawn(move || {
                            let _notify = NotifyOnExit(exit);
                            let result = vcpu.run(timer.as_ref().as_ref());
                            let _ = tx.send(result);
                        })
                        .map_err(|reason| RunError::Thread {
                            what: "spawning a vCPU thread",
                            reason,
                        })
                });
            match started {
                Ok(handle) => threads.push(handle),
                Err(e) => {
                    stop_vcpus(&control, threads);
                    return Err(e);
                }
            }
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
        stop_vcpus(&control, threads);

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
        drop(api);
        Ok(match (trigger, first_failure) {
            (_, Some(e)) => VmOutcome::VcpuFailed(e),
            _ if panicked.load(Ordering::SeqCst) => VmOutcome::GuestPanicked,
            (StopTrigger::Signal(sig), _) if !stopped => VmOutcome::Signalled(sig),
            _ => VmOutcome::GuestStopped,
        })
    }
}
