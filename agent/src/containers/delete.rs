//! The end of containers: `Delete` (kill what still runs, keep its exits on record, remove its
//! cgroup, state, mounts and bundle), and `DestroySandbox`'s deleting of them all.

use std::fs;
use std::path::Path;
use std::time::Duration;

use cocoon_common::lock;
use cocoon_protocol::{ErrorKind, Reply};

use super::Sandbox;
use crate::errors::{error, internal, AgentResult};
use crate::rootfs::Layers;

/// How many processes of deleted containers keep their exits on record.
const DEPARTED_EXITS: usize = 1024;

/// Unmounts the rootfs, gives back its layer disk and removes the bundle; used after failures and
/// on delete. An error: a disk of the root was still in use, and is only detached lazily.
pub(super) fn remove_bundle(
    layers: &Layers,
    bundle: &Path,
    lower: Option<&str>,
) -> AgentResult<()> {
    let released = layers.release(bundle, lower);
    if released.is_ok() {
        let _ = fs::remove_dir_all(bundle);
    }
    released
}

impl Sandbox {
    /// Kills whatever still runs, removes the cgroup, state, rootfs mount and bundle.
    pub fn delete(&self, container_id: &str) -> AgentResult<Reply> {
        let entry = lock(&self.containers).remove(container_id).ok_or_else(|| {
            error(
                ErrorKind::NotFound,
                format!("no container '{container_id}' in this sandbox"),
            )
        })?;
        let mut entry = lock(&entry);
        if entry.init.exit.get().is_none() {
            let _ = entry
                .container
                .kill(nix::sys::signal::Signal::SIGKILL, true);
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(entry.init.pid),
                nix::sys::signal::Signal::SIGKILL,
            );
            let _ = entry.init.exit.wait_timeout(Duration::from_secs(10));
        }
        for process in entry.execs.values() {
            if process.exit.get().is_none() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(process.pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        {
            let mut departed = lock(&self.departed);
            let processes = std::iter::once((None, &entry.init))
                .chain(entry.execs.iter().map(|(id, p)| (Some(id.clone()), p)));
            for (exec_id, process) in processes {
                departed.push_back(((container_id.to_string(), exec_id), process.exit.clone()));
            }
            while departed.len() > DEPARTED_EXITS {
                departed.pop_front();
            }
        }
        self.oom_kills.forget(container_id, &self.events);
        let _ = entry.container.refresh_status();
        let deleted = entry
            .container
            .delete(true)
            .map_err(|e| internal(&format!("deleting container '{container_id}'"), e));
        // Whatever libcontainer said: the host frees the container's disks after this, so their
        // mounts go now, and a disk something still holds is an error the host must hear of.
        let released = remove_bundle(&self.layers, &entry.bundle, entry.lower.as_deref());
        deleted?;
        released.map(|()| Reply::Done)
    }

    /// Deletes every container (before the VM goes down).
    pub fn destroy(&self) -> AgentResult<Reply> {
        let ids: Vec<String> = lock(&self.containers).keys().cloned().collect();
        for id in ids {
            self.delete(&id)?;
        }
        Ok(Reply::Done)
    }
}
