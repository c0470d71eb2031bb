//! What the host does to one process (a container's init or an exec) once it runs: signal it,
//! wait for its exit, close its stdin, resize its tty.

use std::time::Duration;

use cocoon_common::lock;
use cocoon_protocol::{ErrorKind, Reply};

use super::Sandbox;
use crate::errors::{error, internal, AgentResult};

/// How long an exit's answer waits for the events emitted before it to be written (a host that
/// reads neither gets the answer late, never not at all).
const EVENTS_BEFORE_EXIT_TIMEOUT: Duration = Duration::from_secs(2);

impl Sandbox {
    pub fn signal(
        &self,
        container_id: &str,
        exec_id: Option<&str>,
        signal: i32,
        all: bool,
    ) -> AgentResult<Reply> {
        let sig = nix::sys::signal::Signal::try_from(signal).map_err(|_| {
            error(
                ErrorKind::InvalidArgument,
                format!("{signal} is not a signal number"),
            )
        })?;
        if all && exec_id.is_none() {
            let entry = self.entry(container_id)?;
            let mut entry = lock(&entry);
            if entry.init.exit.get().is_some() {
                return Err(error(
                    ErrorKind::FailedPrecondition,
                    format!("container '{container_id}' has exited"),
                ));
            }
            return entry
                .container
                .kill(sig, true)
                .map(|()| Reply::Done)
                .map_err(|e| internal(&format!("signalling container '{container_id}'"), e));
        }
        self.with_process(container_id, exec_id, |p| {
            if p.exit.get().is_some() {
                return Err(error(
                    ErrorKind::FailedPrecondition,
                    "the process has exited",
                ));
            }
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(p.pid), sig)
                .map(|()| Reply::Done)
                .map_err(|e| internal("kill", e))
        })
    }

    /// Blocks until the process exits; holds no lock meanwhile. A process of a container
    /// deleted since has its exit on record.
    pub fn wait(&self, container_id: &str, exec_id: Option<&str>) -> AgentResult<Reply> {
        let cell = match self.with_process(container_id, exec_id, |p| Ok(p.exit.clone())) {
            Ok(cell) => cell,
            Err(e) if e.kind == ErrorKind::NotFound => lock(&self.departed)
                .iter()
                .rev()
                .find(|((c, x), _)| c == container_id && x.as_deref() == exec_id)
                .map(|(_, cell)| cell.clone())
                .ok_or(e)?,
            Err(e) => return Err(e),
        };
        let status = cell.wait();
        // What the reaper emitted before the exit (an `Oom`) reaches the host first.
        self.events.written_so_far(EVENTS_BEFORE_EXIT_TIMEOUT);
        Ok(Reply::Exited { status })
    }

    pub fn close_stdin(&self, container_id: &str, exec_id: Option<&str>) -> AgentResult<Reply> {
        self.with_process(container_id, exec_id, |p| {
            if let Some(terminal) = &p.terminal {
                terminal.close_input();
            }
            if let Some(stdin) = p.stdin.take() {
                // Shuts the stream for the process too: it shares the socket.
                let _ = nix::sys::socket::shutdown(
                    std::os::fd::AsRawFd::as_raw_fd(&stdin),
                    nix::sys::socket::Shutdown::Read,
                );
            }
            Ok(Reply::Done)
        })
    }

    pub fn resize_tty(
        &self,
        container_id: &str,
        exec_id: Option<&str>,
        rows: u16,
        cols: u16,
    ) -> AgentResult<Reply> {
        self.with_process(container_id, exec_id, |p| match &p.terminal {
            Some(terminal) => terminal
                .resize(rows, cols)
                .map(|()| Reply::Done)
                .map_err(|e| internal("resizing the tty", e)),
            None => Err(error(
                ErrorKind::FailedPrecondition,
                "the process has no tty (create it with process.terminal = true)",
            )),
        })
    }
}
