//! A process's stdio: each stream its own vsock connection to the host (raw bytes, no framing),
//! handed to the process directly; or, with a tty, a pty whose master the agent relays.

use std::fs::File;
use std::io::{self, IoSliceMut, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cocoon_protocol::{AgentError, ErrorKind, StdioPorts};
use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};

use crate::vsock;

fn connect(stream: &str, port: Option<u32>, token: &str) -> Result<Option<File>, AgentError> {
    port.map(|port| {
        vsock::connect_to_host(port, token).map_err(|e| {
            AgentError::new(
                ErrorKind::FailedPrecondition,
                format!("connecting the process's {stream} to host vsock port {port}: {e} (is the host listening?)"),
            )
        })
    })
    .transpose()
}

fn dev_null() -> Result<File, AgentError> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .map_err(|e| AgentError::new(ErrorKind::Internal, format!("opening /dev/null: {e}")))
}

/// The streams of a process being created.
pub struct Stdio {
    stdin: Option<File>,
    stdout: Option<File>,
    stderr: Option<File>,
    terminal: bool,
    stdin_handle: Option<File>,
}

impl Stdio {
    /// Connects the streams the host asked for.
    pub fn connect(ports: &StdioPorts, terminal: bool) -> Result<Self, AgentError> {
        Ok(Self {
            stdin: connect("stdin", ports.stdin, &ports.token)?,
            stdout: connect("stdout", ports.stdout, &ports.token)?,
            stderr: connect("stderr", ports.stderr, &ports.token)?,
            terminal,
            stdin_handle: None,
        })
    }

    /// The streams for the process being spawned (stdin, stdout, stderr), or None with a tty
    /// (the process gets the pty's other end). Without a tty, a stream the host did not ask for
    /// is /dev/null (never the agent's own console).
    pub fn streams(&mut self) -> Result<Option<[OwnedFd; 3]>, AgentError> {
        if self.terminal {
            return Ok(None);
        }
        let stdin = match self.stdin.take() {
            Some(s) => {
                self.stdin_handle = s.try_clone().ok();
                s
            }
            None => dev_null()?,
        };
        let stdout = match self.stdout.take() {
            Some(s) => s,
            None => dev_null()?,
        };
        let stderr = match self.stderr.take() {
            Some(s) => s,
            None => dev_null()?,
        };
        Ok(Some([stdin.into(), stdout.into(), stderr.into()]))
    }

    /// After the process exists: the handle to close its stdin with, and its terminal if any
    /// (whose relays start now).
    pub fn finish(
        self,
        console: Option<ConsoleSocket>,
    ) -> Result<(Option<File>, Option<Terminal>), AgentError> {
        let Some(console) = console else {
            return Ok((self.stdin_handle, None));
        };
        let master = console
            .receive_master()
            .map_err(|e| AgentError::new(ErrorKind::Internal, format!("receiving the pty: {e}")))?;
        let terminal = Terminal::start(master, self.stdin, self.stdout)?;
        Ok((None, Some(terminal)))
    }
}

/// The Unix socket libcontainer sends a new pty's master through.
pub struct ConsoleSocket {
    listener: UnixListener,
    path: PathBuf,
}

/// Numbers the console sockets, for names unique for the agent's life whatever the ids.
static NEXT_CONSOLE: AtomicU64 = AtomicU64::new(0);

/// The path of console socket number `n` in `dir`: short whatever the container and exec ids.
fn console_path(dir: &Path, n: u64) -> PathBuf {
    dir.join(n.to_string())
}

impl ConsoleSocket {
    /// A new console socket in `dir` (made 0700 if missing).
    pub fn bind_new(dir: &Path) -> Result<Self, AgentError> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| {
                AgentError::new(
                    ErrorKind::Internal,
                    format!("creating {}: {e}", dir.display()),
                )
            })?;
        // Fits a Unix socket's path whatever the number (the tests check u64::MAX's).
        Self::bind(&console_path(
            dir,
            NEXT_CONSOLE.fetch_add(1, Ordering::Relaxed),
        ))
    }

    /// Where the process being spawned sends its pty.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn bind(path: &Path) -> Result<Self, AgentError> {
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path).map_err(|e| {
            AgentError::new(
                ErrorKind::Internal,
                format!("console socket {}: {e}", path.display()),
            )
        })?;
        Ok(Self {
            listener,
            path: path.to_path_buf(),
        })
    }

    fn receive_master(&self) -> io::Result<File> {
        self.listener.set_nonblocking(true)?;
        let deadline = Instant::now() + Duration::from_secs(10);
        let stream = loop {
            match self.listener.accept() {
                Ok((stream, _)) => break stream,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => return Err(e),
            }
        };
        stream.set_nonblocking(false)?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut buf = [0u8; 256];
        let mut iov = [IoSliceMut::new(&mut buf)];
        let mut space = nix::cmsg_space!([RawFd; 1]);
        let msg = recvmsg::<()>(
            stream.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )?;
        for cmsg in msg.cmsgs()? {
            if let ControlMessageOwned::ScmRights(fds) = cmsg {
                if let Some(&fd) = fds.first() {
                    // SAFETY: SCM_RIGHTS handed this process a new descriptor nothing else owns.
                    return Ok(unsafe { File::from_raw_fd(fd) });
                }
            }
        }
        Err(io::Error::other("no pty descriptor in the console message"))
    }
}

impl Drop for ConsoleSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// A process's pty, relayed to its vsock streams by two threads.
pub struct Terminal {
    master: Arc<File>,
    input: Option<File>,
}

#[repr(C)]
struct WinSize {
    rows: u16,
    cols: u16,
    x_pixels: u16,
    y_pixels: u16,
}

impl Terminal {
    fn start(master: File, input: Option<File>, output: Option<File>) -> Result<Self, AgentError> {
        let internal =
            |e: io::Error| AgentError::new(ErrorKind::Internal, format!("pty relay: {e}"));
        let master = Arc::new(master);
        if let Some(mut output) = output {
            let mut from = master.try_clone().map_err(internal)?;
            std::thread::spawn(move || {
                // Ends with EIO once the last process holding the tty's other end exits.
                let _ = io::copy(&mut from, &mut output);
            });
        }
        let input_handle = match input {
            Some(mut input) => {
                let handle = input.try_clone().map_err(internal)?;
                let mut to = master.try_clone().map_err(internal)?;
                std::thread::spawn(move || {
                    let mut buf = [0u8; 4096];
                    while let Ok(n) = input.read(&mut buf) {
                        if n == 0 || to.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                });
                Some(handle)
            }
            None => None,
        };
        Ok(Self {
            master,
            input: input_handle,
        })
    }

    pub fn resize(&self, rows: u16, cols: u16) -> io::Result<()> {
        let size = WinSize {
            rows,
            cols,
            x_pixels: 0,
            y_pixels: 0,
        };
        // SAFETY: TIOCSWINSZ reads a struct winsize, which `size` is laid out as; the master
        // descriptor is open for the life of `self`.
        let ret = unsafe { libc::ioctl(self.master.as_raw_fd(), libc::TIOCSWINSZ, &size) };
        if ret == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    /// Stops relaying input and sends the tty's end-of-file character.
    pub fn close_input(&self) {
        if let Some(input) = &self.input {
            let _ = nix::sys::socket::shutdown(input.as_raw_fd(), nix::sys::socket::Shutdown::Read);
        }
        let _ = (&*self.master).write_all(&[0x04]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::Layout;
    use cocoon_protocol::socket_path;

    #[test]
    fn console_sockets_stay_short_whatever_the_ids() {
        // Named by a counter in the guest's console directory: the longest name is u64::MAX's.
        let longest = console_path(&Layout::guest().consoles, u64::MAX);
        assert!(socket_path::fits(&longest), "{}", longest.display());
    }

    #[test]
    fn a_console_socket_binds_and_goes_away() {
        let dir = tempfile::tempdir().unwrap();
        let consoles = dir.path().join("tty");
        let (first, second) = (
            ConsoleSocket::bind_new(&consoles).unwrap(),
            ConsoleSocket::bind_new(&consoles).unwrap(),
        );
        assert_ne!(first.path, second.path);
        assert!(first.path.exists());
        let path = first.path.clone();
        drop(first);
        assert!(!path.exists());
    }
}
