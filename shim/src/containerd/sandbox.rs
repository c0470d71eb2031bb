//! One sandbox, as the containers in it share it: the microVM, its agent's client, its directory
//! and sockets, and its disk slots.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use cocoon_common::lock;
use cocoon_protocol::Rootfs;
use cocoon_sandbox::{AgentClient, Vm};

use super::disk_slots::DiskSlots;
use super::error::TaskError;
use super::rootfs::RootDisks;

/// One microVM and its agent.
pub struct Sandbox {
    pub id: String,
    /// None once the VM has been shut down.
    pub vm: Mutex<Option<Vm>>,
    pub client: Arc<AgentClient>,
    /// The thread forwarding the agent's events, ended by closing `client`.
    pub forwarder: Mutex<Option<JoinHandle<()>>>,
    pub dir: PathBuf,
    /// The VMM's hybrid-vsock socket.
    pub uds: PathBuf,
    pub disks: DiskSlots,
    /// The pod network namespace's tap and redirects, for a pod that has a network.
    pub pod_network: Mutex<Option<cocoon_sandbox::pod_network::PodTap>>,
}

impl Sandbox {
    /// Kills the VM's VMM at once (its guest stopped answering): every process in it ends, as
    /// when a VMM dies, and the sandbox is left for its delete to clean up.
    pub fn kill_vm(&self) {
        if let Some(vm) = lock(&self.vm).as_mut() {
            vm.kill();
        }
    }

    /// Attaches a pod container's root disks to the VM's slots; `taken` collects the slots used.
    pub fn attach_root(
        &self,
        container_id: &str,
        root: &RootDisks,
        taken: &mut Vec<usize>,
    ) -> Result<Rootfs, TaskError> {
        self.disks.attach_root(&self.vm, container_id, root, taken)
    }

    /// `container_id` no longer uses disk slot `slot`.
    pub fn release(&self, slot: usize, container_id: &str) {
        self.disks.release(&self.vm, slot, container_id);
    }
}
