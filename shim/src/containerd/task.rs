//! containerd's task API v2, served for the containers of one sandbox (one microVM) by forwarding
//! to the guest agent.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use cocoon_protocol::{AgentError, ErrorKind, Event, Operation, Reply, Rootfs, StdioPorts};
use cocoon_sandbox::{AgentClient, ClientError, ProcessPorts, Vm, VmOptions};
use containerd_shim::api;
use containerd_shim::protos::events::task as events;
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim::protos::protobuf::MessageField;
use containerd_shim::protos::topics;
use containerd_shim::protos::ttrpc::{self, Code};
use containerd_shim::{ExitSignal, Task, TtrpcContext, TtrpcResult};
use oci_spec::runtime::{LinuxNamespaceType, Spec};

use super::binds;
use super::config::Config;
use super::events::Events;
use super::rootfs::{self, RootDisks, RootMount};
use super::spawner::Spawner;
use super::stdio::{self, Target};

const AGENT_TIMEOUT: Duration = Duration::from_secs(120);
const STDIO_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a VMM whose agent is gone is given to exit before the shim says the VM went away
/// without knowing why.
const VMM_EXIT_WAIT: Duration = Duration::from_secs(2);
const CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
const SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";
/// Mount types that exist inside the guest by themselves; others name host paths.
const GUEST_MOUNT_TYPES: &[&str] = &[
    "proc", "sysfs", "tmpfs", "devpts", "mqueue", "cgroup", "cgroup2",
];

/// Where a process is in its life.
#[derive(Clone, Debug, PartialEq)]
enum Phase {
    Created,
    Running,
    Paused,
    Stopped { status: u32, at: Timestamp },
}

/// An exit that waiters block on.
#[derive(Default)]
struct ExitCell {
    phase: Mutex<Option<(u32, Timestamp)>>,
    changed: Condvar,
}

impl ExitCell {
    /// Records the exit and wakes every waiter.
    fn record(&self, status: u32, at: Timestamp) {
        *lock(&self.phase) = Some((status, at));
        self.changed.notify_all();
    }
}

struct Process {
    pid: u32,
    phase: Phase,
    stdio: [String; 3],
    terminal: bool,
    exit: Arc<ExitCell>,
    /// Ends the process's input on CloseIO, once what containerd wrote has been forwarded.
    stdin: Option<stdio::InputCloser>,
    /// stdout/stderr copiers, joined before the exit is published.
    copiers: Vec<JoinHandle<()>>,
    /// An exec's process spec until Start.
    pending: Option<oci_spec::runtime::Process>,
}

impl Drop for Process {
    /// A deleted process's input copier stops too, if containerd's writer is still there.
    fn drop(&mut self) {
        if let Some(stdin) = &self.stdin {
            stdin.close();
        }
    }
}

struct Container {
    bundle: String,
    sandbox: Arc<Sandbox>,
    /// Set for a container that joined a pod's VM: the disk slot its root disk fills.
    member: Option<Member>,
    init: Process,
    execs: HashMap<String, Process>,
}

/// A pod container's place in the pod's VM.
struct Member {
    /// The disk slots its root uses (its writable disk; its layer disk unless shared).
    slots: Vec<usize>,
    /// Its writable disk and scratch files, inside the sandbox's directory.
    dir: PathBuf,
}

/// A disk slot's image and the containers using it (one for a writable disk; any number share a
/// layer disk).
#[derive(Clone, Debug)]
struct SlotUse {
    disk: PathBuf,
    users: Vec<String>,
}

/// One microVM and its agent.
struct Sandbox {
    id: String,
    vm: Mutex<Option<Vm>>,
    client: Arc<AgentClient>,
    dir: PathBuf,
    uds: PathBuf,
    /// How many disks the VM booted with (the sandbox container's root); the slots follow.
    boot_disks: usize,
    /// The sandbox container's layer disk, which the pod's containers of the same image share.
    boot_lower: Option<PathBuf>,
    /// The VM's empty disk slots, and what fills each.
    slots: Mutex<Vec<Option<SlotUse>>>,
}

impl Sandbox {
    /// The guest's name for disk slot `slot`: the slots follow the boot disks (vda, ...).
    fn device(&self, slot: usize) -> String {
        disk_name(self.boot_disks + slot)
    }

    /// Puts `disk` into a free slot for `container_id` (or, if `shared`, into the slot that holds
    /// it already); returns the slot and the guest's device. The slots stay locked while the VMM
    /// attaches, so no other container sees a slot half filled.
    fn fill(
        &self,
        container_id: &str,
        disk: &Path,
        read_only: bool,
        shared: bool,
    ) -> Result<(usize, String)> {
        let mut slots = lock(&self.slots);
        if shared {
            if let Some(slot) = slots
                .iter()
                .position(|s| s.as_ref().is_some_and(|s| s.disk == disk))
            {
                if let Some(s) = slots[slot].as_mut() {
                    s.users.push(container_id.to_string());
                }
                return Ok((slot, self.device(slot)));
            }
        }
        let total = slots.len();
        let slot = slots.iter().position(Option::is_none).ok_or_else(|| {
            AgentError::new(
                ErrorKind::FailedPrecondition,
                format!(
                    "pod {}'s VM has all its {total} disk slots in use (raise pod_disk_slots in the cocoon config)",
                    self.id
                ),
            )
        })?;
        match lock(&self.vm).as_ref() {
            Some(vm) => vm.attach_disk(slot, disk, read_only)?,
            None => bail!("the pod's VM has stopped"),
        };
        slots[slot] = Some(SlotUse {
            disk: disk.to_path_buf(),
            users: vec![container_id.to_string()],
        });
        Ok((slot, self.device(slot)))
    }

    /// `container_id` no longer uses `slot`; the last user's going empties it in the VM (the slots
    /// stay locked until it is empty there too).
    fn release(&self, slot: usize, container_id: &str) {
        let mut slots = lock(&self.slots);
        let Some(Some(used)) = slots.get_mut(slot) else {
            return;
        };
        used.users.retain(|u| u != container_id);
        if !used.users.is_empty() {
            return;
        }
        slots[slot] = None;
        if let Some(vm) = lock(&self.vm).as_ref() {
            if let Err(e) = vm.detach_disk(slot) {
                log::warn!("pod {}: emptying disk slot {slot}: {e:#}", self.id);
            }
        }
    }

    /// Attaches a pod container's root disks to slots; `taken` collects the slots used.
    fn attach_root(
        &self,
        container_id: &str,
        root: &RootDisks,
        taken: &mut Vec<usize>,
    ) -> Result<Rootfs> {
        Ok(match root {
            RootDisks::Whole(disk) => {
                let (slot, device) = self.fill(container_id, disk, false, false)?;
                taken.push(slot);
                whole_disk(device)
            }
            RootDisks::Layered { lower, upper } => {
                let lower = if self.boot_lower.as_ref() == Some(lower) {
                    disk_name(0)
                } else {
                    let (slot, device) = self.fill(container_id, lower, true, true)?;
                    taken.push(slot);
                    device
                };
                let (slot, upper) = self.fill(container_id, upper, false, false)?;
                taken.push(slot);
                Rootfs::Overlay { lower, upper }
            }
        })
    }
}

/// A root on one whole writable ext4 disk.
fn whole_disk(device: String) -> Rootfs {
    Rootfs::BlockDevice {
        device,
        fstype: "ext4".into(),
        read_only: false,
    }
}

/// The guest's name for its `index`th virtio disk.
fn disk_name(index: usize) -> String {
    let letter = (b'a' + index as u8) as char;
    format!("/dev/vd{letter}")
}

/// A root as the disks a VM boots with, and how the agent mounts it from them.
fn boot_root(root: &RootDisks) -> (Vec<(PathBuf, bool)>, Rootfs) {
    match root {
        RootDisks::Whole(disk) => (vec![(disk.clone(), false)], whole_disk(disk_name(0))),
        RootDisks::Layered { lower, upper } => (
            vec![(lower.clone(), true), (upper.clone(), false)],
            Rootfs::Overlay {
                lower: disk_name(0),
                upper: disk_name(1),
            },
        ),
    }
}

pub struct TaskService {
    /// The cocoon config, or why it could not be read (said at every Create).
    config: Result<Config, String>,
    namespace: String,
    containers: Mutex<HashMap<String, Container>>,
    events: Events,
    spawner: Spawner,
    exit: Arc<ExitSignal>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn rpc_error(code: Code, message: impl ToString) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::get_status(code, message.to_string()))
}

/// An error for containerd, with the agent's error kinds mapped to gRPC codes.
fn to_rpc(error: anyhow::Error) -> ttrpc::Error {
    let code = match error
        .downcast_ref::<ClientError>()
        .and_then(|e| match e {
            ClientError::Agent(AgentError { kind, .. }) => Some(*kind),
            _ => None,
        })
        .or_else(|| error.downcast_ref::<AgentError>().map(|e| e.kind))
    {
        Some(ErrorKind::NotFound) => Code::NOT_FOUND,
        Some(ErrorKind::AlreadyExists) => Code::ALREADY_EXISTS,
        Some(ErrorKind::InvalidArgument) => Code::INVALID_ARGUMENT,
        Some(ErrorKind::FailedPrecondition) => Code::FAILED_PRECONDITION,
        Some(ErrorKind::Unimplemented) => Code::UNIMPLEMENTED,
        Some(ErrorKind::Internal) | None => Code::UNKNOWN,
    };
    log::error!("{error:#}");
    rpc_error(code, format!("{error:#}"))
}

fn now() -> Timestamp {
    Timestamp::now()
}

/// The VM's private directory: short, for the Unix socket paths inside it.
fn sandbox_dir(namespace: &str, id: &str) -> PathBuf {
    PathBuf::from("/run/cocoon/ctr").join(crate::short_hash(format!("{namespace}/{id}").as_bytes()))
}

/// True for mounts the guest makes by itself (proc, tmpfs, ...); others name host paths.
fn made_in_guest(mount: &oci_spec::runtime::Mount) -> bool {
    mount
        .typ()
        .as_deref()
        .is_some_and(|t| GUEST_MOUNT_TYPES.contains(&t))
}

/// The spec as the guest can run it: no host namespaces, cgroup path, hooks or host mounts (bound
/// host files and directories are copied into the root's writable disk instead — `copied` says
/// which were — read-only ones bound over themselves read-only), rootfs at the
/// bundle's `rootfs`. A pod member keeps the namespaces it joins (`/proc/PID/ns/...` of the
/// sandbox container, whose PID containerd knows as the guest's), all but the network.
fn guest_spec(mut spec: Spec, pod_member: bool, copied: &[binds::FileBind]) -> Spec {
    if let Some(mut linux) = spec.linux().clone() {
        if let Some(namespaces) = linux.namespaces().clone() {
            linux.set_namespaces(Some(
                namespaces
                    .into_iter()
                    .filter(|n| n.typ() != LinuxNamespaceType::Network)
                    .filter(|n| pod_member || n.path().is_none())
                    .collect(),
            ));
        }
        linux.set_cgroups_path(None);
        spec.set_linux(Some(linux));
    }
    spec.set_hooks(None);
    if let Some(mounts) = spec.mounts().clone() {
        let mut kept: Vec<oci_spec::runtime::Mount> = Vec::with_capacity(mounts.len());
        for m in mounts {
            if made_in_guest(&m) {
                kept.push(m);
                continue;
            }
            let destination = m.destination();
            let Some(bind) = copied
                .iter()
                .rfind(|b| Path::new(&b.destination) == destination.as_path())
            else {
                log::warn!(
                    "not mounting {} into the container: of host mounts, only binds of files (and, on an image's layers, directories) reach the microVM, as copies",
                    destination.display()
                );
                continue;
            };
            if !binds::is_read_only(&m) {
                continue; // the copy in the root's writable disk is all it takes
            }
            // The copy is bound over itself read-only, unless a mount made before it (a tmpfs
            // on /run, /dev, ...) hides it: then there is nothing to bind, as nothing to see.
            match kept
                .iter()
                .find(|k| made_in_guest(k) && destination.starts_with(k.destination()))
            {
                Some(hider) => log::warn!(
                    "not mounting {} into the container: the {} mount at {} hides it",
                    destination.display(),
                    hider.typ().as_deref().unwrap_or("guest"),
                    hider.destination().display()
                ),
                None => kept.push(binds::read_only_over_copy(bind)),
            }
        }
        spec.set_mounts(Some(kept));
    }
    if let Some(mut root) = spec.root().clone() {
        root.set_path("rootfs".into());
        spec.set_root(Some(root));
    }
    spec
}

/// The agent's streams for a process, bound before the agent connects them.
struct Ports(ProcessPorts);

impl Ports {
    fn bind(uds: &Path, first: u32, stdio: &[Target; 3], terminal: bool) -> Result<Self> {
        let wanted = [
            stdio[0].is_some(),
            stdio[1].is_some(),
            stdio[2].is_some() && !terminal,
        ];
        Ok(Self(
            ProcessPorts::bind(uds, first, wanted).context("binding a stdio socket")?,
        ))
    }

    fn ports(&self) -> StdioPorts {
        self.0.ports()
    }

    /// Connects containerd's FIFOs to the agent's streams once it has connected them.
    fn wire(
        self,
        stdio: &[Target; 3],
    ) -> Result<(Option<stdio::InputCloser>, Vec<JoinHandle<()>>)> {
        let streams = self
            .0
            .accept(STDIO_TIMEOUT)
            .context("the agent did not connect a stdio stream")?;
        let mut copiers = Vec::new();
        let mut stdin_handle = None;
        if let Some(stream) = streams.stdin.filter(|_| stdio[0].is_some()) {
            stdio::check_input(&stdio[0])?;
            let closer = stdio::InputCloser::default();
            stdin_handle = Some(closer.clone());
            // Not joined: it ends on CloseIO, at containerd's end of input, or when the process's
            // side of the stream is gone.
            drop(stdio::copy_in(stdio[0].clone(), stream, closer));
        }
        if let (Some(stream), Some(fifo)) = (streams.stdout, stdio::open_output(&stdio[1])?) {
            copiers.push(stdio::copy_out(stream, fifo));
        }
        if let (Some(stream), Some(fifo)) = (streams.stderr, stdio::open_output(&stdio[2])?) {
            copiers.push(stdio::copy_out(stream, fifo));
        }
        Ok((stdin_handle, copiers))
    }
}

/// The container's root disks in `dir` (its layer disk in `layer_cache`): the rootfs containerd
/// mounted for it, with the host files it bind-mounts copied into its writable disk.
fn make_root(
    req: &api::CreateTaskRequest,
    spec: &Spec,
    dir: &Path,
    layer_cache: &Path,
) -> Result<(RootDisks, Vec<binds::FileBind>)> {
    let mounts: Vec<RootMount> = req
        .rootfs
        .iter()
        .map(|m| RootMount {
            fstype: m.type_.clone(),
            source: m.source.clone(),
            options: m.options.clone(),
        })
        .collect();
    let host_mounts: Vec<_> = spec
        .mounts()
        .iter()
        .flatten()
        .filter(|m| !made_in_guest(m))
        .cloned()
        .collect();
    let host_binds = binds::file_binds(&host_mounts)?;
    rootfs::prepare(
        &mounts,
        Path::new(&req.bundle),
        dir,
        layer_cache,
        &host_binds,
    )
}

fn targets(stdin: &str, stdout: &str, stderr: &str) -> Result<[Target; 3]> {
    Ok([
        Target::parse(stdin)?,
        Target::parse(stdout)?,
        Target::parse(stderr)?,
    ])
}

impl TaskService {
    pub fn new(
        config: Result<Config, String>,
        namespace: String,
        events: Events,
        exit: Arc<ExitSignal>,
    ) -> Self {
        Self {
            config,
            namespace,
            containers: Mutex::default(),
            events,
            spawner: Spawner::start(),
            exit,
        }
    }

    fn config(&self) -> Result<&Config> {
        self.config
            .as_ref()
            .map_err(|e| anyhow::anyhow!("the cocoon config: {e}"))
    }

    fn boot(
        &self,
        id: &str,
        spec: &Spec,
        root: &RootDisks,
        dir: &Path,
        pod: bool,
    ) -> Result<Arc<Sandbox>> {
        let config = self.config()?;
        let (disks, _) = boot_root(root);
        let boot_disks = disks.len();
        let annotations = spec.annotations().clone().unwrap_or_default();
        let size = config.size_for(&annotations)?;
        let files = super::guest_files(config)?;
        // A pod's sandbox container makes room for the containers that will join it (the VMM
        // takes 19 disks and the vsock device in all).
        let disk_slots = if pod {
            config
                .pod_disk_slots
                .min(super::config::VM_DISKS - boot_disks as u8)
        } else {
            0
        };
        let mut vm = self.spawner.spawn(VmOptions {
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
        })?;
        let uds = vm.uds();
        let client = match vm.connect_agent(AGENT_TIMEOUT) {
            Ok(client) => Arc::new(client),
            Err(e) => {
                let note = vm.shut_down_note(Duration::from_millis(500))?;
                bail!("{e}{note}");
            }
        };
        client.call(Operation::CreateSandbox {
            hostname: spec.hostname().clone().unwrap_or_default(),
            dns: Vec::new(),
            mounts: Vec::new(),
        })?;
        self.forward_events(&client);
        Ok(Arc::new(Sandbox {
            id: id.to_string(),
            vm: Mutex::new(Some(vm)),
            client,
            dir: dir.to_path_buf(),
            uds,
            boot_disks,
            boot_lower: match root {
                RootDisks::Layered { lower, .. } => Some(lower.clone()),
                RootDisks::Whole(_) => None,
            },
            slots: Mutex::new(vec![None; usize::from(disk_slots)]),
        }))
    }

    fn create_container(&self, req: &api::CreateTaskRequest) -> Result<u32> {
        if lock(&self.containers).contains_key(&req.id) {
            bail!(AgentError::new(
                ErrorKind::AlreadyExists,
                format!("task {} exists", req.id)
            ));
        }
        let spec = Spec::load(Path::new(&req.bundle).join("config.json"))
            .context("reading the bundle's config.json")?;
        let annotations = spec.annotations().clone().unwrap_or_default();
        let kind = annotations.get(CONTAINER_TYPE).map(String::as_str);
        if kind == Some("container") {
            let pod = annotations.get(SANDBOX_ID).ok_or_else(|| {
                AgentError::new(
                    ErrorKind::InvalidArgument,
                    format!(
                        "container {} is a pod's container but names no pod ({SANDBOX_ID})",
                        req.id
                    ),
                )
            })?;
            return self.join_pod(req, spec, pod);
        }
        // Before anything costly: where no microVM can boot, say so at once.
        crate::launcher::check_kvm()?;
        let dir = sandbox_dir(&self.namespace, &req.id);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        std::fs::write(dir.join("container-id"), &req.id)?;
        let result = (|| {
            let (root, copied) = make_root(req, &spec, &dir, &self.config()?.layer_cache)?;
            let sandbox = self.boot(&req.id, &spec, &root, &dir, kind == Some("sandbox"))?;
            let spec = guest_spec(spec, false, &copied);
            self.create_on_agent(req, spec, &sandbox, boot_root(&root).1, None)
                .inspect_err(|_| self.destroy(&sandbox))
        })();
        if result.is_err() {
            let _ = std::fs::remove_dir_all(&dir);
        }
        result
    }

    /// A pod's container: its root disks fill free disk slots of the pod's VM (a layer disk the
    /// VM has already is shared).
    fn join_pod(&self, req: &api::CreateTaskRequest, spec: Spec, pod: &str) -> Result<u32> {
        let sandbox = lock(&self.containers)
            .get(pod)
            .map(|c| c.sandbox.clone())
            .ok_or_else(|| {
                AgentError::new(
                    ErrorKind::NotFound,
                    format!(
                        "pod {pod} has no VM in this shim (create its sandbox container first)"
                    ),
                )
            })?;
        let dir = sandbox.dir.join(crate::short_hash(req.id.as_bytes()));
        let mut taken = Vec::new();
        let result = (|| {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            let (root, copied) = make_root(req, &spec, &dir, &self.config()?.layer_cache)?;
            let rootfs = sandbox.attach_root(&req.id, &root, &mut taken)?;
            let member = Member {
                slots: taken.clone(),
                dir: dir.clone(),
            };
            let spec = guest_spec(spec, true, &copied);
            self.create_on_agent(req, spec, &sandbox, rootfs, Some(member))
        })();
        if result.is_err() {
            for slot in taken {
                sandbox.release(slot, &req.id);
            }
            let _ = std::fs::remove_dir_all(&dir);
        }
        result
    }

    /// Creates the container in the guest on `rootfs`, wires its stdio and records it.
    fn create_on_agent(
        &self,
        req: &api::CreateTaskRequest,
        spec: Spec,
        sandbox: &Arc<Sandbox>,
        rootfs: Rootfs,
        member: Option<Member>,
    ) -> Result<u32> {
        let stdio = targets(&req.stdin, &req.stdout, &req.stderr)?;
        let ports = Ports::bind(&sandbox.uds, 1000, &stdio, req.terminal)?;
        let reply = sandbox.client.call(Operation::CreateContainer {
            container_id: req.id.clone(),
            spec: Box::new(spec),
            rootfs,
            stdio: ports.ports(),
        })?;
        let pid = match reply {
            Reply::Started { pid } => pid,
            other => bail!("the agent answered {other:?} to create"),
        };
        let (stdin, copiers) = match ports.wire(&stdio) {
            Ok(wired) => wired,
            Err(e) => {
                let _ = sandbox.client.call(Operation::Delete {
                    container_id: req.id.clone(),
                });
                return Err(e);
            }
        };
        lock(&self.containers).insert(
            req.id.clone(),
            Container {
                bundle: req.bundle.clone(),
                sandbox: sandbox.clone(),
                member,
                init: Process {
                    pid,
                    phase: Phase::Created,
                    stdio: [req.stdin.clone(), req.stdout.clone(), req.stderr.clone()],
                    terminal: req.terminal,
                    exit: Arc::default(),
                    stdin,
                    copiers,
                    pending: None,
                },
                execs: HashMap::new(),
            },
        );
        self.events.publish(
            topics::TASK_CREATE_EVENT_TOPIC,
            events::TaskCreate {
                container_id: req.id.clone(),
                bundle: req.bundle.clone(),
                rootfs: req.rootfs.clone(),
                io: MessageField::some(events::TaskIO {
                    stdin: req.stdin.clone(),
                    stdout: req.stdout.clone(),
                    stderr: req.stderr.clone(),
                    terminal: req.terminal,
                    ..Default::default()
                }),
                pid,
                ..Default::default()
            },
        );
        Ok(pid)
    }

    /// Publishes what the agent reports unasked (a container's cgroup hit its memory limit and
    /// the OOM killer ran: TaskOOM) until the agent's channel closes.
    fn forward_events(&self, client: &Arc<AgentClient>) {
        let events = self.events.clone();
        let client = Arc::downgrade(client);
        std::thread::spawn(move || loop {
            // A weak handle: the sandbox owns the client, and closing it ends this loop.
            let Some(event) = client.upgrade().and_then(|c| c.wait_event()) else {
                return;
            };
            match event {
                Event::Oom { container_id } => {
                    log::warn!("{container_id}: out of memory, the OOM killer ran");
                    events.publish(
                        topics::TASK_OOM_EVENT_TOPIC,
                        events::TaskOOM {
                            container_id,
                            ..Default::default()
                        },
                    );
                }
                other => log::debug!("agent event {other:?}"),
            }
        });
    }

    /// Stops the sandbox's VM and removes its directory.
    fn destroy(&self, sandbox: &Sandbox) {
        let _ = sandbox.client.call(Operation::DestroySandbox);
        sandbox.client.close();
        if let Some(mut vm) = lock(&sandbox.vm).take() {
            let _ = vm.shut_down(Duration::from_secs(10));
        }
        let _ = std::fs::remove_dir_all(&sandbox.dir);
        log::info!("sandbox {} stopped", sandbox.id);
    }

    /// Watches a started process: waits for its exit, drains its output, records and publishes
    /// the exit. A VM that dies ends every process in it with status 255, and the log says why
    /// the VMM ended (a guest crash or kernel panic, a kill).
    fn watch(
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
                    log::error!("the agent answered {other:?} to wait for {id}");
                    255
                }
                Err(ClientError::Agent(e)) => {
                    // The VM is there, but not the process's exit: a cocoon bug, said as one.
                    log::error!("{id}: the agent has no exit status for {exec_id:?}: {e}");
                    255
                }
                Err(e) => {
                    let why = lock(&sandbox.vm)
                        .as_mut()
                        .and_then(|vm| vm.exit_note(VMM_EXIT_WAIT))
                        .unwrap_or_default();
                    log::error!("{id}: the microVM went away: {e}{why}");
                    255
                }
            };
            for copier in copiers {
                let _ = copier.join();
            }
            let at = now();
            exit.record(status, at.clone());
            events.publish(
                topics::TASK_EXIT_EVENT_TOPIC,
                events::TaskExit {
                    container_id: id.clone(),
                    id: exec_id.unwrap_or_else(|| id.clone()),
                    pid,
                    exit_status: status,
                    exited_at: MessageField::some(at),
                    ..Default::default()
                },
            );
        });
    }

    fn start_process(&self, req: &api::StartRequest) -> Result<u32> {
        let mut containers = lock(&self.containers);
        let container = containers
            .get_mut(&req.id)
            .ok_or_else(|| AgentError::new(ErrorKind::NotFound, format!("no task {}", req.id)))?;
        let client = container.sandbox.client.clone();
        if req.exec_id.is_empty() {
            client.call(Operation::Start {
                container_id: req.id.clone(),
            })?;
            let process = &mut container.init;
            process.phase = Phase::Running;
            let pid = process.pid;
            self.watch(
                &req.id,
                None,
                container.sandbox.clone(),
                process.exit.clone(),
                std::mem::take(&mut process.copiers),
                pid,
            );
            self.events.publish(
                topics::TASK_START_EVENT_TOPIC,
                events::TaskStart {
                    container_id: req.id.clone(),
                    pid,
                    ..Default::default()
                },
            );
            return Ok(pid);
        }
        let uds = container.sandbox.uds.clone();
        let process = container.execs.get_mut(&req.exec_id).ok_or_else(|| {
            AgentError::new(
                ErrorKind::NotFound,
                format!("no exec {} in {}", req.exec_id, req.id),
            )
        })?;
        let spec = process.pending.take().ok_or_else(|| {
            AgentError::new(
                ErrorKind::FailedPrecondition,
                format!("exec {} already started", req.exec_id),
            )
        })?;
        let started = (|| {
            let stdio = targets(&process.stdio[0], &process.stdio[1], &process.stdio[2])?;
            let ports = Ports::bind(&uds, 2000, &stdio, process.terminal)?;
            let pid = match client.call(Operation::Exec {
                container_id: req.id.clone(),
                exec_id: req.exec_id.clone(),
                process: Box::new(spec),
                stdio: ports.ports(),
            })? {
                Reply::Started { pid } => pid,
                other => bail!("the agent answered {other:?} to exec"),
            };
            let wired = ports.wire(&stdio);
            if wired.is_err() {
                // Started, but its stdio is not connected: it must not run on unwatched.
                let _ = client.call(Operation::Signal {
                    container_id: req.id.clone(),
                    exec_id: Some(req.exec_id.clone()),
                    signal: nix::sys::signal::Signal::SIGKILL as i32,
                    all: false,
                });
            }
            let (stdin, copiers) = wired?;
            Ok((pid, stdin, copiers))
        })();
        let (pid, stdin, copiers) = match started {
            Ok(started) => started,
            Err(e) => {
                // It will never run: whoever waits for it (ctr waits before it starts) is told
                // it ended, as containerd's runc shim does, so no call is left hanging.
                process.exit.record(255, now());
                return Err(e);
            }
        };
        process.pid = pid;
        process.stdin = stdin;
        process.phase = Phase::Running;
        self.watch(
            &req.id,
            Some(req.exec_id.clone()),
            container.sandbox.clone(),
            process.exit.clone(),
            copiers,
            pid,
        );
        self.events.publish(
            topics::TASK_EXEC_STARTED_EVENT_TOPIC,
            events::TaskExecStarted {
                container_id: req.id.clone(),
                exec_id: req.exec_id.clone(),
                pid,
                ..Default::default()
            },
        );
        Ok(pid)
    }

    /// Runs `f` on the process `id`/`exec_id`.
    fn with_process<T>(
        &self,
        id: &str,
        exec_id: &str,
        f: impl FnOnce(&mut Process, &Arc<Sandbox>) -> Result<T>,
    ) -> Result<T> {
        let mut containers = lock(&self.containers);
        let container = containers
            .get_mut(id)
            .ok_or_else(|| AgentError::new(ErrorKind::NotFound, format!("no task {id}")))?;
        let sandbox = container.sandbox.clone();
        let process = if exec_id.is_empty() {
            &mut container.init
        } else {
            container.execs.get_mut(exec_id).ok_or_else(|| {
                AgentError::new(ErrorKind::NotFound, format!("no exec {exec_id} in {id}"))
            })?
        };
        // A process whose exit was recorded is stopped, whatever it was before.
        if let Some((status, at)) = lock(&process.exit.phase).clone() {
            process.phase = Phase::Stopped { status, at };
        }
        f(process, &sandbox)
    }

    fn delete_process(&self, req: &api::DeleteRequest) -> Result<api::DeleteResponse> {
        let (pid, status, at) =
            self.with_process(&req.id, &req.exec_id, |p, _| match &p.phase {
                Phase::Stopped { status, at } => Ok((p.pid, *status, at.clone())),
                Phase::Created if !req.exec_id.is_empty() => {
                    // Never started: release its waiters before it goes.
                    p.exit.record(255, now());
                    Ok((0, 0, now()))
                }
                Phase::Created => Ok((p.pid, 0, now())),
                _ => bail!(AgentError::new(
                    ErrorKind::FailedPrecondition,
                    format!("{} is still running: kill it first", req.id)
                )),
            })?;
        if !req.exec_id.is_empty() {
            if let Some(c) = lock(&self.containers).get_mut(&req.id) {
                c.execs.remove(&req.exec_id);
            }
        } else {
            let container = lock(&self.containers).remove(&req.id);
            if let Some(container) = container {
                let deleted = container.sandbox.client.call(Operation::Delete {
                    container_id: req.id.clone(),
                });
                match &container.member {
                    // A pod's container leaves the VM to the pod, and its disk slots to the
                    // next containers, unless the guest could not let go of its disks: a slot
                    // refilled under a filesystem still mounted there would take its writes.
                    Some(member) => match deleted {
                        Ok(_) => {
                            for slot in &member.slots {
                                container.sandbox.release(*slot, &req.id);
                            }
                            let _ = std::fs::remove_dir_all(&member.dir);
                        }
                        Err(e) => log::warn!(
                            "{}: the guest did not release the container's disks ({e}); its disk slots {:?} stay taken until the pod's VM stops",
                            req.id,
                            member.slots
                        ),
                    },
                    None => self.destroy(&container.sandbox),
                }
                self.events.publish(
                    topics::TASK_DELETE_EVENT_TOPIC,
                    events::TaskDelete {
                        container_id: req.id.clone(),
                        id: req.id.clone(),
                        pid,
                        exit_status: status,
                        exited_at: MessageField::some(at.clone()),
                        ..Default::default()
                    },
                );
            }
        }
        Ok(api::DeleteResponse {
            pid,
            exit_status: status,
            exited_at: MessageField::some(at),
            ..Default::default()
        })
    }

    fn call(&self, id: &str, op: Operation) -> Result<Reply> {
        let client = {
            let containers = lock(&self.containers);
            containers
                .get(id)
                .ok_or_else(|| AgentError::new(ErrorKind::NotFound, format!("no task {id}")))?
                .sandbox
                .client
                .clone()
        };
        Ok(client.call(op)?)
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
            // SAFETY: kill(2) of a process whose command line names this sandbox's directory.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

fn status_of(phase: &Phase) -> api::Status {
    match phase {
        Phase::Created => api::Status::CREATED,
        Phase::Running => api::Status::RUNNING,
        Phase::Paused => api::Status::PAUSED,
        Phase::Stopped { .. } => api::Status::STOPPED,
    }
}

impl Task for TaskService {
    fn create(
        &self,
        _ctx: &TtrpcContext,
        req: api::CreateTaskRequest,
    ) -> TtrpcResult<api::CreateTaskResponse> {
        log::info!("create {} (bundle {})", req.id, req.bundle);
        let pid = self.create_container(&req).map_err(to_rpc)?;
        Ok(api::CreateTaskResponse {
            pid,
            ..Default::default()
        })
    }

    fn start(
        &self,
        _ctx: &TtrpcContext,
        req: api::StartRequest,
    ) -> TtrpcResult<api::StartResponse> {
        let pid = self.start_process(&req).map_err(to_rpc)?;
        Ok(api::StartResponse {
            pid,
            ..Default::default()
        })
    }

    fn state(
        &self,
        _ctx: &TtrpcContext,
        req: api::StateRequest,
    ) -> TtrpcResult<api::StateResponse> {
        let bundle = lock(&self.containers)
            .get(&req.id)
            .map(|c| c.bundle.clone())
            .unwrap_or_default();
        self.with_process(&req.id, &req.exec_id, |p, _| {
            let (exit_status, exited_at) = match &p.phase {
                Phase::Stopped { status, at } => (*status, MessageField::some(at.clone())),
                _ => (0, MessageField::none()),
            };
            Ok(api::StateResponse {
                id: req.id.clone(),
                bundle,
                pid: p.pid,
                status: status_of(&p.phase).into(),
                stdin: p.stdio[0].clone(),
                stdout: p.stdio[1].clone(),
                stderr: p.stdio[2].clone(),
                terminal: p.terminal,
                exit_status,
                exited_at,
                exec_id: req.exec_id.clone(),
                ..Default::default()
            })
        })
        .map_err(to_rpc)
    }

    fn wait(&self, _ctx: &TtrpcContext, req: api::WaitRequest) -> TtrpcResult<api::WaitResponse> {
        let exit = self
            .with_process(&req.id, &req.exec_id, |p, _| Ok(p.exit.clone()))
            .map_err(to_rpc)?;
        let mut phase = lock(&exit.phase);
        while phase.is_none() {
            phase = exit.changed.wait(phase).unwrap_or_else(|p| p.into_inner());
        }
        let (status, at) = phase.clone().expect("exited");
        Ok(api::WaitResponse {
            exit_status: status,
            exited_at: MessageField::some(at),
            ..Default::default()
        })
    }

    fn kill(&self, _ctx: &TtrpcContext, req: api::KillRequest) -> TtrpcResult<api::Empty> {
        let stopped = self
            .with_process(&req.id, &req.exec_id, |p, _| {
                Ok(matches!(p.phase, Phase::Stopped { .. }))
            })
            .map_err(to_rpc)?;
        if stopped {
            return Ok(api::Empty::default());
        }
        self.call(
            &req.id,
            Operation::Signal {
                container_id: req.id.clone(),
                exec_id: (!req.exec_id.is_empty()).then(|| req.exec_id.clone()),
                signal: req.signal as i32,
                all: req.all,
            },
        )
        .map_err(to_rpc)?;
        Ok(api::Empty::default())
    }

    fn delete(
        &self,
        _ctx: &TtrpcContext,
        req: api::DeleteRequest,
    ) -> TtrpcResult<api::DeleteResponse> {
        self.delete_process(&req).map_err(to_rpc)
    }

    fn exec(&self, _ctx: &TtrpcContext, req: api::ExecProcessRequest) -> TtrpcResult<api::Empty> {
        let process: oci_spec::runtime::Process =
            serde_json::from_slice(&req.spec.value).map_err(|e| {
                rpc_error(
                    Code::INVALID_ARGUMENT,
                    format!("exec {}: the process spec is not valid: {e}", req.exec_id),
                )
            })?;
        {
            let mut containers = lock(&self.containers);
            let container = containers
                .get_mut(&req.id)
                .ok_or_else(|| rpc_error(Code::NOT_FOUND, format!("no task {}", req.id)))?;
            if container.execs.contains_key(&req.exec_id) {
                return Err(rpc_error(
                    Code::ALREADY_EXISTS,
                    format!("exec {} exists", req.exec_id),
                ));
            }
            container.execs.insert(
                req.exec_id.clone(),
                Process {
                    pid: 0,
                    phase: Phase::Created,
                    stdio: [req.stdin.clone(), req.stdout.clone(), req.stderr.clone()],
                    terminal: req.terminal,
                    exit: Arc::default(),
                    stdin: None,
                    copiers: Vec::new(),
                    pending: Some(process),
                },
            );
        }
        self.events.publish(
            topics::TASK_EXEC_ADDED_EVENT_TOPIC,
            events::TaskExecAdded {
                container_id: req.id.clone(),
                exec_id: req.exec_id.clone(),
                ..Default::default()
            },
        );
        Ok(api::Empty::default())
    }

    fn pids(&self, _ctx: &TtrpcContext, req: api::PidsRequest) -> TtrpcResult<api::PidsResponse> {
        match self
            .call(
                &req.id,
                Operation::ListPids {
                    container_id: req.id.clone(),
                },
            )
            .map_err(to_rpc)?
        {
            Reply::Pids { pids } => Ok(api::PidsResponse {
                processes: pids
                    .into_iter()
                    .map(|pid| containerd_shim::protos::api::ProcessInfo {
                        pid,
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }),
            other => Err(rpc_error(
                Code::UNKNOWN,
                format!("the agent answered {other:?} to pids"),
            )),
        }
    }

    fn pause(&self, _ctx: &TtrpcContext, req: api::PauseRequest) -> TtrpcResult<api::Empty> {
        self.call(
            &req.id,
            Operation::Pause {
                container_id: req.id.clone(),
            },
        )
        .map_err(to_rpc)?;
        let _ = self.with_process(&req.id, "", |p, _| {
            p.phase = Phase::Paused;
            Ok(())
        });
        self.events.publish(
            topics::TASK_PAUSED_EVENT_TOPIC,
            events::TaskPaused {
                container_id: req.id.clone(),
                ..Default::default()
            },
        );
        Ok(api::Empty::default())
    }

    fn resume(&self, _ctx: &TtrpcContext, req: api::ResumeRequest) -> TtrpcResult<api::Empty> {
        self.call(
            &req.id,
            Operation::Resume {
                container_id: req.id.clone(),
            },
        )
        .map_err(to_rpc)?;
        let _ = self.with_process(&req.id, "", |p, _| {
            if p.phase == Phase::Paused {
                p.phase = Phase::Running;
            }
            Ok(())
        });
        self.events.publish(
            topics::TASK_RESUMED_EVENT_TOPIC,
            events::TaskResumed {
                container_id: req.id.clone(),
                ..Default::default()
            },
        );
        Ok(api::Empty::default())
    }

    fn checkpoint(
        &self,
        _ctx: &TtrpcContext,
        req: api::CheckpointTaskRequest,
    ) -> TtrpcResult<api::Empty> {
        Err(rpc_error(
            Code::UNIMPLEMENTED,
            format!(
                "checkpoint of {}: cocoon microVMs cannot be checkpointed",
                req.id
            ),
        ))
    }

    fn close_io(&self, _ctx: &TtrpcContext, req: api::CloseIORequest) -> TtrpcResult<api::Empty> {
        if req.stdin {
            self.with_process(&req.id, &req.exec_id, |p, _| {
                if let Some(stdin) = p.stdin.take() {
                    stdin.close();
                }
                Ok(())
            })
            .map_err(to_rpc)?;
        }
        Ok(api::Empty::default())
    }

    fn resize_pty(
        &self,
        _ctx: &TtrpcContext,
        req: api::ResizePtyRequest,
    ) -> TtrpcResult<api::Empty> {
        self.call(
            &req.id,
            Operation::ResizeTty {
                container_id: req.id.clone(),
                exec_id: (!req.exec_id.is_empty()).then(|| req.exec_id.clone()),
                rows: req.height.min(u16::MAX as u32) as u16,
                cols: req.width.min(u16::MAX as u32) as u16,
            },
        )
        .map_err(to_rpc)?;
        Ok(api::Empty::default())
    }

    fn update(&self, _ctx: &TtrpcContext, req: api::UpdateTaskRequest) -> TtrpcResult<api::Empty> {
        let resources: oci_spec::runtime::LinuxResources =
            serde_json::from_slice(&req.resources.value).map_err(|e| {
                rpc_error(
                    Code::INVALID_ARGUMENT,
                    format!("update {}: resources are not valid: {e}", req.id),
                )
            })?;
        self.call(
            &req.id,
            Operation::UpdateResources {
                container_id: req.id.clone(),
                resources: Box::new(resources),
            },
        )
        .map_err(to_rpc)?;
        Ok(api::Empty::default())
    }

    fn stats(
        &self,
        _ctx: &TtrpcContext,
        req: api::StatsRequest,
    ) -> TtrpcResult<api::StatsResponse> {
        use containerd_shim::protos::cgroups_v2::metrics::{
            CPUStat, MemoryStat, Metrics, PidsStat,
        };
        let stats = match self
            .call(
                &req.id,
                Operation::Stats {
                    container_id: req.id.clone(),
                },
            )
            .map_err(to_rpc)?
        {
            Reply::Stats { stats } => stats,
            other => {
                return Err(rpc_error(
                    Code::UNKNOWN,
                    format!("the agent answered {other:?} to stats"),
                ))
            }
        };
        let metrics = Metrics {
            pids: MessageField::some(PidsStat {
                current: stats.pids_current,
                ..Default::default()
            }),
            cpu: MessageField::some(CPUStat {
                usage_usec: stats.cpu_usage_usec,
                ..Default::default()
            }),
            memory: MessageField::some(MemoryStat {
                usage: stats.memory_current_bytes,
                usage_limit: stats.memory_limit_bytes.unwrap_or(0),
                ..Default::default()
            }),
            ..Default::default()
        };
        let any = containerd_shim::util::convert_to_any(Box::new(metrics))
            .map_err(|e| rpc_error(Code::UNKNOWN, e))?;
        Ok(api::StatsResponse {
            stats: MessageField::some(any),
            ..Default::default()
        })
    }

    fn connect(
        &self,
        _ctx: &TtrpcContext,
        req: api::ConnectRequest,
    ) -> TtrpcResult<api::ConnectResponse> {
        let task_pid = lock(&self.containers)
            .get(&req.id)
            .map(|c| c.init.pid)
            .unwrap_or(0);
        Ok(api::ConnectResponse {
            shim_pid: std::process::id(),
            task_pid,
            version: env!("CARGO_PKG_VERSION").into(),
            ..Default::default()
        })
    }

    fn shutdown(&self, _ctx: &TtrpcContext, req: api::ShutdownRequest) -> TtrpcResult<api::Empty> {
        let empty = lock(&self.containers).is_empty();
        if empty || req.now {
            log::info!("shutting down (now: {})", req.now);
            let sandboxes: Vec<Arc<Sandbox>> = lock(&self.containers)
                .drain()
                .filter(|(_, c)| c.member.is_none()) // a pod's VM goes with its sandbox
                .map(|(_, c)| c.sandbox)
                .collect();
            for sandbox in sandboxes {
                self.destroy(&sandbox);
            }
            self.exit.signal();
        }
        Ok(api::Empty::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::{LinuxBuilder, LinuxNamespaceBuilder, SpecBuilder};

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

    fn spec_joining_a_pod() -> Spec {
        let ns = |typ, path: Option<&str>| {
            let mut b = LinuxNamespaceBuilder::default().typ(typ);
            if let Some(p) = path {
                b = b.path(p);
            }
            b.build().unwrap()
        };
        SpecBuilder::default()
            .linux(
                LinuxBuilder::default()
                    .namespaces(vec![
                        ns(LinuxNamespaceType::Pid, None),
                        ns(LinuxNamespaceType::Ipc, Some("/proc/42/ns/ipc")),
                        ns(LinuxNamespaceType::Network, Some("/var/run/netns/cni-1")),
                        ns(LinuxNamespaceType::Mount, None),
                    ])
                    .cgroups_path("/k8s.io/abc")
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap()
    }

    fn namespaces(spec: &Spec) -> Vec<(LinuxNamespaceType, bool)> {
        spec.linux()
            .as_ref()
            .unwrap()
            .namespaces()
            .iter()
            .flatten()
            .map(|n| (n.typ(), n.path().is_some()))
            .collect()
    }

    #[test]
    fn pod_members_join_the_sandbox_namespaces_but_never_the_hosts_network() {
        let member = guest_spec(spec_joining_a_pod(), true, &[]);
        assert_eq!(
            namespaces(&member),
            [
                (LinuxNamespaceType::Pid, false),
                (LinuxNamespaceType::Ipc, true),
                (LinuxNamespaceType::Mount, false)
            ]
        );
        assert_eq!(member.linux().as_ref().unwrap().cgroups_path(), &None);
        assert_eq!(member.root().as_ref().unwrap().path(), Path::new("rootfs"));
        // A container of its own VM has no sandbox to join: host namespace paths go.
        let alone = guest_spec(spec_joining_a_pod(), false, &[]);
        assert_eq!(
            namespaces(&alone),
            [
                (LinuxNamespaceType::Pid, false),
                (LinuxNamespaceType::Mount, false)
            ]
        );
    }

    #[test]
    fn host_binds_become_copies_and_read_only_ones_stay_read_only() {
        let mount = |destination: &str, typ: &str, source: &str, options: &[&str]| {
            let mut m = oci_spec::runtime::Mount::default();
            m.set_destination(destination.into())
                .set_typ(Some(typ.into()))
                .set_source(Some(source.into()))
                .set_options(Some(options.iter().map(|o| o.to_string()).collect()));
            m
        };
        let copy = |destination: &str, directory: bool| binds::FileBind {
            source: "/host".into(),
            destination: destination.into(),
            directory,
        };
        let mut spec = Spec::default();
        spec.set_mounts(Some(vec![
            mount("/proc", "proc", "proc", &[]),
            mount("/srv", "bind", "/host/vol", &["rbind", "ro"]),
            mount("/etc/hosts", "bind", "/host/hosts", &["rbind", "rw"]),
            mount("/run", "tmpfs", "tmpfs", &[]),
            // Copied, but under the /run tmpfs made before it: nothing to bind.
            mount("/run/secret", "bind", "/host/secret", &["rbind", "ro"]),
            // Under another read-only copy: bound too, as runc nests binds.
            mount("/srv/sub", "bind", "/host/sub", &["rbind", "ro"]),
            // Not copied (a directory, on a root copied whole): no bind of a missing copy.
            mount("/opt/dir", "bind", "/host/dir", &["rbind", "ro"]),
            mount("/dev/kvm", "bind", "/dev/kvm", &["rbind"]),
        ]));
        let copied = [
            copy("/srv", true),
            copy("/srv/sub", true),
            copy("/etc/hosts", false),
            copy("/run/secret", false),
        ];
        let guest = guest_spec(spec, false, &copied);
        let mounts: Vec<_> = guest
            .mounts()
            .iter()
            .flatten()
            .map(|m| {
                (
                    m.destination().to_string_lossy().to_string(),
                    m.source().clone().unwrap_or_default(),
                    m.options().clone().unwrap_or_default().join(","),
                )
            })
            .collect();
        assert_eq!(
            mounts,
            [
                ("/proc".to_string(), PathBuf::from("proc"), String::new()),
                (
                    "/srv".to_string(),
                    PathBuf::from("rootfs/srv"),
                    "rbind,ro".to_string()
                ),
                ("/run".to_string(), PathBuf::from("tmpfs"), String::new()),
                (
                    "/srv/sub".to_string(),
                    PathBuf::from("rootfs/srv/sub"),
                    "rbind,ro".to_string()
                ),
            ]
        );
    }

    #[test]
    fn boot_disks_and_their_guest_names() {
        assert_eq!(disk_name(0), "/dev/vda");
        assert_eq!(disk_name(18), "/dev/vds");
        let layered = RootDisks::Layered {
            lower: "/cache/l.ext4".into(),
            upper: "/vm/upper.ext4".into(),
        };
        let (disks, rootfs) = boot_root(&layered);
        assert_eq!(
            disks,
            [
                ("/cache/l.ext4".into(), true),
                ("/vm/upper.ext4".into(), false)
            ]
        );
        assert_eq!(
            rootfs,
            Rootfs::Overlay {
                lower: "/dev/vda".into(),
                upper: "/dev/vdb".into()
            }
        );
    }
}
