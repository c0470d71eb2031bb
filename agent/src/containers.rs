//! The sandbox's containers, created from OCI runtime specs and run by libcontainer (youki's
//! runtime library: namespaces, cgroup v2 limits, pivot_root, the spec's mounts, capabilities,
//! rlimits, masked and read-only paths, seccomp, ttys). This module owns what libcontainer does
//! not: root filesystems from block devices, stdio over vsock, exit statuses, and the agent's
//! secure defaults where a spec is silent.

use std::collections::HashMap;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cocoon_protocol::defaults::default_capabilities;
use cocoon_protocol::{
    AgentError, ContainerStats, ErrorKind, Event, Reply, Rootfs, SandboxMount, StdioPorts,
};
use libcontainer::container::builder::ContainerBuilder;
use libcontainer::container::{Container, ContainerStatus};
use libcontainer::syscall::syscall::SyscallType;
use nix::mount::{mount, MsFlags};
use oci_spec::runtime::{LinuxResources, Process, Spec};

use crate::events::EventBus;
use crate::exec_confinement::Confinement;
use crate::reaper::{lock, ExitCell, Reaper};
use crate::rootfs::Layers;
use crate::stdio::{self, Stdio, Terminal};

const CGROUP_ROOT: &str = "/sys/fs/cgroup";

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
}

impl Layout {
    /// The guest's layout.
    pub fn guest() -> Self {
        Self {
            bundles: "/run/cocoon/bundles".into(),
            consoles: "/run/cocoon/tty".into(),
            state: "/run/cocoon/state".into(),
            cgroup_parent: "/cocoon".into(),
        }
    }
}

type AgentResult<T> = Result<T, AgentError>;

pub(crate) fn error(kind: ErrorKind, message: impl Into<String>) -> AgentError {
    AgentError::new(kind, message)
}

fn internal(what: &str, e: impl std::fmt::Display) -> AgentError {
    error(ErrorKind::Internal, format!("{what}: {e}"))
}

/// An error and its causes, outermost first (libcontainer's messages say little on their own).
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

struct ProcessEntry {
    pid: i32,
    exit: Arc<ExitCell>,
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
    oom_kills: u64,
}

/// Who a process is: (container id, exec id).
type ProcessOwner = (String, Option<String>);

/// How many processes of deleted containers keep their exits on record.
const DEPARTED_EXITS: usize = 1024;

pub struct Sandbox {
    layout: Layout,
    reaper: Arc<Reaper>,
    events: Arc<EventBus>,
    containers: Mutex<HashMap<String, Arc<Mutex<ContainerEntry>>>>,
    owners: Arc<Mutex<HashMap<i32, ProcessOwner>>>,
    created: Mutex<bool>,
    /// Where the sandbox's writable mounts are (the volumes the host may ask back).
    writable_mounts: Mutex<Vec<String>>,
    /// Image layer disks mounted for containers' overlays (under the bundles, as `.layers`).
    layers: Layers,
    /// The exits of deleted containers' processes, newest last: a `Wait` the host sent before
    /// a `Delete` may be read after it, and must still get the exact status.
    departed: Mutex<std::collections::VecDeque<(ProcessOwner, Arc<ExitCell>)>>,
}

/// Container and exec ids become paths and cgroup names: keep them plain.
fn check_id(what: &str, id: &str) -> AgentResult<()> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        && !id.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(error(
            ErrorKind::InvalidArgument,
            format!("{what} '{id}' is invalid: use 1-64 letters, digits, '-', '_' or '.'"),
        ))
    }
}

pub(crate) fn read_u64(path: &Path) -> Option<u64> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// `key value` lines (cpu.stat, memory.events): the value of `key`.
fn keyed_value(path: &Path, key: &str) -> Option<u64> {
    let text = fs::read_to_string(path).ok()?;
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

/// Sums `rbytes=` and `wbytes=` over the devices of io.stat.
fn io_bytes(path: &Path) -> (u64, u64) {
    let text = fs::read_to_string(path).unwrap_or_default();
    let mut totals = (0, 0);
    for field in text.split_whitespace() {
        if let Some(v) = field.strip_prefix("rbytes=") {
            totals.0 += v.parse::<u64>().unwrap_or(0);
        } else if let Some(v) = field.strip_prefix("wbytes=") {
            totals.1 += v.parse::<u64>().unwrap_or(0);
        }
    }
    totals
}

/// Fills in what the spec leaves out, the secure way: no new privileges, Docker's default
/// capabilities, a cgroup under /cocoon. The root is always the mounted block device.
pub fn apply_defaults(spec: &mut Spec, container_id: &str, cgroup_parent: &str) -> AgentResult<()> {
    let mut root = spec.root().clone().unwrap_or_default();
    root.set_path(PathBuf::from("rootfs"));
    spec.set_root(Some(root));
    let mut process = spec.process().clone().ok_or_else(|| {
        error(
            ErrorKind::InvalidArgument,
            "the spec has no process: say what to run in process.args",
        )
    })?;
    if process.args().as_ref().is_none_or(|a| a.is_empty()) {
        return Err(error(
            ErrorKind::InvalidArgument,
            "the spec's process.args is empty: say what to run",
        ));
    }
    if process.no_new_privileges().is_none() {
        process.set_no_new_privileges(Some(true));
    }
    if process.capabilities().is_none() {
        process.set_capabilities(Some(default_capabilities()));
    }
    spec.set_process(Some(process));
    let mut linux = spec.linux().clone().unwrap_or_default();
    if linux.cgroups_path().is_none() {
        linux.set_cgroups_path(Some(PathBuf::from(format!(
            "{cgroup_parent}/{container_id}"
        ))));
    }
    spec.set_linux(Some(linux));
    Ok(())
}

/// Makes the spec's relative bind sources absolute: OCI takes them as relative to the bundle. The
/// host binds a path of the container's own root over itself (`rootfs/srv` onto `/srv`, with `ro`)
/// to make a copied host directory read-only; such a source must stay inside the bundle and name
/// no symlink on its way, or an image's link could bind the guest's own files into the container.
fn resolve_bind_sources(spec: &mut Spec, bundle: &Path) -> AgentResult<()> {
    let Some(mut mounts) = spec.mounts().clone() else {
        return Ok(());
    };
    for m in &mut mounts {
        let is_bind = cocoon_protocol::mounts::is_bind(m);
        let Some(source) = m.source().clone().filter(|s| is_bind && s.is_relative()) else {
            continue;
        };
        let refuse = |why: &str| {
            error(
                ErrorKind::InvalidArgument,
                format!(
                    "the bind source {} (relative to the bundle) {why}",
                    source.display()
                ),
            )
        };
        let mut path = bundle.to_path_buf();
        for part in source.components() {
            let part = match part {
                std::path::Component::Normal(part) => part,
                std::path::Component::CurDir => continue,
                _ => return Err(refuse("must be a plain path inside the bundle")),
            };
            path.push(part);
            match fs::symlink_metadata(&path) {
                Ok(meta) if meta.file_type().is_symlink() => {
                    return Err(refuse("passes through a symlink"))
                }
                Ok(_) => {}
                Err(e) => return Err(refuse(&format!("cannot be found: {e}"))),
            }
        }
        m.set_source(Some(path));
    }
    spec.set_mounts(Some(mounts));
    Ok(())
}

fn cgroup_dir(spec: &Spec) -> PathBuf {
    let relative = spec
        .linux()
        .as_ref()
        .and_then(|l| l.cgroups_path().clone())
        .unwrap_or_default();
    Path::new(CGROUP_ROOT).join(relative.strip_prefix("/").unwrap_or(&relative))
}

/// Unmounts the rootfs, gives back its layer disk and removes the bundle; used after failures and
/// on delete. An error: a disk of the root was still in use, and is only detached lazily.
fn remove_bundle(layers: &Layers, bundle: &Path, lower: Option<&str>) -> AgentResult<()> {
    let released = layers.release(bundle, lower);
    if released.is_ok() {
        let _ = fs::remove_dir_all(bundle);
    }
    released
}

impl Sandbox {
    pub fn new(layout: Layout, reaper: Arc<Reaper>, events: Arc<EventBus>) -> Arc<Self> {
        let sandbox = Arc::new(Self {
            reaper: reaper.clone(),
            events: events.clone(),
            containers: Mutex::new(HashMap::new()),
            owners: Arc::new(Mutex::new(HashMap::new())),
            created: Mutex::new(false),
            writable_mounts: Mutex::new(Vec::new()),
            layers: Layers::new(layout.bundles.join(".layers")),
            departed: Mutex::default(),
            layout,
        });
        let owners = sandbox.owners.clone();
        reaper.on_exit(move |pid, status| {
            if let Some((container_id, exec_id)) = lock(&owners).remove(&pid) {
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

    pub fn create_sandbox(
        &self,
        hostname: &str,
        dns: &[String],
        mounts: &[SandboxMount],
    ) -> AgentResult<Reply> {
        let mut created = lock(&self.created);
        if *created {
            return Err(error(
                ErrorKind::AlreadyExists,
                "the sandbox is already set up",
            ));
        }
        if !hostname.is_empty() {
            nix::unistd::sethostname(hostname).map_err(|e| {
                error(
                    ErrorKind::InvalidArgument,
                    format!("hostname '{hostname}': {e}"),
                )
            })?;
        }
        if !dns.is_empty() {
            let _ = fs::create_dir_all("/etc");
            let text: String = dns.iter().map(|s| format!("nameserver {s}\n")).collect();
            fs::write("/etc/resolv.conf", text)
                .map_err(|e| internal("writing /etc/resolv.conf", e))?;
        }
        for m in mounts {
            let _ = fs::create_dir_all(&m.target);
            let mut flags = MsFlags::empty();
            let mut data = Vec::new();
            for option in &m.options {
                match option.as_str() {
                    "ro" => flags |= MsFlags::MS_RDONLY,
                    "nosuid" => flags |= MsFlags::MS_NOSUID,
                    "nodev" => flags |= MsFlags::MS_NODEV,
                    "noexec" => flags |= MsFlags::MS_NOEXEC,
                    other => data.push(other),
                }
            }
            let data = data.join(",");
            mount(
                Some(m.source.as_str()),
                m.target.as_str(),
                Some(m.fstype.as_str()),
                flags,
                (!data.is_empty()).then_some(data.as_str()),
            )
            .map_err(|e| {
                error(
                    ErrorKind::InvalidArgument,
                    format!("mounting {} on {}: {e}", m.source, m.target),
                )
            })?;
            if !flags.contains(MsFlags::MS_RDONLY) {
                lock(&self.writable_mounts).push(m.target.clone());
            }
        }
        *created = true;
        Ok(Reply::Done)
    }

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
        let result = resolve_bind_sources(&mut spec, &bundle)
            .and_then(|()| self.build_container(container_id, &spec, ports, &bundle));
        if result.is_err() {
            let _ = remove_bundle(&self.layers, &bundle, lower.as_deref());
        }
        let (container, init) = result?;
        let pid = init.pid;
        let entry = ContainerEntry {
            container,
            confinement: Confinement::of(&spec),
            cgroup: cgroup_dir(&spec),
            bundle,
            lower,
            init,
            execs: HashMap::new(),
            started: false,
            oom_kills: 0,
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
        // The streams are opened under the spawn lock: a process another thread is cloning now
        // would hold a copy of them until it execs (and so keep the host from seeing their end).
        let spawning = self.reaper.spawn_lock();
        let mut stdio = Stdio::connect(ports, terminal)?;
        let console = terminal
            .then(|| stdio::ConsoleSocket::bind_new(&self.layout.consoles))
            .transpose()?;
        let builder = self.builder(container_id, &mut stdio, console.as_ref())?;
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
        drop(spawning);

        let (stdin, terminal) = stdio.finish(console)?;
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

    /// libcontainer's builder for a process of `container_id`, with its streams attached.
    fn builder(
        &self,
        container_id: &str,
        stdio: &mut Stdio,
        console: Option<&stdio::ConsoleSocket>,
    ) -> AgentResult<ContainerBuilder> {
        let builder = ContainerBuilder::new(container_id.to_string(), SyscallType::default())
            .with_root_path(&self.layout.state)
            .map_err(|e| internal("libcontainer state directory", e))?;
        stdio.attach(builder, console)
    }

    /// Starts tracking a new process's exit; call with the spawn lock held.
    fn track(&self, pid: i32, container_id: &str, exec_id: Option<&str>) -> Arc<ExitCell> {
        let exit = self.reaper.watch(pid);
        lock(&self.owners).insert(pid, (container_id.to_string(), exec_id.map(str::to_string)));
        exit
    }

    pub fn start(&self, container_id: &str) -> AgentResult<Reply> {
        let entry = self.entry(container_id)?;
        let mut entry = lock(&entry);
        if entry.started {
            return Err(error(
                ErrorKind::FailedPrecondition,
                format!("container '{container_id}' was already started"),
            ));
        }
        // libcontainer changes the agent's working directory while it signals the start, as it
        // does while it builds: not while another container or exec is being built.
        let spawning = self.reaper.spawn_lock();
        let started = entry.container.start();
        drop(spawning);
        started.map_err(|e| internal(&format!("starting container '{container_id}'"), e))?;
        entry.started = true;
        Ok(Reply::Done)
    }

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
        let executor = entry.confinement.executor()?;
        let process_file = entry.bundle.join(format!("exec-{exec_id}.json"));
        let json = serde_json::to_vec(&process).map_err(|e| internal("encoding the process", e))?;
        fs::write(&process_file, json).map_err(|e| internal("writing the process file", e))?;
        let terminal = process.terminal().unwrap_or(false);
        // Under the spawn lock, as for a container (see `build_container`).
        let spawning = self.reaper.spawn_lock();
        let mut stdio = Stdio::connect(ports, terminal)?;
        let console = terminal
            .then(|| stdio::ConsoleSocket::bind_new(&self.layout.consoles))
            .transpose()?;
        let builder = self.builder(container_id, &mut stdio, console.as_ref())?;
        let result = builder
            .with_executor(executor)
            .as_tenant()
            .with_process(Some(&process_file))
            .with_detach(true)
            .build();
        let _ = fs::remove_file(&process_file);
        let pid = result
            .map_err(|e| {
                error(
                    ErrorKind::InvalidArgument,
                    format!(
                        "exec '{exec_id}' in container '{container_id}': {}",
                        chain(&e)
                    ),
                )
            })?
            .as_raw();
        let exit = self.track(pid, container_id, Some(exec_id));
        drop(spawning);

        let (stdin, terminal) = stdio.finish(console)?;
        entry.execs.insert(
            exec_id.to_string(),
            ProcessEntry {
                pid,
                exit,
                stdin,
                terminal,
            },
        );
        Ok(Reply::Started { pid: pid as u32 })
    }

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

    pub fn signal(
        &self,
        container_id: &str,
        exec_id: Option<&str>,
        signal: i32,
        all: bool,
    ) -> AgentResult<Reply> {
        let sig = nix::sys::signal::Signal::try_from(signal).map_err(|_| {
            error(
                ErrorKind::InvalidArgument,
                format!("{signal} is not a signal number"),
            )
        })?;
        if all && exec_id.is_none() {
            let entry = self.entry(container_id)?;
            let mut entry = lock(&entry);
            if entry.init.exit.get().is_some() {
                return Err(error(
                    ErrorKind::FailedPrecondition,
                    format!("container '{container_id}' has exited"),
                ));
            }
            return entry
                .container
                .kill(sig, true)
                .map(|()| Reply::Done)
                .map_err(|e| internal(&format!("signalling container '{container_id}'"), e));
        }
        self.with_process(container_id, exec_id, |p| {
            if p.exit.get().is_some() {
                return Err(error(
                    ErrorKind::FailedPrecondition,
                    "the process has exited",
                ));
            }
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(p.pid), sig)
                .map(|()| Reply::Done)
                .map_err(|e| internal("kill", e))
        })
    }

    /// Blocks until the process exits; holds no lock meanwhile. A process of a container
    /// deleted since has its exit on record.
    pub fn wait(&self, container_id: &str, exec_id: Option<&str>) -> AgentResult<Reply> {
        let cell = match self.with_process(container_id, exec_id, |p| Ok(p.exit.clone())) {
            Ok(cell) => cell,
            Err(e) if e.kind == ErrorKind::NotFound => lock(&self.departed)
                .iter()
                .rev()
                .find(|((c, x), _)| c == container_id && x.as_deref() == exec_id)
                .map(|(_, cell)| cell.clone())
                .ok_or(e)?,
            Err(e) => return Err(e),
        };
        Ok(Reply::Exited {
            status: cell.wait(),
        })
    }

    pub fn close_stdin(&self, container_id: &str, exec_id: Option<&str>) -> AgentResult<Reply> {
        self.with_process(container_id, exec_id, |p| {
            if let Some(terminal) = &p.terminal {
                terminal.close_input();
            }
            if let Some(stdin) = p.stdin.take() {
                // Shuts the stream for the process too: it shares the socket.
                let _ = nix::sys::socket::shutdown(
                    std::os::fd::AsRawFd::as_raw_fd(&stdin),
                    nix::sys::socket::Shutdown::Read,
                );
            }
            Ok(Reply::Done)
        })
    }

    pub fn resize_tty(
        &self,
        container_id: &str,
        exec_id: Option<&str>,
        rows: u16,
        cols: u16,
    ) -> AgentResult<Reply> {
        self.with_process(container_id, exec_id, |p| match &p.terminal {
            Some(terminal) => terminal
                .resize(rows, cols)
                .map(|()| Reply::Done)
                .map_err(|e| internal("resizing the tty", e)),
            None => Err(error(
                ErrorKind::FailedPrecondition,
                "the process has no tty (create it with process.terminal = true)",
            )),
        })
    }

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

    /// `target` if it is one of the sandbox's writable mounts (only those may be exported).
    pub fn writable_mount(&self, target: &str) -> AgentResult<PathBuf> {
        if lock(&self.writable_mounts).iter().any(|m| m == target) {
            Ok(PathBuf::from(target))
        } else {
            Err(error(
                ErrorKind::InvalidArgument,
                format!("'{target}' is not a writable mount of this sandbox: only those can be exported"),
            ))
        }
    }

    /// Kills whatever still runs, removes the cgroup, state, rootfs mount and bundle.
    pub fn delete(&self, container_id: &str) -> AgentResult<Reply> {
        let entry = lock(&self.containers).remove(container_id).ok_or_else(|| {
            error(
                ErrorKind::NotFound,
                format!("no container '{container_id}' in this sandbox"),
            )
        })?;
        let mut entry = lock(&entry);
        if entry.init.exit.get().is_none() {
            let _ = entry
                .container
                .kill(nix::sys::signal::Signal::SIGKILL, true);
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(entry.init.pid),
                nix::sys::signal::Signal::SIGKILL,
            );
            let _ = entry.init.exit.wait_timeout(Duration::from_secs(10));
        }
        for process in entry.execs.values() {
            if process.exit.get().is_none() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(process.pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        {
            let mut departed = lock(&self.departed);
            let processes = std::iter::once((None, &entry.init))
                .chain(entry.execs.iter().map(|(id, p)| (Some(id.clone()), p)));
            for (exec_id, process) in processes {
                departed.push_back(((container_id.to_string(), exec_id), process.exit.clone()));
            }
            while departed.len() > DEPARTED_EXITS {
                departed.pop_front();
            }
        }
        let _ = entry.container.refresh_status();
        let deleted = entry
            .container
            .delete(true)
            .map_err(|e| internal(&format!("deleting container '{container_id}'"), e));
        // Whatever libcontainer said: the host frees the container's disks after this, so their
        // mounts go now, and a disk something still holds is an error the host must hear of.
        let released = remove_bundle(&self.layers, &entry.bundle, entry.lower.as_deref());
        deleted?;
        released.map(|()| Reply::Done)
    }

    /// Deletes every container (before the VM goes down).
    pub fn destroy(&self) -> AgentResult<Reply> {
        let ids: Vec<String> = lock(&self.containers).keys().cloned().collect();
        for id in ids {
            self.delete(&id)?;
        }
        Ok(Reply::Done)
    }

    /// Reports new OOM kills in any container's cgroup; runs on its own thread.
    pub fn watch_oom(self: Arc<Self>) {
        loop {
            std::thread::sleep(Duration::from_millis(100));
            let entries: Vec<(String, Arc<Mutex<ContainerEntry>>)> = lock(&self.containers)
                .iter()
                .map(|(id, e)| (id.clone(), e.clone()))
                .collect();
            for (id, entry) in entries {
                let mut entry = lock(&entry);
                let kills =
                    keyed_value(&entry.cgroup.join("memory.events"), "oom_kill").unwrap_or(0);
                if kills > entry.oom_kills {
                    entry.oom_kills = kills;
                    self.events.emit(Event::Oom {
                        container_id: id.clone(),
                    });
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cocoon_protocol::defaults::DEFAULT_CAPABILITIES;
    use oci_spec::runtime::Capability;

    #[test]
    fn ids_are_plain_names() {
        assert!(check_id("id", "web-1_a.b").is_ok());
        for bad in ["", "../x", "a/b", ".hidden", &"x".repeat(65), "sp ace"] {
            assert_eq!(
                check_id("id", bad).unwrap_err().kind,
                ErrorKind::InvalidArgument
            );
        }
    }

    #[test]
    fn silent_specs_get_secure_defaults() {
        let mut spec = Spec::default();
        let mut process = spec.process().clone().unwrap();
        process.set_capabilities(None).set_no_new_privileges(None);
        spec.set_process(Some(process));
        apply_defaults(&mut spec, "c1", "/cocoon").unwrap();
        let process = spec.process().as_ref().unwrap();
        assert_eq!(process.no_new_privileges(), Some(true));
        let caps = process.capabilities().as_ref().unwrap();
        assert_eq!(
            caps.bounding().as_ref().unwrap().len(),
            DEFAULT_CAPABILITIES.len()
        );
        assert!(caps.ambient().as_ref().unwrap().is_empty());
        assert!(!caps
            .effective()
            .as_ref()
            .unwrap()
            .contains(&Capability::SysAdmin));
        assert_eq!(spec.root().as_ref().unwrap().path(), Path::new("rootfs"));
        assert_eq!(
            cgroup_dir(&spec),
            Path::new("/sys/fs/cgroup/cocoon/c1").to_path_buf()
        );
    }

    #[test]
    fn a_spec_without_a_command_is_refused() {
        let mut spec = Spec::default();
        spec.set_process(None);
        assert_eq!(
            apply_defaults(&mut spec, "c", "/cocoon").unwrap_err().kind,
            ErrorKind::InvalidArgument
        );
        let mut spec = Spec::default();
        let mut process = spec.process().clone().unwrap();
        process.set_args(Some(vec![]));
        spec.set_process(Some(process));
        assert_eq!(
            apply_defaults(&mut spec, "c", "/cocoon").unwrap_err().kind,
            ErrorKind::InvalidArgument
        );
    }

    fn bind(source: &str) -> oci_spec::runtime::Mount {
        let mut m = oci_spec::runtime::Mount::default();
        m.set_destination("/srv".into())
            .set_typ(Some("bind".into()))
            .set_source(Some(source.into()))
            .set_options(Some(vec!["rbind".into(), "ro".into()]));
        m
    }

    fn spec_with(mounts: Vec<oci_spec::runtime::Mount>) -> Spec {
        let mut spec = Spec::default();
        spec.set_mounts(Some(mounts));
        spec
    }

    #[test]
    fn relative_bind_sources_resolve_inside_the_bundle() {
        let bundle = tempfile::tempdir().unwrap();
        fs::create_dir_all(bundle.path().join("rootfs/srv")).unwrap();
        let mut spec = spec_with(vec![bind("rootfs/srv"), bind("/abs/kept")]);
        resolve_bind_sources(&mut spec, bundle.path()).unwrap();
        let sources: Vec<_> = spec
            .mounts()
            .iter()
            .flatten()
            .map(|m| m.source().clone().unwrap())
            .collect();
        assert_eq!(
            sources,
            [bundle.path().join("rootfs/srv"), PathBuf::from("/abs/kept")]
        );
    }

    #[test]
    fn relative_bind_sources_may_not_leave_the_bundle() {
        let bundle = tempfile::tempdir().unwrap();
        fs::create_dir_all(bundle.path().join("rootfs")).unwrap();
        std::os::unix::fs::symlink("/", bundle.path().join("rootfs/srv")).unwrap();
        for source in [
            "rootfs/../../etc",
            "rootfs/srv",
            "rootfs/srv/x",
            "rootfs/missing",
        ] {
            let mut spec = spec_with(vec![bind(source)]);
            let e = resolve_bind_sources(&mut spec, bundle.path()).unwrap_err();
            assert_eq!(e.kind, ErrorKind::InvalidArgument, "{source}: {e:?}");
        }
    }

    #[test]
    fn cgroup_files_parse() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(
            dir.path().join("cpu.stat"),
            "usage_usec 1234\nuser_usec 1000\n",
        )
        .unwrap();
        fs::write(
            dir.path().join("io.stat"),
            "254:0 rbytes=100 wbytes=20 rios=1 wios=1\n254:16 rbytes=5 wbytes=1\n",
        )
        .unwrap();
        assert_eq!(
            keyed_value(&dir.path().join("cpu.stat"), "usage_usec"),
            Some(1234)
        );
        assert_eq!(keyed_value(&dir.path().join("cpu.stat"), "nope"), None);
        assert_eq!(io_bytes(&dir.path().join("io.stat")), (105, 21));
    }
}

/// Real containers on this machine (as root).
#[cfg(test)]
mod host_tests;
