//! Container processes (a container's init, an exec) are built by libcontainer in a helper
//! process of their own: the agent's binary run again as `cocoon-agent spawn-helper <request>`,
//! with one thread, which builds the one process, says its pid and exits.
//!
//! Why a process of its own: libcontainer 0.7 clones its intermediate and init processes with a
//! raw `clone3` (no glibc fork handlers) from whichever process calls it, and those children run
//! Rust code (allocations, logging, std's `exit`) before they exec. Called from the agent, whose
//! threads serve connections and requests, relay ttys and reap, a clone copies every lock another
//! thread holds at that instant (glibc's malloc arenas, std's thread registry, the log writer),
//! and the child waits on it forever. It happened: the host test of 200 execs hung in about one
//! run of three, its intermediate child stuck in std's `exit`, and the agent with it. A freshly
//! exec'd helper has no other thread, so nothing is held when libcontainer clones it. (Kata's
//! agent starts its containers' processes by running itself again, for the same reason.)
//!
//! The helper gets the new process's streams at [`STREAM_FDS`] (or a console socket's path, for
//! a tty), writes one line on its stdout, an [`Outcome`] in JSON, and exits; its stderr is the
//! agent's (the console), where libcontainer's warnings go. The process it made outlives it and
//! becomes the agent's child: the agent is PID 1 (the host tests make themselves a subreaper).

use std::os::fd::RawFd;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

mod helper;
mod run;

pub use helper::helper_main;
pub use run::{run, SpawnError};

/// The agent binary's first argument that makes it the spawn helper.
pub const HELPER_COMMAND: &str = "spawn-helper";

/// Where the helper finds the new process's stdin, stdout and stderr (without a tty).
pub const STREAM_FDS: [RawFd; 3] = [3, 4, 5];

/// What the helper builds: the helper's one argument after [`HELPER_COMMAND`], in JSON.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Request {
    pub container_id: String,
    /// libcontainer's state directory (the container's own is `<state_root>/<container_id>`).
    pub state_root: PathBuf,
    /// The container's bundle, whose config.json holds its spec.
    pub bundle: PathBuf,
    /// The socket to hand the new process's pty to; None: the streams are at [`STREAM_FDS`].
    pub console_socket: Option<PathBuf>,
    /// An exec's process file; None: the container's init process.
    pub exec_process: Option<PathBuf>,
}

/// The helper's answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    Spawned {
        pid: i32,
    },
    /// libcontainer refused or failed, for this reason.
    Failed {
        reason: String,
    },
}
