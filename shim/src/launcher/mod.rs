//! `cocoon run`: boots a microVM, runs one container in it from an image, streams its stdio,
//! forwards signals, and exits with the container's exit code (128 + N for a signal). The VM and
//! everything it used on the host are gone when `cocoon run` returns, however it ends.

mod guest;
mod image;
mod terminal;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use cocoon_protocol::{Operation, Reply, Rootfs, StdioPorts};
use cocoon_sandbox::spec::{container_spec, ProcessOptions};
use cocoon_sandbox::{AgentClient, HostPort, Vm, VmOptions};

/// `cocoon` itself failed (as `docker run` does with 125).
pub const LAUNCH_FAILED: u8 = 125;
const CONTAINER_ID: &str = "main";
const AGENT_TIMEOUT: Duration = Duration::from_secs(120);
const MIN_MEMORY_MIB: u64 = 64;

#[derive(Args, Debug)]
pub struct RunArgs {
    /// Accepted for docker compatibility: every run is removed when it ends.
    #[arg(long)]
    pub rm: bool,
    /// Keep stdin open and pass it to the container.
    #[arg(short, long)]
    pub interactive: bool,
    /// Give the container a terminal (with window-size changes).
    #[arg(short, long)]
    pub tty: bool,
    /// Environment variable for the container (repeatable).
    #[arg(short, long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Working directory inside the container.
    #[arg(short, long, value_name = "DIR")]
    pub workdir: Option<String>,
    /// User (and group) to run as, numeric.
    #[arg(short, long, value_name = "UID[:GID]")]
    pub user: Option<String>,
    /// vCPUs of the microVM.
    #[arg(long, default_value_t = 1)]
    pub cpus: u8,
    /// Memory of the microVM (K, M or G suffix; plain numbers are bytes).
    #[arg(long, default_value = "256M")]
    pub memory: String,
    /// The container's name (also its hostname).
    #[arg(long)]
    pub name: Option<String>,
    /// Guest kernel (default: `make guest`'s, next to this binary).
    #[arg(long, value_name = "PATH")]
    pub kernel: Option<PathBuf>,
    /// Guest initramfs holding the agent.
    #[arg(long, value_name = "PATH")]
    pub initrd: Option<PathBuf>,
    /// `default` (the built-in busybox image) or a root filesystem directory.
    pub image: String,
    /// The command and its arguments (after `--`).
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

/// `256M`, `1g`, `65536k`, or bytes; in MiB.
pub fn parse_memory(text: &str) -> Result<u64> {
    let lower = text.trim().to_ascii_lowercase();
    let (digits, shift) = match lower.chars().last() {
        Some('k') => (&lower[..lower.len() - 1], 10),
        Some('m') => (&lower[..lower.len() - 1], 20),
        Some('g') => (&lower[..lower.len() - 1], 30),
        _ => (lower.as_str(), 0),
    };
    let value: u64 = digits
        .parse()
        .map_err(|_| anyhow!("--memory '{text}' is not a size: use e.g. 256M or 1G"))?;
    let mib = value
        .checked_shl(shift)
        .map(|b| b >> 20)
        .unwrap_or(u64::MAX);
    if mib < MIN_MEMORY_MIB {
        bail!("--memory {text} is too small: a microVM needs at least {MIN_MEMORY_MIB}M");
    }
    Ok(mib)
}

fn parse_user(text: &str) -> Result<(u32, u32)> {
    let bad = || anyhow!("-u '{text}': give a numeric UID or UID:GID");
    match text.split_once(':') {
        Some((u, g)) => Ok((u.parse().map_err(|_| bad())?, g.parse().map_err(|_| bad())?)),
        None => {
            let uid = text.parse().map_err(|_| bad())?;
            Ok((uid, uid))
        }
    }
}

/// Copies a container stream to one of ours until it ends.
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

/// Runs the container; returns its exit code.
pub fn run(args: &RunArgs) -> Result<i32> {
    let memory_mib = parse_memory(&args.memory)?;
    let (uid, gid) = args
        .user
        .as_deref()
        .map(parse_user)
        .transpose()?
        .unwrap_or((0, 0));
    if args.cpus == 0 {
        bail!("--cpus must be at least 1");
    }
    for e in &args.env {
        if !e.contains('=') {
            bail!("-e '{e}': use KEY=VALUE");
        }
    }
    let files = guest::GuestFiles::locate(args.kernel.as_deref(), args.initrd.as_deref())?;
    check_kvm()?;

    let scratch = tempfile::Builder::new().prefix("cocoon-run-").tempdir()?;
    let disk = scratch.path().join("rootfs.ext4");
    image::prepare(&args.image, &disk)?;
    let mut vm = Vm::spawn(&VmOptions {
        vmm: files.vmm,
        kernel: files.kernel,
        initrd: files.initrd,
        vcpus: args.cpus,
        memory_mib: u32::try_from(memory_mib).unwrap_or(u32::MAX),
        disks: vec![(disk, false)],
        cid: 3,
        extra_cmdline: String::new(),
    })?;
    let result = run_in(&vm, args, uid, gid);
    // After a clean run the guest powers itself off; after a failure there is nothing to wait for.
    let grace = if result.is_ok() {
        Duration::from_secs(10)
    } else {
        Duration::from_millis(500)
    };
    let (code, stderr) = vm.shut_down(grace)?;
    result.map_err(|e| {
        // What went wrong first; then what the VMM said, if it said anything unusual.
        let vmm = match (code, stderr.lines().find(|l| !l.trim().is_empty())) {
            (_, Some(line)) => format!(" [cocoon-vmm exit {code:?}: {}]", line.trim()),
            (Some(0) | Some(143) | None, None) => String::new(),
            (Some(other), None) => format!(" [cocoon-vmm exit {other}]"),
        };
        anyhow!("{e:#}{vmm}")
    })
}

/// Refuses early, in one line, where KVM cannot work.
fn check_kvm() -> Result<()> {
    if let Err(e) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        bail!("cannot open /dev/kvm: {e} (a microVM needs KVM: load kvm-intel/kvm-amd, or add yourself to the kvm group)");
    }
    Ok(())
}

fn run_in(vm: &Vm, args: &RunArgs, uid: u32, gid: u32) -> Result<i32> {
    let client = Arc::new(AgentClient::connect(&vm.uds(), AGENT_TIMEOUT)?);
    let hostname = args.name.clone().unwrap_or_else(|| "cocoon".into());
    let spec = container_spec(
        &ProcessOptions {
            args: args.command.clone(),
            env: args.env.clone(),
            cwd: args.workdir.clone(),
            uid,
            gid,
            terminal: args.tty,
        },
        &hostname,
        false,
    );
    let next_port = AtomicU32::new(1000);
    let bind = |on: bool| -> Result<Option<HostPort>> {
        on.then(|| HostPort::bind(&vm.uds(), next_port.fetch_add(1, Ordering::Relaxed)))
            .transpose()
            .context("binding a stdio socket")
    };
    let want_stdin = args.interactive || args.tty;
    let (stdin, stdout, stderr) = (bind(want_stdin)?, bind(true)?, bind(!args.tty)?);
    let ports = StdioPorts {
        stdin: stdin.as_ref().map(|p| p.port),
        stdout: stdout.as_ref().map(|p| p.port),
        stderr: stderr.as_ref().map(|p| p.port),
    };
    client.call(Operation::CreateContainer {
        container_id: CONTAINER_ID.into(),
        spec: Box::new(spec),
        rootfs: Rootfs::BlockDevice {
            device: "/dev/vda".into(),
            fstype: "ext4".into(),
            read_only: false,
        },
        stdio: ports,
    })?;
    let accept = |p: Option<HostPort>| -> Result<Option<UnixStream>> {
        p.map(|p| p.accept(Duration::from_secs(30)))
            .transpose()
            .context("connecting the container's stdio")
    };
    let (stdin, stdout, stderr) = (accept(stdin)?, accept(stdout)?, accept(stderr)?);

    let raw = if args.tty {
        terminal::RawMode::enter()
    } else {
        None
    };
    if args.tty {
        if let Some((rows, cols)) = terminal::size() {
            client.call(Operation::ResizeTty {
                container_id: CONTAINER_ID.into(),
                exec_id: None,
                rows,
                cols,
            })?;
        }
    }
    let signals = terminal::forward_signals(client.clone(), CONTAINER_ID, args.tty, vm.pid())?;
    client.call(Operation::Start {
        container_id: CONTAINER_ID.into(),
    })?;
    let mut pumps = Vec::new();
    if let Some(out) = stdout {
        pumps.push(pump(out, std::io::stdout()));
    }
    if let Some(err) = stderr {
        pumps.push(pump(err, std::io::stderr()));
    }
    if let Some(mut input) = stdin {
        // Not joined: it may sit in a read of our stdin after the container is gone.
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut std::io::stdin().lock(), &mut input);
            let _ = input.shutdown(std::net::Shutdown::Write);
        });
    }
    let status = match client.call(Operation::Wait {
        container_id: CONTAINER_ID.into(),
        exec_id: None,
    })? {
        Reply::Exited { status } => status,
        other => bail!("the agent answered {other:?} to wait"),
    };
    for p in pumps {
        let _ = p.join();
    }
    signals.close();
    drop(raw);
    let _ = client.call(Operation::Delete {
        container_id: CONTAINER_ID.into(),
    });
    let _ = client.call(Operation::DestroySandbox);
    client.close();
    Ok(status.code())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_sizes() {
        assert_eq!(parse_memory("256M").unwrap(), 256);
        assert_eq!(parse_memory("1g").unwrap(), 1024);
        assert_eq!(parse_memory("131072k").unwrap(), 128);
        assert_eq!(parse_memory("134217728").unwrap(), 128);
        for bad in ["0", "12M", "lots", "", "1T"] {
            assert!(parse_memory(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn users() {
        assert_eq!(parse_user("1000").unwrap(), (1000, 1000));
        assert_eq!(parse_user("1000:50").unwrap(), (1000, 50));
        assert!(parse_user("root").is_err());
        assert!(parse_user("1:x").is_err());
    }
}
