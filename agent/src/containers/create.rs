//! `CreateContainer`: a bundle over the container's root disk, its spec with the agent's
//! defaults, and libcontainer's init process, created (not started) with its stdio attached by
//! the spawn helper.

use std::collections::HashMap;
use std::fs;
use std::path::Path;
use std::sync::{Arc, Mutex};

use cocoon_common::lock;
use cocoon_protocol::{ErrorKind, Reply, Rootfs, StdioPorts};
use libcontainer::container::Container;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use oci_spec::runtime::Spec;

use super::cgroup::cgroup_dir;
use super::delete::remove_bundle;
use super::spawn::Spawn;
use super::spec_defaults::{apply_defaults, bind_etc_file, check_id, resolve_bind_sources};
use super::{ContainerEntry, ProcessEntry, Sandbox};
use crate::errors::{chain, error, internal, AgentResult};
use crate::exec_confinement::Confinement;

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
        for name in lock(&self.etc_files).iter() {
            bind_etc_file(&mut spec, &self.layout.etc, name, &bundle.join("rootfs"));
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
        let init = self.spawn(container_id, bundle, Spawn::Init, ports, terminal)?;
        // The spawn helper made the container; the agent reads it back from its state.
        let root = self.layout.state.join(container_id);
        match Container::load(root.clone()) {
            Ok(container) => Ok((container, init)),
            Err(e) => {
                let _ = kill(Pid::from_raw(init.pid), Signal::SIGKILL);
                let _ = fs::remove_dir_all(&root);
                Err(internal(
                    &format!(
                        "reading back container '{container_id}' from {}",
                        root.display()
                    ),
                    chain(&e),
                ))
            }
        }
    }
}
