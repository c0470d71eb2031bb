//! `Exec`: a new process in a running container, with the container's confinement where its own
//! process spec is silent (see `exec_confinement`), joined to the container by libcontainer in
//! the spawn helper.

use std::fs;

use cocoon_common::lock;
use cocoon_protocol::{ErrorKind, Reply, StdioPorts};
use libcontainer::container::ContainerStatus;
use oci_spec::runtime::Process;

use super::spawn::Spawn;
use super::spec_defaults::check_id;
use super::Sandbox;
use crate::errors::{error, internal, AgentResult};

impl Sandbox {
    pub fn exec(
        &self,
        container_id: &str,
        exec_id: &str,
        process: &Process,
        ports: &StdioPorts,
    ) -> AgentResult<Reply> {
        check_id("exec id", exec_id)?;
        let entry = self.entry(container_id)?;
        let mut entry = lock(&entry);
        if !entry.started || entry.init.exit.get().is_some() {
            return Err(error(
                ErrorKind::FailedPrecondition,
                format!("container '{container_id}' is not running: exec needs a started, running container"),
            ));
        }
        if entry.container.status() == ContainerStatus::Paused {
            // As runc and Docker: a process started in the frozen cgroup would hang frozen.
            return Err(error(
                ErrorKind::FailedPrecondition,
                format!("container '{container_id}' is paused: resume it before exec"),
            ));
        }
        if entry.execs.contains_key(exec_id) {
            return Err(error(
                ErrorKind::AlreadyExists,
                format!("exec '{exec_id}' already exists in container '{container_id}'"),
            ));
        }
        if process.args().as_ref().is_none_or(|a| a.is_empty()) {
            return Err(error(
                ErrorKind::InvalidArgument,
                "the process has no args: say what to run",
            ));
        }
        let process = entry.confinement.exec_process(process);
        // Refused here, before anything is spawned, as the spawn helper would refuse it.
        entry.confinement.executor()?;
        let process_file = entry.bundle.join(format!("exec-{exec_id}.json"));
        let json = serde_json::to_vec(&process).map_err(|e| internal("encoding the process", e))?;
        fs::write(&process_file, json).map_err(|e| internal("writing the process file", e))?;
        let terminal = process.terminal().unwrap_or(false);
        let what = Spawn::Exec {
            exec_id,
            process_file: &process_file,
        };
        let spawned = self.spawn(container_id, &entry.bundle, what, ports, terminal);
        let _ = fs::remove_file(&process_file);
        let spawned = spawned?;
        let pid = spawned.pid;
        entry.execs.insert(exec_id.to_string(), spawned);
        Ok(Reply::Started { pid: pid as u32 })
    }
}
