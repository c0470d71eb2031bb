//! Spawning a process of a container (its init or an exec): its streams connected and its
//! console socket bound, all under the reaper's spawn lock, then built by the spawn helper
//! (`crate::spawner`) and tracked before the lock goes.

use std::path::Path;

use cocoon_protocol::{ErrorKind, StdioPorts};

use super::{ProcessEntry, Sandbox};
use crate::errors::{error, AgentResult};
use crate::spawner::{self, SpawnError};
use crate::stdio::{ConsoleSocket, Stdio};

/// What to spawn: the container's init, or an exec from its process file.
pub(super) enum Spawn<'a> {
    Init,
    Exec {
        exec_id: &'a str,
        process_file: &'a Path,
    },
}

impl Sandbox {
    /// Spawns a process of `container_id`, whose bundle is `bundle`. The streams are opened under
    /// the spawn lock: a process another thread were spawning then would hold a copy of them
    /// until it execs (and so keep the host from seeing their end).
    pub(super) fn spawn(
        &self,
        container_id: &str,
        bundle: &Path,
        what: Spawn<'_>,
        ports: &StdioPorts,
        terminal: bool,
    ) -> AgentResult<ProcessEntry> {
        let spawning = self.reaper.spawn_lock();
        let mut stdio = Stdio::connect(ports, terminal)?;
        let console = terminal
            .then(|| ConsoleSocket::bind_new(&self.layout.consoles))
            .transpose()?;
        let (exec_id, exec_process) = match what {
            Spawn::Init => (None, None),
            Spawn::Exec {
                exec_id,
                process_file,
            } => (Some(exec_id), Some(process_file.to_path_buf())),
        };
        let request = spawner::Request {
            container_id: container_id.to_string(),
            state_root: self.layout.state.clone(),
            bundle: bundle.to_path_buf(),
            console_socket: console.as_ref().map(|c| c.path().to_path_buf()),
            exec_process,
        };
        let streams = stdio.streams()?;
        let pid = spawner::run(&self.layout.spawner, &request, streams).map_err(|e| {
            let what = match exec_id {
                None => format!("creating container '{container_id}'"),
                Some(exec_id) => format!("exec '{exec_id}' in container '{container_id}'"),
            };
            match e {
                SpawnError::Refused(reason) => {
                    error(ErrorKind::InvalidArgument, format!("{what}: {reason}"))
                }
                SpawnError::Helper(reason) => {
                    error(ErrorKind::Internal, format!("{what}: {reason}"))
                }
            }
        })?;
        let exit = self.track(pid, container_id, exec_id);
        drop(spawning);
        let (stdin, terminal) = stdio.finish(console)?;
        Ok(ProcessEntry {
            pid,
            exit,
            stdin,
            terminal,
        })
    }
}
