//! One sandbox's VMM process (`cocoon-vmm`): its configuration written as the VMM reads it
//! (`vm.json`, a [`VmConfig`]), its vsock and API sockets, console log and its own log, all in the
//! VM's runtime directory (a private one goes away with it); the API socket's disk slots; how the
//! VMM ended.
//!
//! The VMM's stderr is a file (`vmm.log`), not a pipe: a pipe read only once the VMM has exited
//! would fill (64 KiB) under a guest that makes it warn often enough, and the VMM would then block
//! in its next write, vCPU and device threads included. The file is read from its end, bounded.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cocoon_common::rotating_file::previous_generation;
use cocoon_protocol::socket_path::MAX_SOCKET_PATH_LEN;
use cocoon_protocol::vm_config::{
    ConsoleConfig, DiskConfig, NetBackendConfig, NetConfig, VmConfig, VsockConfig, DEFAULT_CMDLINE,
};
use cocoon_protocol::vmm_api::{ApiRequest, ApiResponse};

use crate::client::{AgentClient, ClientError};

const API_TIMEOUT: Duration = Duration::from_secs(10);

/// The VMM's API socket in the runtime directory.
const API_SOCKET: &str = "api";

/// The VMM's hybrid-vsock socket in the runtime directory; the host's listeners for guest
/// connections are `vsock_<port>` beside it.
const VSOCK_SOCKET: &str = "vsock";

/// The VM's configuration, as `cocoon-vmm --config` reads it, in the runtime directory.
const VM_CONFIG: &str = "vm.json";

/// The guest's console output in the runtime directory.
const CONSOLE_LOG: &str = "console.log";

/// The VMM's stderr (its log) in the runtime directory.
const VMM_LOG: &str = "vmm.log";

/// How much of the VMM's log's end is read for how it ended: its verdict is its last line.
const VMM_LOG_TAIL: u64 = 64 * 1024;

/// Something about the VMM process or its API socket went wrong, said so a user can act on it.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("the VM's runtime directory {} is too long for its sockets ({} has more than {MAX_SOCKET_PATH_LEN} bytes): use a shorter directory", dir.display(), path.display())]
    NoSocketRoom { dir: PathBuf, path: PathBuf },
    #[error("{what}: {reason}")]
    Io {
        what: String,
        reason: std::io::Error,
    },
    #[error("the VMM's API answered {answer:?}: {reason}")]
    BadAnswer {
        answer: String,
        reason: serde_json::Error,
    },
    #[error("cocoon-vmm's answer to attach_disk has no capacity")]
    NoCapacity,
    #[error("cocoon-vmm: {0}")]
    Refused(String),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> VmError {
    let what = what.into();
    move |reason| VmError::Io { what, reason }
}

/// Checks that every socket a VM's runtime directory will hold fits a Unix socket's path: the
/// VMM's vsock socket with its longest listener (`vsock_4294967295`) and its API socket.
pub fn check_socket_room(dir: &Path) -> Result<(), VmError> {
    let longest = [
        dir.join(format!("{VSOCK_SOCKET}_{}", u32::MAX)),
        dir.join(API_SOCKET),
    ];
    for path in longest {
        if !cocoon_protocol::socket_path::fits(&path) {
            return Err(VmError::NoSocketRoom {
                dir: dir.to_path_buf(),
                path,
            });
        }
    }
    Ok(())
}

/// The descriptor the `index`th network device's backend has in the VMM: 3, 4, ... (after stdio).
const fn inherited_fd(index: usize) -> RawFd {
    3 + index as RawFd
}

/// One of the VM's network devices: `config`, and the descriptor its backend is (a tap or a
/// stream socket), which the VMM inherits and alone keeps open. A `Tap` backend by name needs
/// none.
#[derive(Clone, Debug)]
pub struct VmNet {
    pub config: NetConfig,
    pub fd: Option<Arc<OwnedFd>>,
}

/// What to boot.
#[derive(Clone, Debug)]
pub struct VmOptions {
    pub vmm: PathBuf,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub vcpus: u8,
    pub memory_mib: u32,
    /// Raw disk images, (path, read-only), seen by the guest as /dev/vda, /dev/vdb, ...
    pub disks: Vec<(PathBuf, bool)>,
    /// Empty writable disks after `disks`, filled while the VM runs ([`Vm::attach_disk`]).
    pub disk_slots: u8,
    /// The guest's vsock context ID.
    pub cid: u32,
    /// Appended to the kernel command line.
    pub extra_cmdline: String,
    /// Where the VM's sockets and console log go; a private temporary directory, removed with
    /// the `Vm`, when `None`. A given directory is left in place.
    pub runtime_dir: Option<PathBuf>,
    /// Network devices (virtio-net), in the order the guest sees them.
    pub nets: Vec<VmNet>,
    /// The network namespace the VMM runs in (a pod's, where its tap is), by path; the
    /// caller's when None. A VMM that a guest escaped into then reaches only the pod's network.
    pub netns: Option<PathBuf>,
}

impl VmOptions {
    /// The VM these options describe, its sockets and console log in `dir`.
    pub fn vm_config(&self, dir: &Path) -> VmConfig {
        let mut config = VmConfig::new(&self.kernel);
        config.initrd = Some(self.initrd.clone());
        config.vcpus = self.vcpus;
        config.memory_mib = self.memory_mib;
        config.cmdline = format!("{DEFAULT_CMDLINE} quiet {}", self.extra_cmdline);
        config.console = ConsoleConfig::File(dir.join(CONSOLE_LOG));
        config.vsock = Some(VsockConfig {
            cid: self.cid,
            uds: dir.join(VSOCK_SOCKET),
        });
        config.disks = self
            .disks
            .iter()
            .map(|(path, read_only)| DiskConfig {
                path: path.clone(),
                read_only: *read_only,
            })
            .collect();
        if self.disk_slots > 0 {
            config.disk_slots = self.disk_slots;
            config.api_socket = Some(dir.join(API_SOCKET));
        }
        config.nets = self
            .nets
            .iter()
            .enumerate()
            .map(|(i, net)| {
                let mut config = net.config.clone();
                if net.fd.is_some() {
                    config.backend = match config.backend {
                        NetBackendConfig::TapFd(_) | NetBackendConfig::Tap(_) => {
                            NetBackendConfig::TapFd(inherited_fd(i))
                        }
                        NetBackendConfig::StreamFd(_) => {
                            NetBackendConfig::StreamFd(inherited_fd(i))
                        }
                    };
                }
                config
            })
            .collect();
        config
    }

    /// (descriptor here, descriptor in the VMM) of each network backend the VMM inherits.
    fn inherited_fds(&self) -> Vec<(RawFd, RawFd)> {
        self.nets
            .iter()
            .enumerate()
            .filter_map(|(i, net)| net.fd.as_ref().map(|fd| (fd.as_raw_fd(), inherited_fd(i))))
            .collect()
    }
}

enum RuntimeDir {
    Private(tempfile::TempDir),
    Given(PathBuf),
}

impl RuntimeDir {
    fn path(&self) -> &Path {
        match self {
            Self::Private(dir) => dir.path(),
            Self::Given(dir) => dir,
        }
    }
}

pub struct Vm {
    child: Option<Child>,
    dir: RuntimeDir,
    /// [`Vm::exit_note`], once the VMM has exited and its log was read.
    exit_note: Option<String>,
}

impl Vm {
    /// Starts the VMM; the guest boots in the background (see `AgentClient::connect`).
    pub fn spawn(options: &VmOptions) -> Result<Self, VmError> {
        let dir = match &options.runtime_dir {
            Some(dir) => RuntimeDir::Given(dir.clone()),
            None => RuntimeDir::Private(
                tempfile::Builder::new()
                    .prefix("cocoon-vm-")
                    .tempdir()
                    .map_err(io("creating the VM's runtime directory"))?,
            ),
        };
        check_socket_room(dir.path())?;
        let config = options.vm_config(dir.path());
        let config_path = dir.path().join(VM_CONFIG);
        let json = serde_json::to_vec_pretty(&config).map_err(std::io::Error::from);
        json.and_then(|json| std::fs::write(&config_path, json))
            .map_err(io(format!(
                "writing the VM's configuration {}",
                config_path.display()
            )))?;
        let log_path = dir.path().join(VMM_LOG);
        let log = File::options()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(io(format!("creating the VMM's log {}", log_path.display())))?;
        let mut cmd = Command::new(&options.vmm);
        cmd.arg("--config").arg(&config_path);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log));
        let fds = options.inherited_fds();
        // Opened here (close-on-exec), entered in the child: the caller's threads stay where
        // they are.
        let netns = options
            .netns
            .as_ref()
            .map(|path| {
                File::open(path).map_err(io(format!(
                    "the network namespace {} for the VMM (give an existing namespace)",
                    path.display()
                )))
            })
            .transpose()?;
        let netns_fd = netns.as_ref().map(AsRawFd::as_raw_fd);
        // SAFETY: prctl(2), setns(2), fcntl(2) and dup2(2) only, between fork and exec: the VMM
        // dies with the thread that started it, so a killed launcher or shim never leaves a VM
        // running with nobody to stop it; it runs in its network namespace, and gets its network
        // backends' descriptors.
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if let Some(fd) = netns_fd {
                    if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                cocoon_common::inherit::move_descriptors(&fds)
            });
        }
        let child = cmd
            .spawn()
            .map_err(io(format!("starting {}", options.vmm.display())))?;
        drop(netns);
        Ok(Self {
            child: Some(child),
            dir,
            exit_note: None,
        })
    }

    /// The VMM's hybrid-vsock socket.
    pub fn uds(&self) -> PathBuf {
        self.dir.path().join(VSOCK_SOCKET)
    }

    /// Connects to the guest's agent once it serves, within `timeout`; gives up at once if the
    /// VMM exits first (a guest that crashed or panicked while booting).
    pub fn connect_agent(&mut self, timeout: Duration) -> Result<AgentClient, ClientError> {
        let uds = self.uds();
        let child = &mut self.child;
        AgentClient::connect_while(&uds, timeout, || {
            child
                .as_mut()
                .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
        })
    }

    /// Puts the raw image at `path` into the VM's empty disk slot `slot` (the guest's disk after
    /// the boot disks); returns its size in bytes. A read-only image refuses the guest's writes.
    pub fn attach_disk(&self, slot: usize, path: &Path, read_only: bool) -> Result<u64, VmError> {
        let answer = self.api(&ApiRequest::AttachDisk {
            slot,
            path: path.to_path_buf(),
            read_only,
        })?;
        answer.capacity_bytes.ok_or(VmError::NoCapacity)
    }

    /// Empties the VM's disk slot `slot`.
    pub fn detach_disk(&self, slot: usize) -> Result<(), VmError> {
        self.api(&ApiRequest::DetachDisk { slot }).map(drop)
    }

    /// One request on the VMM's API socket.
    fn api(&self, request: &ApiRequest) -> Result<ApiResponse, VmError> {
        let path = self.dir.path().join(API_SOCKET);
        let stream = UnixStream::connect(&path).map_err(io(format!(
            "connecting to the VMM's API socket {}",
            path.display()
        )))?;
        let mut line =
            serde_json::to_string(request).map_err(|e| io("encoding an API request")(e.into()))?;
        line.push('\n');
        stream
            .set_read_timeout(Some(API_TIMEOUT))
            .and_then(|()| (&stream).write_all(line.as_bytes()))
            .map_err(io("sending the VMM an API request"))?;
        let mut answer = String::new();
        BufReader::new(&stream)
            .read_line(&mut answer)
            .map_err(io("reading the VMM's API answer"))?;
        let answer: ApiResponse = serde_json::from_str(&answer)
            .map_err(|reason| VmError::BadAnswer { answer, reason })?;
        if !answer.ok {
            return Err(VmError::Refused(
                answer
                    .error
                    .unwrap_or_else(|| "request refused".to_string()),
            ));
        }
        Ok(answer)
    }

    pub fn runtime_dir(&self) -> &Path {
        self.dir.path()
    }

    /// The guest's console output the VMM kept (at most twice its console bound: the earlier
    /// generation, then the current one).
    pub fn console(&self) -> String {
        let current = self.dir.path().join(CONSOLE_LOG);
        let earlier = previous_generation(&current);
        let read = |path: &Path| std::fs::read_to_string(path).unwrap_or_default();
        read(&earlier) + &read(&current)
    }

    /// The end of the guest's console output: at most its last `limit` bytes, from a line's
    /// start (the guest writes it: a caller logging it must not read it whole), reaching into
    /// the earlier generation when the current one is shorter.
    pub fn console_tail(&self, limit: u64) -> String {
        let current = self.dir.path().join(CONSOLE_LOG);
        let len = std::fs::metadata(&current).map_or(0, |m| m.len());
        let tail = read_tail(&current, limit);
        if len >= limit {
            return tail;
        }
        read_tail(&previous_generation(&current), limit - len) + &tail
    }

    /// The end of the VMM's log (its stderr) so far: at most its last 64 KiB, from a line's
    /// start.
    pub fn vmm_log(&self) -> String {
        read_tail(&self.dir.path().join(VMM_LOG), VMM_LOG_TAIL)
    }

    /// The VMM's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(std::process::Child::id)
    }

    /// Kills the VMM at once (SIGKILL), leaving it to be reaped by [`Self::shut_down`] or the
    /// drop: for a guest that stopped answering.
    pub fn kill(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
        }
    }

    /// [`Self::shut_down`], summed up for an error message: empty after a clean exit, else
    /// ` [cocoon-vmm exit CODE: what it said last]` (see [`exit_summary`]).
    pub fn shut_down_note(&mut self, timeout: Duration) -> Result<String, VmError> {
        let (code, stderr) = self.shut_down(timeout)?;
        Ok(exit_summary(code, &stderr))
    }

    /// Why the VMM ended, when it has ended on its own within `wait` (the guest crashed or
    /// powered off, or the VMM was killed): [`exit_summary`] of its status and log. None while
    /// it still runs. For a caller that lost the agent and wants to say why; every caller is
    /// told the same.
    pub fn exit_note(&mut self, wait: Duration) -> Option<String> {
        if let Some(note) = &self.exit_note {
            return Some(note.clone());
        }
        let child = self.child.as_mut()?;
        let deadline = Instant::now() + wait;
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => return None,
            }
        };
        // It has exited: its log holds all it said.
        let code = status
            .code()
            .or_else(|| status.signal().map(|signal| 128 + signal));
        let note = exit_summary(code, &self.vmm_log());
        self.exit_note = Some(note.clone());
        Some(note)
    }

    /// Waits up to `timeout` for the VMM to exit on its own (after the guest powered off), then
    /// stops it. Returns its exit status and the end of its log ([`Self::vmm_log`]).
    pub fn shut_down(&mut self, timeout: Duration) -> Result<(Option<i32>, String), VmError> {
        let Some(mut child) = self.child.take() else {
            return Ok((None, String::new()));
        };
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if child
                .try_wait()
                .map_err(io("waiting for the VMM"))?
                .is_some()
            {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        if child
            .try_wait()
            .map_err(io("waiting for the VMM"))?
            .is_none()
        {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        let status = child.wait().map_err(io("waiting for the VMM"))?;
        Ok((status.code(), self.vmm_log()))
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The last `limit` bytes of the file at `path` (from the first line that starts in them), or
/// all of it when shorter; empty when it cannot be read.
pub fn read_tail(path: &Path, limit: u64) -> String {
    let Ok(mut file) = File::open(path) else {
        return String::new();
    };
    let len = file.metadata().map_or(0, |m| m.len());
    let start = len.saturating_sub(limit);
    let mut bytes = Vec::new();
    if file.seek(SeekFrom::Start(start)).is_err()
        || file.take(limit).read_to_end(&mut bytes).is_err()
    {
        return String::new();
    }
    let text = String::from_utf8_lossy(&bytes);
    match (start, text.split_once('\n')) {
        (0, _) | (_, None) => text.into_owned(),
        (_, Some((_cut, rest))) => rest.to_string(),
    }
}

/// A VMM's exit for an error message: empty after a clean exit (0, or 143 or no code when it was
/// stopped), else ` [cocoon-vmm exit CODE: LINE]`, LINE being its last `cocoon-vmm:` line (its
/// verdict: a guest crash, a kernel panic, an error), or its first line when it wrote none.
pub fn exit_summary(code: Option<i32>, stderr: &str) -> String {
    let lines = || stderr.lines().map(str::trim).filter(|l| !l.is_empty());
    let said = lines()
        .rfind(|l| l.starts_with("cocoon-vmm:"))
        .or_else(|| lines().next());
    let shown = code.map_or_else(|| "by a signal".to_string(), |c| c.to_string());
    match (said, code) {
        (Some(line), _) => format!(" [cocoon-vmm exit {shown}: {line}]"),
        (None, Some(0) | Some(143) | None) => String::new(),
        (None, Some(_)) => format!(" [cocoon-vmm exit {shown}]"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_vm_config_names_every_file_in_the_runtime_directory() {
        let mut options = VmOptions {
            vmm: "/bin/cocoon-vmm".into(),
            kernel: "/g/bzImage".into(),
            initrd: "/g/initramfs.cpio".into(),
            vcpus: 2,
            memory_mib: 256,
            disks: vec![("/l/a.ext4".into(), true), ("/l/rw.ext4".into(), false)],
            disk_slots: 0,
            cid: 7,
            extra_cmdline: "cocoon.root=vda".into(),
            runtime_dir: None,
            nets: Vec::new(),
            netns: None,
        };
        let dir = Path::new("/run/cocoon/vm1");
        let config = options.vm_config(dir);
        assert_eq!(config.kernel, Path::new("/g/bzImage"));
        assert_eq!(
            config.initrd.as_deref(),
            Some(Path::new("/g/initramfs.cpio"))
        );
        assert_eq!((config.vcpus, config.memory_mib), (2, 256));
        assert_eq!(
            config.cmdline,
            format!("{DEFAULT_CMDLINE} quiet cocoon.root=vda")
        );
        assert_eq!(config.console, ConsoleConfig::File(dir.join("console.log")));
        assert_eq!(
            config.vsock,
            Some(VsockConfig {
                cid: 7,
                uds: dir.join("vsock")
            })
        );
        let disks: Vec<_> = config
            .disks
            .iter()
            .map(|d| (d.path.clone(), d.read_only))
            .collect();
        assert_eq!(disks, options.disks);
        assert_eq!((config.disk_slots, config.api_socket), (0, None));

        options.disk_slots = 3;
        let config = options.vm_config(dir);
        assert_eq!(config.disk_slots, 3);
        assert_eq!(config.api_socket, Some(dir.join("api")));
        // What the VMM reads back is what was written.
        let json = serde_json::to_string(&config).unwrap();
        assert_eq!(serde_json::from_str::<VmConfig>(&json).unwrap(), config);
    }

    #[test]
    fn network_backends_get_the_descriptors_the_vmm_inherits() {
        let (a, _b) = UnixStream::pair().unwrap();
        let fd = Arc::new(OwnedFd::from(a));
        let mut options = stand_in(Path::new("/bin/true"));
        options.nets = vec![
            VmNet {
                config: NetConfig::new(NetBackendConfig::Tap("tap-by-name".into())),
                fd: None,
            },
            VmNet {
                config: NetConfig::new(NetBackendConfig::StreamFd(-1)),
                fd: Some(fd.clone()),
            },
        ];
        let config = options.vm_config(Path::new("/run/x"));
        let backends: Vec<_> = config.nets.iter().map(|n| n.backend.clone()).collect();
        assert_eq!(
            backends,
            [
                NetBackendConfig::Tap("tap-by-name".into()),
                NetBackendConfig::StreamFd(4)
            ]
        );
        assert_eq!(options.inherited_fds(), [(fd.as_raw_fd(), 4)]);
    }

    #[test]
    fn a_runtime_directory_too_long_for_its_sockets_is_refused() {
        let fits = Path::new("/run/cocoon/ctr/0123456789abcdef");
        check_socket_room(fits).unwrap();
        let long = PathBuf::from("/").join("d".repeat(100));
        let e = check_socket_room(&long).unwrap_err().to_string();
        assert!(e.contains("use a shorter directory"), "{e}");
    }

    #[test]
    fn an_exit_is_summed_up_by_the_vmm_s_verdict() {
        let crashed = "WARN no vmx/svm\ncocoon-vmm: vCPU 0: rip=1\ncocoon-vmm: guest crashed: vCPU 0: guest triple fault\n";
        assert_eq!(
            exit_summary(Some(2), crashed),
            " [cocoon-vmm exit 2: cocoon-vmm: guest crashed: vCPU 0: guest triple fault]"
        );
        assert_eq!(
            exit_summary(Some(1), "\nsomething else\nand more\n"),
            " [cocoon-vmm exit 1: something else]"
        );
        assert_eq!(exit_summary(Some(137), ""), " [cocoon-vmm exit 137]");
        for stopped in [Some(0), Some(143), None] {
            assert_eq!(exit_summary(stopped, "\n"), "");
        }
    }

    /// Options that boot nothing: `vmm` stands in for the VMM.
    fn stand_in(vmm: &Path) -> VmOptions {
        VmOptions {
            vmm: vmm.into(),
            kernel: "/nonexistent".into(),
            initrd: "/nonexistent".into(),
            vcpus: 1,
            memory_mib: 64,
            disks: Vec::new(),
            disk_slots: 0,
            cid: 3,
            extra_cmdline: String::new(),
            runtime_dir: None,
            nets: Vec::new(),
            netns: None,
        }
    }

    /// An executable shell script standing in for a VMM.
    fn script(dir: &Path, body: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.join("vmm.sh");
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    #[test]
    fn a_vmm_that_exits_says_why_and_a_running_one_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let crashed = script(
            dir.path(),
            "echo 'cocoon-vmm: guest crashed: vCPU 0: guest triple fault' >&2; exit 2",
        );
        let mut vm = Vm::spawn(&stand_in(&crashed)).unwrap();
        let crash = " [cocoon-vmm exit 2: cocoon-vmm: guest crashed: vCPU 0: guest triple fault]";
        assert_eq!(
            vm.exit_note(Duration::from_secs(30)).as_deref(),
            Some(crash)
        );
        // Every process of the VM is told the same.
        assert_eq!(vm.exit_note(Duration::ZERO).as_deref(), Some(crash));

        let running = script(dir.path(), "exec sleep 60");
        let mut vm = Vm::spawn(&stand_in(&running)).unwrap();
        assert_eq!(vm.exit_note(Duration::from_millis(200)), None);
        let pid = nix::unistd::Pid::from_raw(vm.pid().unwrap() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).unwrap();
        assert_eq!(
            vm.exit_note(Duration::from_secs(30)).as_deref(),
            Some(" [cocoon-vmm exit 137]")
        );
    }

    #[test]
    fn a_vmm_that_writes_more_than_a_pipe_holds_never_blocks_and_its_verdict_is_kept() {
        // 256 KiB of warnings (a pipe holds 64 KiB), then the verdict: written to the log file,
        // the VMM never blocks, and only the log's end is read back.
        let dir = tempfile::tempdir().unwrap();
        let chatty = script(
            dir.path(),
            "i=0; while [ $i -lt 4096 ]; do \
             echo 'virtio-net eth0: dropped a frame from another MAC address (so far: 1 spoofed)......' >&2; \
             i=$((i + 1)); done; echo 'cocoon-vmm: guest stopped' >&2; exit 3",
        );
        let mut vm = Vm::spawn(&stand_in(&chatty)).unwrap();
        assert_eq!(
            vm.exit_note(Duration::from_secs(60)).as_deref(),
            Some(" [cocoon-vmm exit 3: cocoon-vmm: guest stopped]")
        );
        let log = vm.vmm_log();
        assert!(log.len() as u64 <= VMM_LOG_TAIL, "{}", log.len());
        assert!(
            log.starts_with("virtio-net eth0: dropped")
                && log.ends_with("cocoon-vmm: guest stopped\n"),
            "the tail starts at a line: {:?}",
            &log[..80]
        );
    }

    #[test]
    fn a_vmm_that_exits_is_not_waited_for() {
        // `false` stands in for a VMM whose guest crashed while booting: it exits at once.
        let mut vm = Vm::spawn(&stand_in(Path::new("false"))).unwrap();
        let started = Instant::now();
        let error = match vm.connect_agent(Duration::from_secs(60)) {
            Ok(_) => panic!("nothing serves the agent"),
            Err(e) => e,
        };
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "waited {:?} for a VMM that had exited: {error}",
            started.elapsed()
        );
        assert!(matches!(error, ClientError::Unreachable { .. }), "{error}");
    }
}
