//! The local terminal (raw mode, window size) and the signals `cocoon run` forwards.

use std::os::fd::AsFd;
use std::sync::Arc;

use anyhow::{Context, Result};
use cocoon_protocol::Operation;
use cocoon_sandbox::AgentClient;

use crate::target::Target;
use nix::sys::termios::{self, SetArg, Termios};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGWINCH};
use signal_hook::iterator::{Handle, Signals};

/// Our stdin in raw mode, restored on drop.
pub struct RawMode(Termios);

impl RawMode {
    /// None when stdin is not a terminal.
    pub fn enter() -> Option<Self> {
        let stdin = std::io::stdin();
        let saved = termios::tcgetattr(stdin.as_fd()).ok()?;
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        termios::tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &raw).ok()?;
        Some(Self(saved))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = termios::tcsetattr(std::io::stdin().as_fd(), SetArg::TCSANOW, &self.0);
    }
}

/// Our terminal's size (rows, cols), if stdout or stdin is one.
pub fn size() -> Option<(u16, u16)> {
    for fd in [libc::STDOUT_FILENO, libc::STDIN_FILENO] {
        let mut ws = libc::winsize {
            ws_row: 0,
            ws_col: 0,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCGWINSZ writes a winsize into the struct we own.
        if unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut ws) } == 0 && ws.ws_row > 0 {
            return Some((ws.ws_row, ws.ws_col));
        }
    }
    None
}

/// Stops forwarding when closed.
pub struct Forwarder(Handle);

impl Forwarder {
    pub fn close(&self) {
        self.0.close();
    }
}

/// SIGINT, SIGTERM and SIGHUP go to the target process; a second SIGINT stops the VM
/// (`vmm_pid`, when given). With a tty, SIGWINCH resizes the container's terminal.
pub fn forward_signals(
    client: Arc<AgentClient>,
    target: Target,
    tty: bool,
    vmm_pid: Option<u32>,
) -> Result<Forwarder> {
    let mut signals =
        Signals::new([SIGINT, SIGTERM, SIGHUP, SIGWINCH]).context("installing signal handlers")?;
    let handle = signals.handle();
    std::thread::spawn(move || {
        let mut interrupts = 0;
        for signal in signals.forever() {
            if signal == SIGWINCH {
                if let (true, Some((rows, cols))) = (tty, size()) {
                    let _ = client.call(Operation::ResizeTty {
                        container_id: target.container_id.clone(),
                        exec_id: target.exec_id.clone(),
                        rows,
                        cols,
                    });
                }
                continue;
            }
            if signal == SIGINT {
                interrupts += 1;
                if interrupts > 1 && vmm_pid.is_some() {
                    eprintln!("cocoon: interrupted twice: stopping the microVM");
                    if let Some(pid) = vmm_pid {
                        let _ = nix::sys::signal::kill(
                            nix::unistd::Pid::from_raw(pid as i32),
                            nix::sys::signal::Signal::SIGTERM,
                        );
                    }
                    continue;
                }
            }
            let _ = client.call(Operation::Signal {
                container_id: target.container_id.clone(),
                exec_id: target.exec_id.clone(),
                signal,
                all: false,
            });
        }
    });
    Ok(Forwarder(handle))
}
