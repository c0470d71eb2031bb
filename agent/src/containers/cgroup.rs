//! What the agent reads and writes in a container's cgroup (v2, under [`CGROUP_ROOT`]): where it
//! is, its processes, its usage, its resource limits, freezing it, and its OOM kills.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use cocoon_common::lock;
use cocoon_protocol::{ContainerStats, ErrorKind, Reply};
use oci_spec::runtime::{LinuxResources, Spec};

use super::Sandbox;
use crate::errors::{error, internal, AgentResult};
use crate::sys_files::{io_bytes, keyed_value, read_u64};

pub(super) const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// The cgroup directory of a container created from `spec` (after the agent's defaults).
pub(super) fn cgroup_dir(spec: &Spec) -> PathBuf {
    let relative = spec
        .linux()
        .as_ref()
        .and_then(|l| l.cgroups_path().clone())
        .unwrap_or_default();
    Path::new(CGROUP_ROOT).join(relative.strip_prefix("/").unwrap_or(&relative))
}

impl Sandbox {
    pub fn list_pids(&self, container_id: &str) -> AgentResult<Reply> {
        let entry = self.entry(container_id)?;
        let cgroup = lock(&entry).cgroup.clone();
        let pids = libcgroups::common::get_all_pids(&cgroup)
            .map_err(|e| internal("listing the container's processes", e))?;
        Ok(Reply::Pids {
            pids: pids.into_iter().map(|p| p.as_raw() as u32).collect(),
        })
    }

    pub fn stats(&self, container_id: &str) -> AgentResult<Reply> {
        let entry = self.entry(container_id)?;
        let cg = lock(&entry).cgroup.clone();
        let (io_read_bytes, io_write_bytes) = io_bytes(&cg.join("io.stat"));
        Ok(Reply::Stats {
            stats: ContainerStats {
                cpu_usage_usec: keyed_value(&cg.join("cpu.stat"), "usage_usec").unwrap_or(0),
                memory_current_bytes: read_u64(&cg.join("memory.current")).unwrap_or(0),
                memory_limit_bytes: read_u64(&cg.join("memory.max")),
                pids_current: read_u64(&cg.join("pids.current")).unwrap_or(0),
                io_read_bytes,
                io_write_bytes,
            },
        })
    }

    pub fn update(&self, container_id: &str, resources: &LinuxResources) -> AgentResult<Reply> {
        use libcgroups::common::{CgroupConfig, CgroupManager, ControllerOpt};
        let entry = self.entry(container_id)?;
        let cgroup = lock(&entry).cgroup.clone();
        let relative = cgroup.strip_prefix(CGROUP_ROOT).unwrap_or(&cgroup);
        let manager = libcgroups::common::create_cgroup_manager(CgroupConfig {
            cgroup_path: Path::new("/").join(relative),
            systemd_cgroup: false,
            container_name: container_id.to_string(),
        })
        .map_err(|e| internal("opening the container's cgroup", e))?;
        manager
            .apply(&ControllerOpt {
                resources,
                disable_oom_killer: false,
                oom_score_adj: None,
                freezer_state: None,
            })
            .map_err(|e| {
                error(
                    ErrorKind::InvalidArgument,
                    format!("updating resources: {e}"),
                )
            })?;
        Ok(Reply::Done)
    }

    /// Freezes (`frozen`) or thaws every process of the container (cgroup freezer).
    pub fn set_paused(&self, container_id: &str, frozen: bool) -> AgentResult<Reply> {
        let entry = self.entry(container_id)?;
        let container = &mut lock(&entry).container;
        let (result, doing) = if frozen {
            (container.pause(), "pausing")
        } else {
            (container.resume(), "resuming")
        };
        result.map_err(|e| {
            error(
                ErrorKind::FailedPrecondition,
                format!("{doing} '{container_id}': {e}"),
            )
        })?;
        Ok(Reply::Done)
    }

    /// Reports new OOM kills in any container's cgroup (see [`super::oom`]); runs on its own
    /// thread.
    pub fn watch_oom(self: Arc<Self>) {
        loop {
            std::thread::sleep(Duration::from_millis(100));
            self.oom_kills.report_all(&self.events);
        }
    }
}
