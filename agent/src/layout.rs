//! Where the sandbox keeps its containers: bundles, console sockets, libcontainer's state and
//! the parent cgroup, and the binary that spawns their processes, as the guest lays them out.

use std::path::PathBuf;

/// Where the sandbox keeps its containers.
#[derive(Clone, Debug)]
pub struct Layout {
    /// One bundle (config.json, rootfs mount point) per container.
    pub bundles: PathBuf,
    /// The sockets libcontainer hands new ptys through: short names of their own, as a Unix
    /// socket's path has room for 107 bytes and ids for 64 each.
    pub consoles: PathBuf,
    /// libcontainer's state.
    pub state: PathBuf,
    /// Parent cgroup of containers whose spec names none.
    pub cgroup_parent: String,
    /// The agent's binary, run as the spawn helper (`crate::spawner`).
    pub spawner: PathBuf,
    /// Where the sandbox's /etc/resolv.conf and /etc/hosts are written, for containers to get
    /// bound in.
    pub etc: PathBuf,
}

impl Layout {
    /// The guest's layout.
    pub fn guest() -> Self {
        Self {
            bundles: "/run/cocoon/bundles".into(),
            consoles: "/run/cocoon/tty".into(),
            state: "/run/cocoon/state".into(),
            cgroup_parent: "/cocoon".into(),
            spawner: "/proc/self/exe".into(),
            etc: "/etc".into(),
        }
    }
}
