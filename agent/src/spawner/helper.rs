//! The spawn helper's side: builds the requested process with libcontainer, answers one line,
//! exits. Runs single-threaded, in a process of its own (see the module above).

use std::io::Write;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::path::Path;

use libcontainer::container::builder::ContainerBuilder;
use libcontainer::syscall::syscall::SyscallType;
use oci_spec::runtime::Spec;

use super::{Outcome, Request, STREAM_FDS};
use crate::errors::chain;
use crate::exec_confinement::Confinement;

/// The helper's life, given its argument (the request in JSON); returns its exit code.
pub fn helper_main(request: Option<std::ffi::OsString>) -> i32 {
    crate::logging::init();
    let request = request
        .and_then(|r| r.into_string().ok())
        .ok_or_else(|| "the spawn helper takes one argument: its request in JSON".to_string())
        .and_then(|r| {
            serde_json::from_str::<Request>(&r).map_err(|e| format!("the spawn request: {e}"))
        });
    let outcome = match request.and_then(|r| spawn(&r)) {
        Ok(pid) => Outcome::Spawned { pid },
        Err(reason) => Outcome::Failed { reason },
    };
    let line = serde_json::to_string(&outcome).unwrap_or_default();
    let mut out = std::io::stdout();
    if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
        return 1;
    }
    0
}

/// One of the streams the agent put at [`STREAM_FDS`].
fn stream(fd: RawFd) -> Result<OwnedFd, String> {
    // SAFETY: F_GETFD only reads the descriptor's flags; it fails on a descriptor not open.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return Err(format!(
            "descriptor {fd} is not open: the spawn helper is run by the agent, with the process's streams"
        ));
    }
    // SAFETY: the descriptor is open, and the agent put it there for this process alone; nothing
    // else in this process owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Builds the process; its pid, or why not.
fn spawn(request: &Request) -> Result<i32, String> {
    let builder = ContainerBuilder::new(request.container_id.clone(), SyscallType::default())
        .with_root_path(&request.state_root)
        .map_err(|e| format!("libcontainer's state directory: {}", chain(&e)))?;
    let builder = match &request.console_socket {
        Some(socket) => builder.with_console_socket(Some(socket)),
        None => {
            let [stdin, stdout, stderr] = STREAM_FDS;
            builder
                .with_stdin(stream(stdin)?)
                .with_stdout(stream(stdout)?)
                .with_stderr(stream(stderr)?)
        }
    };
    match &request.exec_process {
        None => {
            let container = builder
                .as_init(&request.bundle)
                .with_systemd(false)
                .with_detach(true)
                .build()
                .map_err(|e| chain(&e))?;
            container
                .pid()
                .map(|pid| pid.as_raw())
                .ok_or_else(|| "libcontainer made a container with no init process".to_string())
        }
        Some(process) => {
            let executor = container_confinement(&request.bundle)?
                .executor()
                .map_err(|e| e.message)?;
            builder
                .with_executor(executor)
                .as_tenant()
                .with_process(Some(process))
                .with_detach(true)
                .build()
                .map(|pid| pid.as_raw())
                .map_err(|e| chain(&e))
        }
    }
}

/// What an exec keeps of its container: from the spec the container was created with.
fn container_confinement(bundle: &Path) -> Result<Confinement, String> {
    let config = bundle.join("config.json");
    Spec::load(&config)
        .map(|spec| Confinement::of(&spec))
        .map_err(|e| format!("reading {}: {e}", config.display()))
}
