//! Collects every child that exits — the containers' processes (their parent is the agent) and any
//! orphan the guest hands to PID 1 — and hands exit statuses to whoever waits for them.
//!
//! The spawn helper (`crate::spawner`) is the agent's child, waited for by pid by whoever ran it.
//! Spawns run under [`Reaper::spawn_lock`], which the reaper also takes before reaping, so it
//! never takes the helper's status, and a process the helper made that exits at once (and comes
//! to the agent when the helper exits) is registered before its status can arrive.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use cocoon_common::{lock, ExitCell};
use cocoon_protocol::ExitStatus;
use nix::errno::Errno;
use nix::sys::wait::{waitid, waitpid, Id, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

type ExitListener = Box<dyn Fn(i32, ExitStatus) + Send + Sync>;

#[derive(Default)]
pub struct Reaper {
    spawn_lock: Mutex<()>,
    watched: Mutex<HashMap<i32, Arc<ExitCell<ExitStatus>>>>,
    listener: Mutex<Option<ExitListener>>,
}

impl Reaper {
    /// Held while creating processes (see the module documentation).
    pub fn spawn_lock(&self) -> MutexGuard<'_, ()> {
        lock(&self.spawn_lock)
    }

    /// Starts tracking `pid`; call with the spawn lock held, before it is released.
    pub fn watch(&self, pid: i32) -> Arc<ExitCell<ExitStatus>> {
        let cell = Arc::new(ExitCell::default());
        lock(&self.watched).insert(pid, cell.clone());
        cell
    }

    /// Called with every watched process's exit, just before its cell is set (so what the
    /// listener emits comes before any answer that waited for the exit).
    pub fn on_exit(&self, listener: impl Fn(i32, ExitStatus) + Send + Sync + 'static) {
        *lock(&self.listener) = Some(Box::new(listener));
    }

    /// Runs on its own thread for the life of the agent.
    pub fn run(self: Arc<Self>) {
        loop {
            // Sleep until some child is a zombie, without collecting it.
            match waitid(Id::All, WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT) {
                Ok(_) => {}
                Err(Errno::EINTR) => continue,
                Err(_) => {
                    // No children at all (ECHILD): look again shortly.
                    std::thread::sleep(Duration::from_millis(50));
                    continue;
                }
            }
            let _spawning = self.spawn_lock();
            loop {
                let (pid, status) = match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                    Ok(WaitStatus::Exited(pid, code)) => (pid, ExitStatus::Exited(code)),
                    Ok(WaitStatus::Signaled(pid, signal, _)) => {
                        (pid, ExitStatus::Signaled(signal as i32))
                    }
                    Ok(WaitStatus::StillAlive) | Err(_) => break,
                    Ok(_) => continue,
                };
                let cell = lock(&self.watched).remove(&pid.as_raw());
                if let Some(cell) = cell {
                    if let Some(listener) = lock(&self.listener).as_ref() {
                        listener(pid.as_raw(), status);
                    }
                    cell.set(status);
                }
            }
        }
    }
}
