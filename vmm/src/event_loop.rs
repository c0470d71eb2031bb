//! Subscribers of the VMM's event loop (event-manager): the stop sources (a vCPU finished, or a
//! termination signal arrived) and the console's input from the VMM's standard input.

use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use vmm_sys_util::eventfd::EventFd;

use crate::devices::serial::SerialDevice;
use cocoon_common::lock;

/// Signals that stop the VM cleanly. They are blocked in every thread and read from a signalfd.
pub const STOP_SIGNALS: [Signal; 3] = [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP];
/// Signal that asks every vCPU to print its registers (for a guest that seems stuck).
pub const DUMP_SIGNAL: Signal = Signal::SIGUSR1;

/// What made the event loop stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopTrigger {
    VcpuExited,
    Signal(i32),
}

/// Blocks the stop signals in the calling thread (and every thread it spawns afterwards) and opens
/// a signalfd for them.
pub fn stop_signal_fd() -> nix::Result<SignalFd> {
    let mut mask = SigSet::empty();
    for s in STOP_SIGNALS {
        mask.add(s);
    }
    mask.add(DUMP_SIGNAL);
    mask.thread_block()?;
    SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
}

pub struct StopWatcher {
    vcpu_exit: EventFd,
    signals: SignalFd,
    pub trigger: Option<StopTrigger>,
    /// A register dump was asked for (SIGUSR1) and not yet carried out.
    pub dump_requested: bool,
}

impl StopWatcher {
    pub fn new(vcpu_exit: EventFd, signals: SignalFd) -> Self {
        Self {
            vcpu_exit,
            signals,
            trigger: None,
            dump_requested: false,
        }
    }
}

impl MutEventSubscriber for StopWatcher {
    fn init(&mut self, ops: &mut EventOps) {
        for fd in [self.vcpu_exit.as_raw_fd(), self.signals.as_raw_fd()] {
            if let Err(e) = ops.add(Events::new_raw(fd, EventSet::IN)) {
                // Without these the VMM could not stop: make that loud, and stop at once.
                tracing::error!("cannot watch stop events: {e:?}");
                self.trigger = Some(StopTrigger::VcpuExited);
            }
        }
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        if events.fd() == self.vcpu_exit.as_raw_fd() {
            let _ = self.vcpu_exit.read();
            self.trigger.get_or_insert(StopTrigger::VcpuExited);
        } else if let Ok(Some(info)) = self.signals.read_signal() {
            let signo = info.ssi_signo as i32;
            if signo == DUMP_SIGNAL as i32 {
                self.dump_requested = true;
            } else {
                self.trigger.get_or_insert(StopTrigger::Signal(signo));
            }
        }
    }
}

/// Forwards the VMM's standard input to the guest's serial console.
pub struct ConsoleInput {
    serial: Arc<Mutex<SerialDevice>>,
}

impl ConsoleInput {
    pub fn new(serial: Arc<Mutex<SerialDevice>>) -> Self {
        Self { serial }
    }

    /// Standard input can be watched by epoll only when it is a terminal, pipe or socket.
    pub fn stdin_is_pollable() -> bool {
        match nix::sys::stat::fstat(libc::STDIN_FILENO) {
            Ok(st) => {
                let kind = st.st_mode & libc::S_IFMT;
                let tty = nix::unistd::isatty(libc::STDIN_FILENO).unwrap_or(false);
                tty || kind == libc::S_IFIFO || kind == libc::S_IFSOCK
            }
            Err(_) => false,
        }
    }
}

impl MutEventSubscriber for ConsoleInput {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new_raw(libc::STDIN_FILENO, EventSet::IN)) {
            tracing::warn!("console input disabled: {e:?}");
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let mut buf = [0u8; 64];
        match nix::unistd::read(libc::STDIN_FILENO, &mut buf) {
            Ok(0) | Err(_) => {
                let _ = ops.remove(events);
            }
            Ok(n) => {
                let taken = lock(&self.serial).enqueue_input(&buf[..n]);
                if taken < n {
                    tracing::debug!(
                        "console input: guest FIFO full, dropped {} bytes",
                        n - taken
                    );
                }
            }
        }
    }
}
