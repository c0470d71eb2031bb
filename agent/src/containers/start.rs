//! `Start`: runs a created container's init process (libcontainer signals it to exec).

use cocoon_common::lock;
use cocoon_protocol::{ErrorKind, Reply};

use super::Sandbox;
use crate::errors::{error, internal, AgentResult};

impl Sandbox {
    pub fn start(&self, container_id: &str) -> AgentResult<Reply> {
        let entry = self.entry(container_id)?;
        let mut entry = lock(&entry);
        if entry.started {
            return Err(error(
                ErrorKind::FailedPrecondition,
                format!("container '{container_id}' was already started"),
            ));
        }
        // libcontainer changes the agent's working directory while it signals the start, as it
        // does while it builds: not while another container or exec is being built.
        let spawning = self.reaper.spawn_lock();
        let started = entry.container.start();
        drop(spawning);
        started.map_err(|e| internal(&format!("starting container '{container_id}'"), e))?;
        entry.started = true;
        Ok(Reply::Done)
    }
}
