//! The agent's side: runs the spawn helper for one process and reads its answer, within a bound.
//! The caller holds the reaper's spawn lock, so the helper's exit is collected here, by pid.

use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use super::{Outcome, Request, HELPER_COMMAND, STREAM_FDS};

/// How long the helper may take to build a process (mounts, cgroups, the process's setup);
/// past it the helper is killed and the spawn fails.
const HELPER_TIMEOUT: Duration = Duration::from_secs(60);

/// The most the helper's answer may be (a pid, or libcontainer's reason).
const MAX_ANSWER: usize = 64 * 1024;

#[derive(Debug)]
pub enum SpawnError {
    /// The helper did not run or did not answer: the agent's fault, or the guest's.
    Helper(String),
    /// libcontainer refused the process or failed to make it, for this reason.
    Refused(String),
}

/// Runs the helper on `program` (the agent's binary) for `request`, the process's streams given
/// to it at [`STREAM_FDS`] (None with a console socket); the new process's pid.
pub fn run(
    program: &Path,
    request: &Request,
    streams: Option<[OwnedFd; 3]>,
) -> Result<i32, SpawnError> {
    let json = serde_json::to_string(request)
        .map_err(|e| SpawnError::Helper(format!("encoding the spawn request: {e}")))?;
    let mut cmd = Command::new(program);
    cmd.arg(HELPER_COMMAND)
        .arg(json)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let fds: Vec<(RawFd, RawFd)> = streams
        .iter()
        .flatten()
        .map(AsRawFd::as_raw_fd)
        .zip(STREAM_FDS)
        .collect();
    // SAFETY: move_descriptors makes only async-signal-safe calls (fcntl, dup2), as must be done
    // between fork and exec in a process with threads.
    unsafe {
        cmd.pre_exec(move || cocoon_common::inherit::move_descriptors(&fds));
    }
    let mut child = cmd.spawn().map_err(|e| {
        SpawnError::Helper(format!(
            "starting the spawn helper {}: {e}",
            program.display()
        ))
    })?;
    // The helper has its copies; the process's are its own.
    drop(streams);
    let answer = read_answer(&mut child, Instant::now() + HELPER_TIMEOUT);
    if answer.is_err() {
        let _ = child.kill();
    }
    let status = child.wait();
    let answer = answer?;
    match serde_json::from_str::<Outcome>(answer.trim_end()) {
        Ok(Outcome::Spawned { pid }) if pid > 0 => Ok(pid),
        Ok(Outcome::Spawned { pid }) => Err(SpawnError::Helper(format!(
            "the spawn helper answered pid {pid}"
        ))),
        Ok(Outcome::Failed { reason }) => Err(SpawnError::Refused(reason)),
        Err(_) => Err(SpawnError::Helper(format!(
            "the spawn helper ({}) answered no outcome{}: {answer:?} (its own reason is on the console)",
            status.map_or_else(|e| e.to_string(), |s| s.to_string()),
            if answer.is_empty() { " at all" } else { "" },
        ))),
    }
}

/// The helper's one line (or what it wrote before it closed its stdout), by `deadline`. The
/// process it made may hold a copy of the pipe until it execs: a complete line is the end.
fn read_answer(child: &mut Child, deadline: Instant) -> Result<String, SpawnError> {
    let mut stdout = child
        .stdout
        .take()
        .ok_or_else(|| SpawnError::Helper("the spawn helper has no stdout".into()))?;
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    while !answer.ends_with(b"\n") {
        let left = deadline.saturating_duration_since(Instant::now());
        let millis = u16::try_from(left.as_millis()).unwrap_or(u16::MAX);
        if left.is_zero() {
            return Err(SpawnError::Helper(format!(
                "the spawn helper did not answer within {}s, and was killed",
                HELPER_TIMEOUT.as_secs()
            )));
        }
        let mut fds = [PollFd::new(stdout.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(millis)) {
            Ok(0) | Err(nix::errno::Errno::EINTR) => continue,
            Ok(_) => {}
            Err(e) => {
                return Err(SpawnError::Helper(format!(
                    "waiting for the spawn helper: {e}"
                )))
            }
        }
        match stdout.read(&mut buf) {
            Ok(0) => break,
            Ok(n) if answer.len() + n <= MAX_ANSWER => answer.extend_from_slice(&buf[..n]),
            Ok(_) => {
                return Err(SpawnError::Helper(format!(
                    "the spawn helper's answer is over {MAX_ANSWER} bytes"
                )))
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(SpawnError::Helper(format!("reading the spawn helper: {e}"))),
        }
    }
    Ok(String::from_utf8_lossy(&answer).into_owned())
}
