//! What the shim knows of each container and process: its phase, pid, stdio, the exit its waiters
//! block on, and the sandbox and disk slots it uses.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;

use containerd_shim::api;
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;

use super::sandbox::Sandbox;
use super::stdio::InputCloser;

/// A process's exit: its status and when it was recorded (a [`Timestamp`], kept as its parts so
/// that waiters can copy it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Exited {
    pub status: u32,
    seconds: i64,
    nanos: i32,
}

impl Exited {
    /// An exit with `status`, now.
    pub fn now(status: u32) -> Self {
        let at = Timestamp::now();
        Self {
            status,
            seconds: at.seconds,
            nanos: at.nanos,
        }
    }

    /// When it was recorded.
    pub fn at(&self) -> Timestamp {
        Timestamp {
            seconds: self.seconds,
            nanos: self.nanos,
            ..Default::default()
        }
    }
}

/// An exit that waiters block on.
pub type ExitCell = cocoon_common::ExitCell<Exited>;

/// Where a process is in its life.
#[derive(Clone, Debug, PartialEq)]
pub enum Phase {
    Created,
    Running,
    Paused,
    Stopped(Exited),
}

/// containerd's name for a phase.
pub fn status_of(phase: &Phase) -> api::Status {
    match phase {
        Phase::Created => api::Status::CREATED,
        Phase::Running => api::Status::RUNNING,
        Phase::Paused => api::Status::PAUSED,
        Phase::Stopped(_) => api::Status::STOPPED,
    }
}

pub struct Process {
    pub pid: u32,
    pub phase: Phase,
    pub stdio: [String; 3],
    pub terminal: bool,
    pub exit: Arc<ExitCell>,
    /// Ends the process's input on CloseIO, once what containerd wrote has been forwarded.
    pub stdin: Option<InputCloser>,
    /// stdout/stderr copiers, joined before the exit is published.
    pub copiers: Vec<JoinHandle<()>>,
    /// An exec's process spec until Start.
    pub pending: Option<oci_spec::runtime::Process>,
}

impl Process {
    /// A process just created, with the stdio containerd named for it.
    pub fn created(pid: u32, stdio: [String; 3], terminal: bool) -> Self {
        Self {
            pid,
            phase: Phase::Created,
            stdio,
            terminal,
            exit: Arc::default(),
            stdin: None,
            copiers: Vec::new(),
            pending: None,
        }
    }

    /// The phase, stopped if its exit has been recorded, whatever it was before.
    pub fn refresh(&mut self) {
        if let Some(exited) = self.exit.get() {
            self.phase = Phase::Stopped(exited);
        }
    }
}

impl Drop for Process {
    /// A deleted process's input copier stops too, if containerd's writer is still there.
    fn drop(&mut self) {
        if let Some(stdin) = &self.stdin {
            stdin.close();
        }
    }
}

/// A process as containerd's State sees it.
pub struct ProcessState {
    pub bundle: String,
    pub pid: u32,
    pub phase: Phase,
    pub stdio: [String; 3],
    pub terminal: bool,
}

pub struct Container {
    pub bundle: String,
    pub sandbox: Arc<Sandbox>,
    /// Set for a container that joined a pod's VM: the disk slot its root disk fills.
    pub member: Option<Member>,
    pub init: Process,
    pub execs: HashMap<String, Process>,
}

/// A pod container's place in the pod's VM.
pub struct Member {
    /// The disk slots its root uses (its writable disk; its layer disk unless shared).
    pub slots: Vec<usize>,
    /// Its writable disk and scratch files, inside the sandbox's directory.
    pub dir: PathBuf,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_exit_keeps_its_time_and_stops_the_process() {
        let exited = Exited::now(137);
        let at = exited.at();
        assert!(at.seconds > 0 && (0..1_000_000_000).contains(&at.nanos));
        let mut process = Process::created(7, Default::default(), false);
        process.refresh();
        assert_eq!(status_of(&process.phase), api::Status::CREATED);
        process.exit.set(exited);
        process.refresh();
        assert_eq!(process.phase, Phase::Stopped(exited));
        assert_eq!(status_of(&process.phase), api::Status::STOPPED);
    }
}
