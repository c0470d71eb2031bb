//! `cocoon run`: checks the request, claims the container's name, then runs it attached (stdio
//! streamed, signals forwarded) or detached under the monitor process (`cocoon monitor NAME`),
//! which keeps its log and records how it ends.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};
use cocoon_protocol::Operation;

use crate::args::RunArgs;
use crate::network::Network;
use crate::request::{self, Request};
use crate::session::{self, Session, Stdio as ProcessStdio, CONTAINER_ID};
use crate::state::{self, Entry, Record, Root, Status};
use crate::target::Target;
use crate::{emulated, image, logs};

/// `cocoon` itself failed (as `docker run` does with 125).
pub const LAUNCH_FAILED: u8 = 125;
/// The first host port for a container's own stdio.
const MAIN_STDIO_PORT: u32 = 1000;
/// What the monitor prints once the container runs.
const MONITOR_READY: &str = "started";

/// Checks the command line; what the image adds comes later.
fn request_from(args: &RunArgs) -> Result<Request> {
    let memory_mib = request::parse_memory(&args.memory)?;
    let process = args.process.process(&args.command)?;
    if args.cpus == 0 {
        bail!("--cpus must be at least 1");
    }
    if args.detach && args.process.wants_stdin() {
        bail!("-d cannot be combined with -i or -t (cocoon has no attach): run detached, then use `cocoon exec -it NAME sh`");
    }
    let volumes = request::parse_volumes(&args.volumes)?;
    let network = Network::from_flags(&args.network, &args.publish, &args.add_host)?;
    let files =
        cocoon_sandbox::GuestFiles::locate(None, args.kernel.as_deref(), args.initrd.as_deref())?;
    cocoon_sandbox::check_kvm()?;
    Ok(Request {
        image: args.image.clone(),
        process,
        interactive: args.process.interactive,
        hostname: String::new(),
        vcpus: args.cpus,
        memory_mib,
        volumes,
        vmm: files.vmm,
        kernel: files.kernel,
        initrd: files.initrd,
        remove_on_exit: args.rm || !args.detach,
        network,
    })
}

/// Runs the container; returns the exit code for `cocoon run`.
pub fn run(root: Option<&Path>, args: &RunArgs) -> Result<i32> {
    if args.emulated {
        return emulated::run(args);
    }
    if let Some(name) = &args.name {
        state::check_name(name)?;
    }
    let mut request = request_from(args)?;
    let root = Root::locate(root)?;
    let name = args.name.clone().unwrap_or_else(state::generated_name);
    request.hostname = name.clone();
    let entry = root.claim(&name)?;
    let result = prepare(&entry, &mut request, args.detach).and_then(|()| {
        if args.detach {
            start_monitor(&root, &entry, &request)
        } else {
            run_attached(&entry, &request)
        }
    });
    if result.is_err() || !args.detach {
        entry.remove()?;
    }
    result
}

/// Records the container and makes its disks.
fn prepare(entry: &Entry, request: &mut Request, detached: bool) -> Result<()> {
    entry.save(&Record {
        name: entry.name.clone(),
        image: request.image.clone(),
        command: request.process.args.clone(),
        created: state::now(),
        finished: None,
        status: Status::Creating,
        watcher_pid: std::process::id(),
        vmm_pid: None,
        detached,
        ports: request.network.ports_column(),
    })?;
    let image = image::prepare(&request.image, &session::rootfs_disk(entry))?;
    request.process.apply_image(&image)?;
    entry.update(|r| r.command = request.process.args.clone())?;
    for (i, volume) in request.volumes.iter_mut().enumerate() {
        volume.make_image(&session::volume_disk(entry, i))?;
    }
    Ok(())
}

fn run_attached(entry: &Entry, request: &Request) -> Result<i32> {
    let session = session::boot(entry, request)?;
    let result = attached_in(entry, &session, request)
        .and_then(|code| session::finish(&session, entry, request).map(|()| code));
    let note = session::stop(session, result.is_ok())?;
    result.map_err(|e| session::with_vmm_note(e, &note))
}

fn attached_in(entry: &Entry, session: &Session, request: &Request) -> Result<i32> {
    let tty = request.process.terminal;
    let stdio = ProcessStdio::bind(
        &entry.vsock(),
        MAIN_STDIO_PORT,
        request.interactive || tty,
        tty,
    )?;
    session::create(session, request, stdio.ports())?;
    let streams = stdio.accept()?;
    entry.update(|r| r.status = Status::Running)?;
    session::attach(
        &session.client,
        &Target {
            container_id: CONTAINER_ID.into(),
            exec_id: None,
        },
        streams,
        tty,
        Some(Operation::Start {
            container_id: CONTAINER_ID.into(),
        }),
        session.vm.pid(),
    )
}

/// Starts the detached monitor and waits until the container runs (or failed to).
fn start_monitor(root: &Root, entry: &Entry, request: &Request) -> Result<i32> {
    request.save(&entry.dir)?;
    let exe = std::env::current_exe().context("finding the cocoon binary")?;
    let log = File::create(entry.dir.join("monitor.log"))?;
    let mut cmd = Command::new(exe);
    cmd.arg("--root")
        .arg(root.path())
        .arg("monitor")
        .arg(&entry.name)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log);
    // SAFETY: setsid(2) only, between fork and exec: the monitor leaves our session, so our
    // terminal's signals and hang-up do not reach it.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().context("starting the monitor")?;
    let mut said = String::new();
    if let Some(out) = child.stdout.take() {
        BufReader::new(out).read_line(&mut said)?;
    }
    let said = said.trim();
    if said == MONITOR_READY {
        println!("{}", entry.name);
        // The monitor lives on; it is no child of ours to reap once we exit.
        return Ok(0);
    }
    let _ = child.wait();
    let log = std::fs::read_to_string(entry.dir.join("monitor.log")).unwrap_or_default();
    match said.strip_prefix("error: ") {
        Some(error) => bail!("{error}"),
        None => bail!(
            "the monitor ended before the container started: {}",
            log.lines().last().unwrap_or("no message")
        ),
    }
}

/// The detached monitor (`cocoon monitor NAME`, started by `cocoon run -d`): boots the VM, runs
/// the container with its output going to the log, tells the parent, then waits for the end and
/// records it. Its stdout is the parent's pipe until the container runs.
pub fn monitor(root: Option<&Path>, name: &str) -> Result<()> {
    let root = Root::locate(root)?;
    let (entry, _) = root.open(name)?;
    let request = Request::load(&entry.dir)?;
    entry.update(|r| r.watcher_pid = std::process::id())?;
    // SAFETY: signal(2) with SIG_IGN: a stray SIGINT or SIGHUP does not end the monitor.
    unsafe {
        libc::signal(libc::SIGINT, libc::SIG_IGN);
        libc::signal(libc::SIGHUP, libc::SIG_IGN);
    }
    let started =
        session::boot(&entry, &request).and_then(|s| match start_logged(&entry, &s, &request) {
            Ok(recorders) => Ok((s, recorders)),
            Err(e) => {
                let note = session::stop(s, false).unwrap_or_default();
                Err(session::with_vmm_note(e, &note))
            }
        });
    let (s, recorders) = match started {
        Ok(started) => started,
        Err(e) => {
            println!("error: {e:#}");
            return Err(e);
        }
    };
    entry.update(|r| r.status = Status::Running)?;
    println!("{MONITOR_READY}");
    let _ = std::io::stdout().flush();
    detach_stdout();

    let target = Target {
        container_id: CONTAINER_ID.into(),
        exec_id: None,
    };
    let status = session::wait(&s.client, &target);
    for r in recorders {
        let _ = r.join();
    }
    let finished = status.map(|code| (code, session::finish(&s, &entry, &request)));
    let clean = matches!(finished, Ok((_, Ok(()))));
    let note = session::stop(s, clean).unwrap_or_default();
    let status = match finished.map_err(|e| session::with_vmm_note(e, &note)) {
        Ok((code, Ok(()))) => Status::Exited { code },
        Ok((code, Err(e))) => Status::Failed {
            error: format!("exited {code}, but {e:#}"),
        },
        Err(e) => Status::Failed {
            error: format!("{e:#}"),
        },
    };
    // The disks are of no more use; the record and the log stay until `cocoon rm`.
    let _ = std::fs::remove_file(session::rootfs_disk(&entry));
    if request.remove_on_exit {
        return entry.remove();
    }
    entry.update(|r| {
        r.status = status;
        r.finished = Some(state::now());
    })
}

/// Creates and starts the container with stdout and stderr recorded in its log.
fn start_logged(
    entry: &Entry,
    session: &Session,
    request: &Request,
) -> Result<Vec<std::thread::JoinHandle<()>>> {
    let stdio = ProcessStdio::bind(&entry.vsock(), MAIN_STDIO_PORT, false, false)?;
    session::create(session, request, stdio.ports())?;
    let streams = stdio.accept()?;
    let log = logs::create(&entry.log()).context("creating the container's log")?;
    let mut recorders = Vec::new();
    if let Some(out) = streams.stdout {
        recorders.push(logs::record(out, logs::Stream::Stdout, log.clone()));
    }
    if let Some(err) = streams.stderr {
        recorders.push(logs::record(err, logs::Stream::Stderr, log));
    }
    session.client.call(Operation::Start {
        container_id: CONTAINER_ID.into(),
    })?;
    Ok(recorders)
}

/// Points stdout at /dev/null, closing the parent's pipe (it is waiting for EOF or a line).
fn detach_stdout() {
    if let Ok(null) = File::options().write(true).open("/dev/null") {
        use std::os::fd::AsRawFd;
        let _ = nix::unistd::dup2(null.as_raw_fd(), libc::STDOUT_FILENO);
    }
}
