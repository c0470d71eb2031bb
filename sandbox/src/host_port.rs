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

/// A process's stdio as host ports, bound before the agent is asked to connect each stream.
pub struct ProcessPorts {
    pub stdin: Option<HostPort>,
    pub stdout: Option<HostPort>,
    pub stderr: Option<HostPort>,
}

/// A process's connected stdio streams.
pub struct ProcessStreams {
    pub stdin: Option<UnixStream>,
    pub stdout: Option<UnixStream>,
    pub stderr: Option<UnixStream>,
}

impl ProcessPorts {
    /// Free ports from `first` on for the wanted streams (stdin, stdout, stderr).
    pub fn bind(uds: &Path, first: u32, wanted: [bool; 3]) -> io::Result<Self> {
        let mut next = first;
        let mut bind = |on: bool| -> io::Result<Option<HostPort>> {
            if !on {
                return Ok(None);
            }
            let port = HostPort::bind_free(uds, next)?;
            next = port.port + 1;
            Ok(Some(port))
        };
        Ok(Self {
            stdin: bind(wanted[0])?,
            stdout: bind(wanted[1])?,
            stderr: bind(wanted[2])?,
        })
    }

    /// The ports to name in the agent request.
    pub fn ports(&self) -> cocoon_protocol::StdioPorts {
        cocoon_protocol::StdioPorts {
            stdin: self.stdin.as_ref().map(|p| p.port),
            stdout: self.stdout.as_ref().map(|p| p.port),
            stderr: self.stderr.as_ref().map(|p| p.port),
        }
    }

    /// Waits (each at most `timeout`) for the agent to connect every bound stream.
    pub fn accept(self, timeout: Duration) -> io::Result<ProcessStreams> {
        let accept = |p: Option<HostPort>| p.map(|p| p.accept(timeout)).transpose();
        Ok(ProcessStreams {
            stdin: accept(self.stdin)?,
            stdout: accept(self.stdout)?,
            stderr: accept(self.stderr)?,
        })
    }
}
