//! `CreateContainer`: a bundle over the container's root disk, its spec with the agent's
//! defaults, and libcontainer's init process, created (not started) with its stdio attached.

use std::collections::HashMap;
use std::fs::{self, File};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use cocoon_common::lock;
use cocoon_protocol::{ErrorKind, Reply, Rootfs, StdioPorts};
use libcontainer::container::builder::ContainerBuilder;
use libcontainer::container::Container;
use libcontainer::syscall::syscall::SyscallType;
use oci_spec::runtime::Spec;

use super::cgroup::cgroup_dir;
use super::delete::remove_bundle;
use super::setup::GUEST_RESOLV_CONF;
use super::spec_defaults::{apply_defaults, bind_resolv_conf, check_id, resolve_bind_sources};
use super::{ContainerEntry, ProcessEntry, Sandbox};
use crate::errors::{chain, error, internal, AgentResult};
use crate::exec_confinement::Confinement;
use crate::stdio::{ConsoleSocket, Stdio, Terminal};

impl Sandbox {
    pub fn create_container(
        &self,
        container_id: &str,
        mut spec: Spec,
        rootfs: &Rootfs,
        ports: &StdioPorts,
    ) -> AgentResult<Reply> {
        check_id("container id", container_id)?;
        if lock(&self.containers).contains_key(container_id) {
            return Err(error(
                ErrorKind::AlreadyExists,
                format!("container '{container_id}' already exists"),
            ));
        }
        apply_defaults(&mut spec, container_id, &self.layout.cgroup_parent)?;
        let bundle = self.layout.bundles.join(container_id);
        fs::create_dir_all(bundle.join("rootfs"))
            .map_err(|e| internal("creating the bundle", e))?;
        let lower = match self.layers.mount(rootfs, &bundle) {
            Ok(lower) => lower,
            Err(e) => {
                let _ = fs::remove_dir_all(&bundle);
                return Err(e);
            }
        };
        if *lock(&self.resolv_conf) {
            bind_resolv_conf(&mut spec, GUEST_RESOLV_CONF, &bundle.join("rootfs"));
        }
        let result = resolve_bind_sources(&mut spec, &bundle)
            .and_then(|()| self.build_container(container_id, &spec, ports, &bundle));
        if result.is_err() {
            let _ = remove_bundle(&self.layers, &bundle, lower.as_deref());
        }
        let (container, init) = result?;
        let pid = init.pid;
        let cgroup = cgroup_dir(&spec);
        self.oom_kills.track(container_id, &cgroup);
        let entry = ContainerEntry {
            container,
            confinement: Confinement::of(&spec),
            cgroup,
            bundle,
            lower,
            init,
            execs: HashMap::new(),
            started: false,
        };
        lock(&self.containers).insert(container_id.to_string(), Arc::new(Mutex::new(entry)));
        Ok(Reply::Started { pid: pid as u32 })
    }

    fn build_container(
        &self,
        container_id: &str,
        spec: &Spec,
        ports: &StdioPorts,
        bundle: &Path,
    ) -> AgentResult<(Container, ProcessEntry)> {
        spec.save(bundle.join("config.json"))
            .map_err(|e| internal("writing config.json", e))?;
        let terminal = spec
            .process()
            .as_ref()
            .and_then(|p| p.terminal())
            .unwrap_or(false);
        fs::create_dir_all(&self.layout.state)
            .map_err(|e| internal("creating the state directory", e))?;
        let (spawning, builder) = self.begin_spawn(container_id, ports, terminal)?;
        let container = builder
            .as_init(bundle)
            .with_systemd(false)
            .with_detach(true)
            .build()
            .map_err(|e| {
                error(
                    ErrorKind::InvalidArgument,
                    format!("creating container '{container_id}': {}", chain(&e)),
                )
            })?;
        let pid = container
            .pid()
            .ok_or_else(|| internal("the new container", "it has no init process"))?
            .as_raw();
        let exit = self.track(pid, container_id, None);
        let (stdin, terminal) = spawning.finish()?;
        Ok((
            container,
            ProcessEntry {
                pid,
                exit,
                stdin,
                terminal,
            },
        ))
    }

    /// Starts spawning a process of `container_id` (its init or an exec): takes the spawn lock,
    /// connects its streams, binds its console socket if it has a terminal, and returns
    /// libcontainer's builder with the streams attached. The streams are opened under the lock:
    /// a process another thread is cloning now would hold a copy of them until it execs (and so
    /// keep the host from seeing their end).
    pub(super) fn begin_spawn(
        &self,
        container_id: &str,
        ports: &StdioPorts,
        terminal: bool,
    ) -> AgentResult<(Spawning<'_>, ContainerBuilder)> {
        let lock = self.reaper.spawn_lock();
        let mut stdio = Stdio::connect(ports, terminal)?;
        let console = terminal
            .then(|| ConsoleSocket::bind_new(&self.layout.consoles))
            .transpose()?;
        let builder = ContainerBuilder::new(container_id.to_string(), SyscallType::default())
            .with_root_path(&self.layout.state)
            .map_err(|e| internal("libcontainer state directory", e))?;
        let builder = stdio.attach(builder, console.as_ref())?;
        Ok((
            Spawning {
                spawn_lock: lock,
                stdio,
                console,
            },
            builder,
        ))
    }
}

/// A process being spawned: the spawn lock held, its streams and console socket open.
pub(super) struct Spawning<'a> {
    spawn_lock: MutexGuard<'a, ()>,
    stdio: Stdio,
    console: Option<ConsoleSocket>,
}

impl Spawning<'_> {
    /// Once the process is tracked by the reaper: lets go of the spawn lock, then hands back
    /// the process's stdin and terminal (the console's pty, received on its socket).
    pub(super) fn finish(self) -> AgentResult<(Option<File>, Option<Terminal>)> {
        let Self {
            spawn_lock,
            stdio,
            console,
        } = self;
        drop(spawn_lock);
        stdio.finish(console)
    }
}
