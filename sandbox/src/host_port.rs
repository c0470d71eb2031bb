//! A host "vsock port": the Unix socket `<uds>_<port>` the VMM forwards a guest connection to
//! host port `<port>` to. The agent connects each stdio stream of a process to one of these.

use std::io;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub struct HostPort {
    listener: UnixListener,
    path: PathBuf,
    pub port: u32,
}

/// `<uds>_<port>`, where the VMM forwards guest connections to host port `port`.
pub fn port_path(uds: &Path, port: u32) -> PathBuf {
    let mut path = uds.as_os_str().to_owned();
    path.push(format!("_{port}"));
    PathBuf::from(path)
}

impl HostPort {
    pub fn bind(uds: &Path, port: u32) -> io::Result<Self> {
        let path = port_path(uds, port);
        let listener = UnixListener::bind(&path)?;
        listener.set_nonblocking(true)?;
        Ok(Self {
            listener,
            path,
            port,
        })
    }

    /// The first port from `first` on that nobody else is using (another process may be taking
    /// ports on the same VM).
    pub fn bind_free(uds: &Path, first: u32) -> io::Result<Self> {
        let mut port = first;
        loop {
            match Self::bind(uds, port) {
                Err(e)
                    if e.kind() == io::ErrorKind::AddrInUse
                        && port < first.saturating_add(4096) =>
                {
                    port += 1;
                }
                other => return other,
            }
        }
    }

    /// The guest's connection, once it has arrived (the VMM connects when the guest does).
    pub fn accept(&self, timeout: Duration) -> io::Result<UnixStream> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    stream.set_nonblocking(false)?;
                    return Ok(stream);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(2));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!(
                            "the guest did not connect to host port {} in {timeout:?}",
                            self.port
                        ),
                    ))
                }
                Err(e) => return Err(e),
            }
        }
    }
}

impl Drop for HostPort {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}
