//! One container's microVM from the host: booting it with the container's disks, creating the
//! container, wiring a process's stdio to ours, and stopping it all. Shared by `cocoon run`
//! (attached), the detached monitor, and `cocoon exec`.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use cocoon_protocol::{Operation, Reply, Rootfs, SandboxMount, StdioPorts};
use cocoon_sandbox::spec::container_spec;
use cocoon_sandbox::{AgentClient, ProcessPorts, ProcessStreams, Vm, VmOptions};
use oci_spec::runtime::Mount;

use crate::network::{self, NetworkMode, Passt};
use crate::request::Request;
use crate::state::Entry;
use crate::target::Target;
use crate::terminal;
use crate::volume::{self, Volume};

pub const CONTAINER_ID: &str = "main";
const AGENT_TIMEOUT: Duration = Duration::from_secs(120);
const STDIO_TIMEOUT: Duration = Duration::from_secs(30);

/// The container's root disk in its directory.
pub fn rootfs_disk(entry: &Entry) -> PathBuf {
    entry.dir.join("rootfs.ext4")
}

/// The `index`th volume's disk.
pub fn volume_disk(entry: &Entry, index: usize) -> PathBuf {
    entry.dir.join(format!("volume-{index}.ext4"))
}

/// The guest's name for the `index`th disk (the root disk is the first).
fn guest_disk(index: usize) -> String {
    format!("/dev/vd{}", (b'a' + index as u8) as char)
}

pub struct Session {
    pub vm: Vm,
    pub client: Arc<AgentClient>,
    /// The network's passt, with `--network default`.
    pub passt: Option<Passt>,
}

/// Boots the container's VM and sets up its sandbox (hostname, volumes mounted in the guest).
pub fn boot(entry: &Entry, request: &Request) -> Result<Session> {
    let mut disks = vec![(rootfs_disk(entry), false)];
    for (i, volume) in request.volumes.iter().enumerate() {
        disks.push((volume_disk(entry, i), volume.read_only));
    }
    let mut passt = match request.network.mode {
        NetworkMode::Default => Some(Passt::start(
            &request.network,
            &entry.dir.join("passt.log"),
        )?),
        NetworkMode::None => None,
    };
    let nets = match passt.as_mut() {
        Some(passt) => vec![passt.take_vm_net()?],
        None => Vec::new(),
    };
    let mut vm = Vm::spawn(&VmOptions {
        vmm: request.vmm.clone(),
        kernel: request.kernel.clone(),
        initrd: request.initrd.clone(),
        vcpus: request.vcpus,
        memory_mib: request.memory_mib,
        disks,
        disk_slots: 0,
        cid: 3,
        extra_cmdline: String::new(),
        runtime_dir: Some(entry.dir.clone()),
        nets,
        netns: None,
    })?;
    match set_up(entry, request, &mut vm, passt.as_mut()) {
        Ok(client) => Ok(Session { vm, client, passt }),
        Err(e) => {
            let note = vm.shut_down_note(Duration::from_millis(500))?;
            Err(with_vmm_note(e, &note))
        }
    }
}

fn set_up(
    entry: &Entry,
    request: &Request,
    vm: &mut Vm,
    passt: Option<&mut Passt>,
) -> Result<Arc<AgentClient>> {
    entry.update(|r| r.vmm_pid = vm.pid())?;
    let client = Arc::new(vm.connect_agent(AGENT_TIMEOUT)?);
    let mounts = request
        .volumes
        .iter()
        .enumerate()
        .map(|(i, v)| SandboxMount {
            source: guest_disk(i + 1),
            target: Volume::guest_mount(i),
            fstype: "ext4".into(),
            options: if v.read_only {
                vec!["ro".into()]
            } else {
                Vec::new()
            },
        })
        .collect();
    client.call(Operation::CreateSandbox {
        hostname: request.hostname.clone(),
        dns: match passt {
            Some(_) => network::guest_dns(),
            None => Default::default(),
        },
        hosts: request.network.hosts(&request.hostname),
        mounts,
    })?;
    if let Some(passt) = passt {
        passt.check_running()?;
        for op in network::guest_setup() {
            client.call(op).context("setting up the guest's network")?;
        }
    }
    Ok(client)
}

/// The process's stdio as host ports the agent connects to.
pub struct Stdio(ProcessPorts);

/// The connected streams.
pub type Streams = ProcessStreams;

impl Stdio {
    /// Ports from `first` on; a terminal carries stdout and stderr together.
    pub fn bind(uds: &Path, first: u32, stdin: bool, tty: bool) -> Result<Self> {
        Ok(Self(
            ProcessPorts::bind(uds, first, [stdin, true, !tty])
                .context("binding a stdio socket")?,
        ))
    }

    pub fn ports(&self) -> StdioPorts {
        self.0.ports()
    }

    /// Waits for the agent to connect each stream.
    pub fn accept(self) -> Result<Streams> {
        self.0
            .accept(STDIO_TIMEOUT)
            .context("connecting the container's stdio")
    }
}

/// Creates the container (not started yet) with `stdio`.
pub fn create(session: &Session, request: &Request, stdio: StdioPorts) -> Result<()> {
    let mut spec = container_spec(&request.process.options(), &request.hostname, false);
    let mut mounts = spec.mounts().clone().unwrap_or_default();
    for (i, volume) in request.volumes.iter().enumerate() {
        let mut bind = Mount::default();
        bind.set_destination(volume.guest.clone().into())
            .set_typ(Some("bind".into()))
            .set_source(Some(Volume::guest_mount(i).into()))
            .set_options(Some(vec![
                "rbind".into(),
                if volume.read_only { "ro" } else { "rw" }.into(),
            ]));
        mounts.push(bind);
    }
    spec.set_mounts(Some(mounts));
    session.client.call(Operation::CreateContainer {
        container_id: CONTAINER_ID.into(),
        spec: Box::new(spec),
        rootfs: Rootfs::BlockDevice {
            device: guest_disk(0),
            fstype: "ext4".into(),
            read_only: false,
        },
        stdio,
    })?;
    Ok(())
}

/// Copies a process's stream to one of ours until it ends.
fn pump(mut from: UnixStream, mut to: impl Write + Send + 'static) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 << 10];
        while let Ok(n) = from.read(&mut buf) {
            if n == 0 || to.write_all(&buf[..n]).and_then(|()| to.flush()).is_err() {
                break;
            }
        }
    })
}

/// Connects our stdio to the process's streams, sends `start` (if it is not running yet),
/// forwards signals (a second Ctrl-C stops `vmm_pid`, if given) and window-size changes, and
/// returns its exit code once it has exited and its output is all out.
pub fn attach(
    client: &Arc<AgentClient>,
    target: &Target,
    streams: Streams,
    tty: bool,
    start: Option<Operation>,
    vmm_pid: Option<u32>,
) -> Result<i32> {
    let raw = if tty {
        terminal::RawMode::enter()
    } else {
        None
    };
    if tty {
        if let Some((rows, cols)) = terminal::size() {
            client.call(Operation::ResizeTty {
                container_id: target.container_id.clone(),
                exec_id: target.exec_id.clone(),
                rows,
                cols,
            })?;
        }
    }
    let signals = terminal::forward_signals(client.clone(), target.clone(), tty, vmm_pid)?;
    if let Some(op) = start {
        client.call(op)?;
    }
    let mut pumps = Vec::new();
    if let Some(out) = streams.stdout {
        pumps.push(pump(out, std::io::stdout()));
    }
    if let Some(err) = streams.stderr {
        pumps.push(pump(err, std::io::stderr()));
    }
    if let Some(mut input) = streams.stdin {
        // Not joined: it may sit in a read of our stdin after the process is gone.
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut std::io::stdin().lock(), &mut input);
            let _ = input.shutdown(std::net::Shutdown::Write);
        });
    }
    let status = wait(client, target);
    for p in pumps {
        let _ = p.join();
    }
    signals.close();
    drop(raw);
    status
}

/// Waits for the process to exit; its exit code (128 + N for signal N).
pub fn wait(client: &AgentClient, target: &Target) -> Result<i32> {
    match client.call(Operation::Wait {
        container_id: target.container_id.clone(),
        exec_id: target.exec_id.clone(),
    })? {
        Reply::Exited { status } => Ok(status.code()),
        other => bail!("the agent answered {other:?} to wait"),
    }
}

/// Once the container's process has ended: deletes the container, then brings each writable
/// volume back into its host directory while the VM still runs, saying on stderr what the
/// copy-back refused.
pub fn finish(session: &Session, entry: &Entry, request: &Request) -> Result<()> {
    session.client.call(Operation::Delete {
        container_id: CONTAINER_ID.into(),
    })?;
    let uds = session.vm.uds();
    let guest = volume::Guest {
        client: &session.client,
        uds: &uds,
    };
    // Every volume gets its copy-back, whatever became of the one before.
    let mut failed = None;
    for (i, volume) in request.volumes.iter().enumerate() {
        if volume.read_only {
            continue;
        }
        match volume.copy_back(&guest, i, &entry.dir) {
            Ok(lines) => {
                for line in lines {
                    eprintln!("cocoon: volume {}: {line}", volume.host.display());
                }
            }
            Err(e) if failed.is_none() => failed = Some(e),
            Err(e) => eprintln!("cocoon: {e:#}"),
        }
    }
    failed.map_or(Ok(()), Err)
}

/// Ends the sandbox: lets the guest power off (`clean`; the agent deletes what containers are
/// left), or stops the VMM at once after a failure. Returns what the VMM said if it said anything
/// unusual.
pub fn stop(mut session: Session, clean: bool) -> Result<String> {
    if clean {
        let _ = session.client.call(Operation::DestroySandbox);
    }
    session.client.close();
    let grace = if clean {
        Duration::from_secs(10)
    } else {
        Duration::from_millis(500)
    };
    let note = session.vm.shut_down_note(grace)?;
    if let Some(passt) = session.passt.as_mut() {
        passt.stop();
    }
    Ok(note)
}

/// `error`, followed by what the VMM said.
pub fn with_vmm_note(error: anyhow::Error, note: &str) -> anyhow::Error {
    anyhow!("{error:#}{note}")
}
