//! Runs a child process with a hard deadline, collecting its output as it streams and, when
//! `COCOON_TEST_VERBOSE=1`, echoing it to stderr. On timeout the whole process group is killed;
//! the child also dies with the thread that started it (a test runner killed by its own timeout
//! left an emulated host running, and the next suite's ran beside it).

use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The output of a finished (or killed) child.
#[derive(Debug)]
pub struct Finished {
    /// Exit code; None when killed by a signal or by the deadline.
    pub code: Option<i32>,
    pub timed_out: bool,
    pub output: String,
    pub elapsed: Duration,
}

fn verbose() -> bool {
    std::env::var("COCOON_TEST_VERBOSE").is_ok_and(|v| v == "1")
}

/// Runs `cmd` with stdout and stderr merged into one stream (stdin from /dev/null). `on_line` sees
/// every complete line as it arrives, with the time since start.
pub fn run_with_deadline(
    mut cmd: Command,
    deadline: Duration,
    mut on_line: impl FnMut(&str, Duration) + Send + 'static,
) -> std::io::Result<Finished> {
    let (reader, writer) = std::io::pipe()?;
    let writer_err = writer.try_clone()?;
    cmd.stdin(Stdio::null())
        .stdout(writer)
        .stderr(writer_err)
        .process_group(0);
    // SAFETY: prctl(2) only, between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                .map_err(std::io::Error::from)
        });
    }
    let start = Instant::now();
    let mut child = cmd.spawn()?;
    drop(cmd); // closes our copies of the pipe's write end

    let collected = Arc::new(Mutex::new(Vec::<u8>::new()));
    let sink = collected.clone();
    let pump = std::thread::spawn(move || {
        let mut reader = reader;
        let mut buf = [0u8; 8192];
        let mut line = Vec::new();
        let echo = verbose();
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if echo {
                let _ = std::io::stderr().write_all(&buf[..n]);
            }
            sink.lock().unwrap().extend_from_slice(&buf[..n]);
            for &b in &buf[..n] {
                if b == b'\n' {
                    let text = String::from_utf8_lossy(&line);
                    on_line(text.trim_end_matches('\r'), start.elapsed());
                    line.clear();
                } else {
                    line.push(b);
                }
            }
        }
    });

    let mut timed_out = false;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if start.elapsed() > deadline {
            timed_out = true;
            // The child's process group (its pid, from process_group(0)); the id is not stale,
            // since the child is not reaped yet.
            kill_group(child.id());
            break child.wait()?;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let elapsed = start.elapsed();
    // Leave nothing behind: anything the child started in its group goes too (and so releases the
    // pipe, which the pump thread waits on).
    kill_group(child.id());
    let _ = pump.join();
    let output = String::from_utf8_lossy(&collected.lock().unwrap()).replace('\r', "");
    Ok(Finished {
        code: status.code(),
        timed_out,
        output,
        elapsed,
    })
}

/// SIGKILL to the process group `leader` led; at worst it finds no process (ESRCH).
fn kill_group(leader: u32) {
    let _ = nix::sys::signal::killpg(
        nix::unistd::Pid::from_raw(leader as i32),
        nix::sys::signal::Signal::SIGKILL,
    );
}
