//! The sandbox's containers, created from OCI runtime specs and run by libcontainer (youki's
//! runtime library: namespaces, cgroup v2 limits, pivot_root, the spec's mounts, capabilities,
//! rlimits, masked and read-only paths, seccomp, ttys). The agent owns what libcontainer does
//! not: root filesystems from block devices, stdio over vsock, exit statuses, and the agent's
//! secure defaults where a spec is silent.
//!
//! This file holds the shared state only: the [`Sandbox`], its containers' and processes'
//! entries, and their lookups. Each group of operations is an `impl Sandbox` of its own file.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use cocoon_common::{lock, ExitCell};
use cocoon_protocol::{ErrorKind, Event, ExitStatus};
use libcontainer::container::Container;

use crate::errors::{error, AgentResult};
use crate::events::EventBus;
use crate::exec_confinement::Confinement;
use crate::layout::Layout;
use crate::reaper::Reaper;
use crate::rootfs::Layers;
use crate::stdio::Terminal;
use oom::OomKills;

mod cgroup;
mod create;
mod delete;
mod exec;
mod oom;
mod process;
mod setup;
mod spawn;
mod spec_defaults;
mod start;

struct ProcessEntry {
    pid: i32,
    exit: Arc<ExitCell<ExitStatus>>,
    /// A second handle on the process's stdin stream, to close it on request.
    stdin: Option<File>,
    terminal: Option<Terminal>,
}

struct ContainerEntry {
    container: Container,
    bundle: PathBuf,
    /// The shared layer disk its root overlays, if any.
    lower: Option<String>,
    /// The container's cgroup directory.
    cgroup: PathBuf,
    init: ProcessEntry,
    /// What its exec'd processes inherit.
    confinement: Confinement,
    execs: HashMap<String, ProcessEntry>,
    started: bool,
}

/// Who a process is: (container id, exec id).
type ProcessOwner = (String, Option<String>);

pub struct Sandbox {
    layout: Layout,
    reaper: Arc<Reaper>,
    events: Arc<EventBus>,
    oom_kills: Arc<OomKills>,
    containers: Mutex<HashMap<String, Arc<Mutex<ContainerEntry>>>>,
    owners: Arc<Mutex<HashMap<i32, ProcessOwner>>>,
    created: Mutex<bool>,
    /// Where the sandbox's writable mounts are (the volumes the host may ask back).
    writable_mounts: Mutex<Vec<String>>,
    /// The sandbox's files in `layout.etc` that containers get bound in (resolv.conf when the
    /// host gave DNS servers, hosts), by name.
    etc_files: Mutex<Vec<&'static str>>,
    /// Image layer disks mounted for containers' overlays (under the bundles, as `.layers`).
    layers: Layers,
    /// The exits of deleted containers' processes, newest last: a `Wait` the host sent before
    /// a `Delete` may be read after it, and must still get the exact status.
    departed: Mutex<VecDeque<(ProcessOwner, Arc<ExitCell<ExitStatus>>)>>,
}

impl Sandbox {
    pub fn new(layout: Layout, reaper: Arc<Reaper>, events: Arc<EventBus>) -> Arc<Self> {
        let sandbox = Arc::new(Self {
            reaper: reaper.clone(),
            events: events.clone(),
            oom_kills: Arc::default(),
            containers: Mutex::new(HashMap::new()),
            owners: Arc::new(Mutex::new(HashMap::new())),
            created: Mutex::new(false),
            writable_mounts: Mutex::new(Vec::new()),
            etc_files: Mutex::default(),
            layers: Layers::new(layout.bundles.join(".layers")),
            departed: Mutex::default(),
            layout,
        });
        let owners = sandbox.owners.clone();
        let oom_kills = sandbox.oom_kills.clone();
        reaper.on_exit(move |pid, status| {
            if let Some((container_id, exec_id)) = lock(&owners).remove(&pid) {
                // Before the exit is known: a process the OOM killer ended has its `Oom` first.
                oom_kills.report(&container_id, &events);
                events.emit(Event::Exit {
                    container_id,
                    exec_id,
                    status,
                });
            }
        });
        sandbox
    }

    fn entry(&self, container_id: &str) -> AgentResult<Arc<Mutex<ContainerEntry>>> {
        lock(&self.containers)
            .get(container_id)
            .cloned()
            .ok_or_else(|| {
                error(
                    ErrorKind::NotFound,
                    format!("no container '{container_id}' in this sandbox"),
                )
            })
    }

    /// Runs `f` on the container's init process (`exec_id` None) or one of its execs.
    fn with_process<T>(
        &self,
        container_id: &str,
        exec_id: Option<&str>,
        f: impl FnOnce(&mut ProcessEntry) -> AgentResult<T>,
    ) -> AgentResult<T> {
        let entry = self.entry(container_id)?;
        let mut entry = lock(&entry);
        match exec_id {
            None => f(&mut entry.init),
            Some(exec_id) => match entry.execs.get_mut(exec_id) {
                Some(process) => f(process),
                None => Err(error(
                    ErrorKind::NotFound,
                    format!("no exec '{exec_id}' in container '{container_id}'"),
                )),
            },
        }
    }

    /// Starts tracking a new process's exit; call with the spawn lock held.
    fn track(
        &self,
        pid: i32,
        container_id: &str,
        exec_id: Option<&str>,
    ) -> Arc<ExitCell<ExitStatus>> {
        let exit = self.reaper.watch(pid);
        lock(&self.owners).insert(pid, (container_id.to_string(), exec_id.map(str::to_string)));
        exit
    }
}

/// Real containers on this machine (as root).
#[cfg(test)]
mod host_tests;
