//! `containerd-shim-cocoon-v2`, containerd's runtime v2 shim for the runtime type
//! `io.containerd.cocoon.v2` (task API v2, as containerd 1.6 and 1.7 speak it, through the
//! `containerd-shim` 0.11 crate). Each sandbox is one microVM, booted from the cocoon config's
//! kernel and initramfs, its containers run by the guest agent.
//!
//! The `Task` service (`task_service.rs`) only translates: each request becomes a call on the
//! sandbox manager (`manager.rs`), which keeps the containers and processes (`processes.rs`) and
//! carries out each operation on a sandbox (`sandbox.rs`: one microVM, booted, watched and
//! stopped by `vm_lifecycle.rs`, its disks in `disk_slots.rs`), with the spec and root the guest
//! runs (`guest_spec.rs`, from `rootfs.rs` and `binds.rs`) and each process's stdio (`ports.rs`,
//! `stdio.rs`). Failures are typed (`error.rs`), each with its one ttrpc code.

mod binds;
mod config;
mod disk_slots;
mod error;
mod events;
mod guest_spec;
mod manager;
mod ports;
mod processes;
mod rootfs;
mod sandbox;
mod spawner;
mod stdio;
mod task_service;
mod vm_lifecycle;

use std::sync::Arc;

use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim::protos::protobuf::MessageField;
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::{DeleteResponse, ExitSignal, Flags, Shim, StartOpts};

pub use config::{guest_files, Config};
use events::Events;
pub use task_service::TaskService;

/// The runtime type containerd knows the shim by.
pub const RUNTIME_ID: &str = "io.containerd.cocoon.v2";
/// Where containerd puts the annotation naming a CRI pod.
const SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";

pub struct Service {
    namespace: String,
    id: String,
    config: Result<Config, String>,
    exit: Arc<ExitSignal>,
}

impl Shim for Service {
    type T = TaskService;

    fn new(_runtime_id: &str, args: &Flags, config: &mut containerd_shim::Config) -> Self {
        let cocoon = Config::load().map_err(|e| format!("{e:#}"));
        if let Ok(c) = &cocoon {
            config.default_log_level = c.log_level.clone();
        }
        Self {
            namespace: args.namespace.clone(),
            id: args.id.clone(),
            config: cocoon,
            exit: Arc::default(),
        }
    }

    /// containerd runs `... start` in the bundle: the pod's containers share one shim (and VM).
    fn start_shim(&mut self, opts: StartOpts) -> containerd_shim::Result<String> {
        let grouping = oci_spec::runtime::Spec::load("config.json")
            .ok()
            .and_then(|spec| spec.annotations().clone())
            .and_then(|a| a.get(SANDBOX_ID).cloned())
            .unwrap_or_else(|| opts.id.clone());
        let (_, address) = containerd_shim::spawn(opts, &grouping, Vec::new())?;
        containerd_shim::util::write_address(&address)?;
        Ok(address)
    }

    /// containerd's clean-up after a shim that died: its VM, if one is left, and its directory.
    fn delete_shim(&mut self) -> containerd_shim::Result<DeleteResponse> {
        vm_lifecycle::clean_up_after(&self.namespace, &self.id);
        Ok(DeleteResponse {
            exit_status: 128 + libc::SIGKILL as u32,
            exited_at: MessageField::some(Timestamp::now()),
            ..Default::default()
        })
    }

    fn wait(&mut self) {
        self.exit.wait();
    }

    fn create_task_service(&self, publisher: RemotePublisher) -> Self::T {
        let events = Events::start(publisher, self.namespace.clone());
        TaskService::new(
            self.config.clone(),
            self.namespace.clone(),
            events,
            self.exit.clone(),
        )
    }
}

/// The shim's `main`.
pub fn main() {
    containerd_shim::run::<Service>(
        RUNTIME_ID,
        Some(containerd_shim::Config {
            // The shim waits for its own children (the VMMs, mkfs.ext4); a reaper thread would
            // take their exit statuses away.
            no_reaper: true,
            no_sub_reaper: true,
            ..Default::default()
        }),
    );
}
