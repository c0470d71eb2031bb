//! A sandbox's life: its microVM booted and its agent connected, the agent's events and each
//! started process's exit watched and published, the VM stopped, and what a dead shim left
//! cleaned up.

use std::net::IpAddr;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use cocoon_common::lock;
use cocoon_protocol::guest_network::HostEntry;
use cocoon_protocol::vm_config::{NetBackendConfig, NetConfig};
use cocoon_protocol::{Event, Operation, Reply};
use cocoon_sandbox::pod_network::{PodTap, TAP_NAME};
use cocoon_sandbox::vm::exit_summary;
use cocoon_sandbox::{AgentClient, ClientError, Vm, VmNet, VmOptions};
use containerd_shim::protos::events::task as events;
use containerd_shim::protos::protobuf::MessageField;
use containerd_shim::protos::topics;
use oci_spec::runtime::{LinuxNamespaceType, Spec};

use super::config::{self, Config};
use super::disk_slots::{boot_root, DiskSlots};
use super::error::TaskError;
use super::events::Events;
use super::processes::{ExitCell, Exited};
use super::rootfs::RootDisks;
use super::sandbox::Sandbox;
use super::spawner::Spawner;

const AGENT_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a VMM whose agent is gone is given to exit before the shim says the VM went away
/// without knowing why.
const VMM_EXIT_WAIT: Duration = Duration::from_secs(2);
/// How long stopping a sandbox waits for the agent's last events to be forwarded (the channel
/// is closed by then, so only what was already read is left).
const EVENTS_DRAIN_WAIT: Duration = Duration::from_secs(2);
/// How much of the end of a badly ended guest's console goes into the shim's log.
const CONSOLE_TAIL_LOGGED: u64 = 4096;

/// The VM's private directory: short, for the Unix socket paths inside it.
pub fn sandbox_dir(namespace: &str, id: &str) -> PathBuf {
    PathBuf::from("/run/cocoon/ctr").join(cocoon_common::short_hash(
        format!("{namespace}/{id}").as_bytes(),
    ))
}

/// The network namespace the sandbox's spec names by path (CRI's pod namespace, with CNI's
/// veth in it), if any.
fn network_namespace(spec: &Spec) -> Option<PathBuf> {
    spec.linux()
        .as_ref()?
        .namespaces()
        .as_ref()?
        .iter()
        .find(|n| n.typ() == LinuxNamespaceType::Network)
        .and_then(|n| n.path().clone())
}

/// Joins the pod's network namespace to a tap for the VM, when the spec names one with an
/// addressed interface in it; a host-network pod (no namespace path) keeps loopback only.
fn join_pod_network(id: &str, spec: &Spec) -> Result<Option<PodTap>, TaskError> {
    let Some(netns) = network_namespace(spec) else {
        tracing::info!("sandbox {id}: no network namespace to join (host network): the guest has loopback only");
        return Ok(None);
    };
    let joined = PodTap::plumb(&netns).map_err(|e| TaskError::InvalidArgument(e.to_string()))?;
    match &joined {
        Some(pod_tap) => tracing::info!(
            "sandbox {id}: {} ({}, MTU {}) joined to {TAP_NAME} in {}",
            pod_tap.pod.veth,
            pod_tap.pod.interface.mac,
            pod_tap.pod.interface.mtu,
            netns.display()
        ),
        None => tracing::info!(
            "sandbox {id}: {} has no interface with an IPv4 address: the guest has loopback only",
            netns.display()
        ),
    }
    Ok(joined)
}

/// The VM's network device on the pod's tap, the veth's MAC, MTU and first address its own.
fn pod_net(pod_tap: &PodTap) -> Result<VmNet, TaskError> {
    let interface = &pod_tap.pod.interface;
    let mut config = NetConfig::new(NetBackendConfig::TapFd(-1));
    config.mac = Some(interface.mac);
    config.mtu = interface.mtu;
    config.ipv4 = interface.addresses.first().map(|c| c.address);
    let tap = pod_tap
        .tap
        .try_clone()
        .map_err(|e| TaskError::Internal(format!("duplicating the pod's tap: {e}")))?;
    Ok(VmNet {
        config,
        fd: Some(Arc::new(OwnedFd::from(tap))),
    })
}

fn remove_pod_network(id: &str, pod_tap: Option<PodTap>) {
    if let Some(pod_tap) = pod_tap {
        if let Err(e) = pod_tap.remove() {
            tracing::warn!("sandbox {id}: {e}");
        }
    }
}

/// Boots, watches and stops the shim's VMs, publishing what happens in them.
pub struct Lifecycle {
    spawner: Spawner,
    events: Events,
}

impl Lifecycle {
    pub fn new(events: Events) -> Self {
        Self {
            spawner: Spawner::start(),
            events,
        }
    }

    /// Boots sandbox `id`'s VM in `dir` on `root` and creates the sandbox in its guest; a pod's
    /// (`pod`) gets empty disk slots for the containers that will join it.
    pub fn boot(
        &self,
        config: &Config,
        id: &str,
        spec: &Spec,
        root: &RootDisks,
        dir: &Path,
        pod: bool,
    ) -> Result<Arc<Sandbox>, TaskError> {
        let (disks, _) = boot_root(root);
        let annotations = spec.annotations().clone().unwrap_or_default();
        let size = config.size_for(&annotations)?;
        let files = config::guest_files(config)?;
        // A pod's sandbox container makes room for the containers that will join it (the VMM
        // takes 19 disks and the vsock device in all).
        let disk_slots = if pod {
            config
                .pod_disk_slots
                .min(config::VM_DISKS - disks.len() as u8)
        } else {
            0
        };
        let pod_network = join_pod_network(id, spec)?;
        let options = VmOptions {
            vmm: files.0,
            kernel: files.1,
            initrd: files.2,
            vcpus: size.vcpus,
            memory_mib: size.memory_mib,
            disks,
            disk_slots,
            cid: 3,
            extra_cmdline: String::new(),
            runtime_dir: Some(dir.to_path_buf()),
            nets: Vec::new(),
            netns: None,
        };
        let (vm, client, uds) = match self.boot_with(options, spec, pod_network.as_ref()) {
            Ok(booted) => booted,
            Err(e) => {
                remove_pod_network(id, pod_network);
                return Err(e);
            }
        };
        let forwarder = self.forward_events(&client);
        Ok(Arc::new(Sandbox {
            id: id.to_string(),
            vm: Mutex::new(Some(vm)),
            client,
            forwarder: Mutex::new(Some(forwarder)),
            dir: dir.to_path_buf(),
            uds,
            disks: DiskSlots::after_boot(id, root, usize::from(disk_slots)),
            pod_network: Mutex::new(pod_network),
        }))
    }

    /// Starts the VMM (on the pod's tap, if it has one) and connects to its agent, which sets up
    /// the sandbox and, for a pod with a network, the guest's interface in the veth's place.
    fn boot_with(
        &self,
        mut options: VmOptions,
        spec: &Spec,
        pod_network: Option<&PodTap>,
    ) -> Result<(Vm, Arc<AgentClient>, PathBuf), TaskError> {
        if let Some(pod_tap) = pod_network {
            options.nets.push(pod_net(pod_tap)?);
            options.netns = Some(pod_tap.netns().to_path_buf());
        }
        let mut vm = self.spawner.spawn(options)?;
        let uds = vm.uds();
        let client = match vm.connect_agent(AGENT_TIMEOUT) {
            Ok(client) => Arc::new(client),
            Err(e) => {
                let note = vm.shut_down_note(Duration::from_millis(500))?;
                return Err(anyhow::anyhow!("{e}{note}").into());
            }
        };
        let hostname = spec.hostname().clone().unwrap_or_default();
        // As Docker writes it: the sandbox's name on its own address, when it has one (a CRI
        // app container mounts the pod's /etc/hosts over this).
        let hosts = pod_network
            .and_then(|p| p.pod.interface.addresses.first())
            .filter(|_| !hostname.is_empty())
            .map(|a| HostEntry {
                address: IpAddr::V4(a.address),
                names: vec![hostname.clone()],
            })
            .into_iter()
            .collect();
        let set_up = client
            .call(Operation::CreateSandbox {
                hostname,
                dns: Default::default(),
                hosts,
                mounts: Vec::new(),
            })
            .and_then(|_| match pod_network {
                Some(pod_tap) => client
                    .call(Operation::UpdateInterface {
                        interface: pod_tap.pod.interface.clone(),
                    })
                    .and_then(|_| {
                        client.call(Operation::UpdateRoutes {
                            routes: pod_tap.pod.routes.clone(),
                        })
                    }),
                None => Ok(Reply::Done),
            });
        if let Err(e) = set_up {
            let _ = vm.shut_down(Duration::from_millis(500));
            return Err(e.into());
        }
        Ok((vm, client, uds))
    }

    /// Publishes what the agent reports unasked (a container's cgroup hit its memory limit and
    /// the OOM killer ran: TaskOOM) until the agent's channel closes and every event it had sent
    /// is queued.
    fn forward_events(&self, client: &Arc<AgentClient>) -> JoinHandle<()> {
        let events = self.events.clone();
        let client = Arc::downgrade(client);
        std::thread::spawn(move || loop {
            // A weak handle: the sandbox owns the client, and closing it ends this loop.
            let Some(event) = client.upgrade().and_then(|c| c.wait_event()) else {
                return;
            };
            match event {
                Event::Oom { container_id } => {
                    tracing::warn!("{container_id}: out of memory, the OOM killer ran");
                    events.publish(
                        topics::TASK_OOM_EVENT_TOPIC,
                        events::TaskOOM {
                            container_id,
                            ..Default::default()
                        },
                    );
                }
                other => tracing::debug!("agent event {other:?}"),
            }
        })
    }

    /// Stops the sandbox's VM and removes its directory. What the agent reported before it
    /// went (an OOM kill seen as its last containers were deleted) is queued for containerd
    /// first.
    pub fn destroy(&self, sandbox: &Sandbox) {
        let _ = sandbox.client.call(Operation::DestroySandbox);
        sandbox.client.close();
        let forwarder = lock(&sandbox.forwarder).take();
        if let Some(forwarder) = forwarder {
            let started = std::time::Instant::now();
            while !forwarder.is_finished() && started.elapsed() < EVENTS_DRAIN_WAIT {
                std::thread::sleep(Duration::from_millis(5));
            }
            if !forwarder.is_finished() {
                tracing::warn!(
                    "sandbox {}: the agent's last events were not all forwarded within {EVENTS_DRAIN_WAIT:?}",
                    sandbox.id
                );
            }
        }
        if let Some(mut vm) = lock(&sandbox.vm).take() {
            // What the VMM warned of (frames a guest was not allowed to send, a device it
            // stopped) outlives its directory in the shim's log; so does the end of the guest's
            // console when the VM ended badly (a crash, a kernel panic): what the guest said last.
            if let Ok((code, log)) = vm.shut_down(Duration::from_secs(10)) {
                for line in log.lines().filter(|l| !l.trim().is_empty()) {
                    tracing::warn!("sandbox {}: cocoon-vmm: {line}", sandbox.id);
                }
                if !exit_summary(code, &log).is_empty() {
                    let console = vm.console_tail(CONSOLE_TAIL_LOGGED);
                    for line in console.lines().filter(|l| !l.trim().is_empty()) {
                        tracing::warn!("sandbox {}: guest console: {line}", sandbox.id);
                    }
                }
            }
        }
        remove_pod_network(&sandbox.id, lock(&sandbox.pod_network).take());
        let _ = std::fs::remove_dir_all(&sandbox.dir);
        tracing::info!("sandbox {} stopped", sandbox.id);
    }

    /// Watches a started process: waits for its exit, drains its output, records and publishes
    /// the exit. A VM that dies ends every process in it with status 255, and the log says why
    /// the VMM ended (a guest crash or kernel panic, a kill).
    pub fn watch(
        &self,
        id: &str,
        exec_id: Option<String>,
        sandbox: Arc<Sandbox>,
        exit: Arc<ExitCell>,
        copiers: Vec<JoinHandle<()>>,
        pid: u32,
    ) {
        let events = self.events.clone();
        let id = id.to_string();
        std::thread::spawn(move || {
            let status = match sandbox.client.call(Operation::Wait {
                container_id: id.clone(),
                exec_id: exec_id.clone(),
            }) {
                Ok(Reply::Exited { status }) => status.code() as u32,
                Ok(other) => {
                    tracing::error!("the agent answered {other:?} to wait for {id}");
                    255
                }
                Err(ClientError::Agent(e)) => {
                    // The VM is there, but not the process's exit: a cocoon bug, said as one.
                    tracing::error!("{id}: the agent has no exit status for {exec_id:?}: {e}");
                    255
                }
                Err(e) => {
                    let why = lock(&sandbox.vm)
                        .as_mut()
                        .and_then(|vm| vm.exit_note(VMM_EXIT_WAIT))
                        .unwrap_or_default();
                    tracing::error!("{id}: the microVM went away: {e}{why}");
                    255
                }
            };
            for copier in copiers {
                let _ = copier.join();
            }
            let exited = Exited::now(status);
            exit.set(exited);
            events.publish(
                topics::TASK_EXIT_EVENT_TOPIC,
                events::TaskExit {
                    container_id: id.clone(),
                    id: exec_id.unwrap_or_else(|| id.clone()),
                    pid,
                    exit_status: status,
                    exited_at: MessageField::some(exited.at()),
                    ..Default::default()
                },
            );
        });
    }
}

/// After a shim died: its VMM (if still there) and its directory go.
pub fn clean_up_after(namespace: &str, id: &str) {
    let dir = sandbox_dir(namespace, id);
    let needle = dir.display().to_string();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains(&needle) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The longest ids containerd and CRI make: 64 hex digits (containerd's and CRI's container,
    /// sandbox and exec ids), namespaces of 76 characters (containerd's limit).
    const LONGEST_ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn every_socket_of_a_sandbox_fits_whatever_the_ids() {
        let namespace = "n".repeat(76);
        // The shim's own ttrpc socket: containerd_shim names it by a hash, in containerd's /run.
        for containerd in [
            "/run/containerd/containerd.sock",
            &format!("/{}", "s".repeat(200)),
        ] {
            let address = containerd_shim::socket_address(containerd, &namespace, LONGEST_ID);
            let path = address
                .strip_prefix("unix://")
                .expect("a unix socket address");
            assert!(
                cocoon_protocol::socket_path::fits(Path::new(path)),
                "{address}"
            );
        }
        // The VMM's sockets (vsock, its listeners, API): the VM's directory is a hash too.
        let dir = sandbox_dir(&namespace, LONGEST_ID);
        cocoon_sandbox::vm::check_socket_room(&dir).unwrap();
    }
}
