//! Runs a command on a new pseudo-terminal, as a user at a terminal would (`cocoon run -t` needs
//! one, and the emulated host has no `script`): the terminal starts at one size and, once the
//! output shows a marker, is resized, which sends the command SIGWINCH.

use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use nix::pty::{openpty, Winsize};

fn winsize(rows: u16, cols: u16) -> Winsize {
    Winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    }
}

/// How long the command may run: then its session is killed (SIGKILL), and what it wrote so far
/// is returned with the timeout said at its end.
const TIMEOUT: Duration = Duration::from_secs(150);

/// Runs `command` with a terminal of `size`; when the output contains `resize_after`, the
/// terminal becomes `resized`. Returns everything written to the terminal and the exit code.
pub fn run_on_pty(
    command: &[String],
    size: (u16, u16),
    resize_after: &str,
    resized: (u16, u16),
) -> Result<(String, i32)> {
    let pty = openpty(Some(&winsize(size.0, size.1)), None).context("openpty")?;
    let slave = |pty: &OwnedFd| -> Result<Stdio> { Ok(Stdio::from(pty.try_clone()?)) };
    let mut cmd = Command::new(&command[0]);
    cmd.args(&command[1..])
        .stdin(slave(&pty.slave)?)
        .stdout(slave(&pty.slave)?)
        .stderr(slave(&pty.slave)?);
    // SAFETY: setsid(2) and ioctl(TIOCSCTTY) between fork and exec: the child leads a new
    // session whose controlling terminal is the pty on its stdin.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting {}", command[0]))?;
    let (done, timed_out) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
    );
    {
        let (done, timed_out, session) = (done.clone(), timed_out.clone(), child.id() as i32);
        std::thread::spawn(move || {
            let deadline = Instant::now() + TIMEOUT;
            while !done.load(Ordering::SeqCst) {
                if Instant::now() > deadline {
                    timed_out.store(true, Ordering::SeqCst);
                    // SAFETY: kill(2) of the process group the child leads (setsid above).
                    unsafe { libc::kill(-session, libc::SIGKILL) };
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
    }
    // Our copies of the slave side (the command holds three): EOF comes when the child's go.
    drop(cmd);
    drop(pty.slave);
    let mut master = std::fs::File::from(pty.master);
    let mut output = Vec::new();
    let mut buf = [0u8; 4096];
    let mut resized_yet = false;
    // EIO once every holder of the slave side has gone.
    while let Ok(n) = master.read(&mut buf) {
        if n == 0 {
            break;
        }
        output.extend_from_slice(&buf[..n]);
        if !resized_yet && String::from_utf8_lossy(&output).contains(resize_after) {
            resized_yet = true;
            let ws = winsize(resized.0, resized.1);
            // SAFETY: TIOCSWINSZ on the master we own, with a winsize we own.
            unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
        }
    }
    let status = child.wait()?;
    done.store(true, Ordering::SeqCst);
    if timed_out.load(Ordering::SeqCst) {
        output.extend_from_slice(format!("\n@@TIMEOUT: killed after {TIMEOUT:?}\n").as_bytes());
    }
    Ok((
        String::from_utf8_lossy(&output).replace("\r\n", "\n"),
        status.code().unwrap_or(-1),
    ))
}
