//! A host "vsock port": the Unix socket `<uds>_<port>` the VMM forwards a guest connection to
//! host port `<port>` to. The agent connects each stdio stream of a process to one of these,
//! starting with the request's token (`cocoon_protocol::port_token`): any guest process can
//! connect to a host port, and one without the token is dropped.

use std::io::{self, Read};
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

/// Guest connections without the token one accept drops before it gives up.
const MAX_STRANGERS: usize = 16;
/// How long a connection may take to send its token.
const TOKEN_TIMEOUT: Duration = Duration::from_secs(10);

/// A fresh token for the connections of one request, from the kernel's random source.
pub fn new_token() -> io::Result<String> {
    let mut bytes = [0u8; cocoon_protocol::port_token::TOKEN_LEN / 2];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

impl HostPort {
    /// The agent's connection: the first that starts with `token` and a newline (each other is
    /// dropped, up to [`MAX_STRANGERS`]), within `timeout`.
    pub fn accept_with_token(&self, token: &str, timeout: Duration) -> io::Result<UnixStream> {
        let deadline = Instant::now() + timeout;
        for _ in 0..=MAX_STRANGERS {
            let left = deadline.saturating_duration_since(Instant::now());
            let mut stream = self.accept(left)?;
            let wait = left.min(TOKEN_TIMEOUT).max(Duration::from_millis(1));
            stream.set_read_timeout(Some(wait))?;
            let mut first = vec![0u8; token.len() + 1];
            let said = stream.read_exact(&mut first);
            if said.is_ok()
                && first[..token.len()] == *token.as_bytes()
                && first[token.len()] == b'\n'
            {
                stream.set_read_timeout(None)?;
                return Ok(stream);
            }
        }
        Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{} connections to host port {} came without the agent's token (a guest process other than the agent?)",
                MAX_STRANGERS + 1,
                self.port
            ),
        ))
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
    token: String,
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
            token: new_token()?,
        })
    }

    /// The ports to name in the agent request.
    pub fn ports(&self) -> cocoon_protocol::StdioPorts {
        cocoon_protocol::StdioPorts {
            stdin: self.stdin.as_ref().map(|p| p.port),
            stdout: self.stdout.as_ref().map(|p| p.port),
            stderr: self.stderr.as_ref().map(|p| p.port),
            token: self.token.clone(),
        }
    }

    /// Waits (each at most `timeout`) for the agent to connect every bound stream.
    pub fn accept(self, timeout: Duration) -> io::Result<ProcessStreams> {
        let token = &self.token;
        let accept =
            |p: Option<HostPort>| p.map(|p| p.accept_with_token(token, timeout)).transpose();
        Ok(ProcessStreams {
            stdin: accept(self.stdin)?,
            stdout: accept(self.stdout)?,
            stderr: accept(self.stderr)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn connect_saying(path: &Path, words: &[u8]) -> UnixStream {
        let mut s = UnixStream::connect(path).unwrap();
        s.write_all(words).unwrap();
        s
    }

    #[test]
    fn only_the_connection_with_the_token_is_taken() {
        let dir = tempfile::tempdir().unwrap();
        let uds = dir.path().join("vsock");
        let port = HostPort::bind(&uds, 7).unwrap();
        let token = new_token().unwrap();
        assert!(cocoon_protocol::port_token::is_token(&token), "{token}");
        let path = port_path(&uds, 7);
        let _wrong = connect_saying(&path, format!("{}\n", "0".repeat(32)).as_bytes());
        drop(connect_saying(&path, b"short"));
        let _agent = connect_saying(&path, format!("{token}\nafter").as_bytes());
        let mut taken = port
            .accept_with_token(&token, Duration::from_secs(5))
            .unwrap();
        let mut rest = [0u8; 5];
        taken.read_exact(&mut rest).unwrap();
        assert_eq!(&rest, b"after", "the stream starts after the token");
    }

    #[test]
    fn a_flood_of_strangers_is_an_error_not_a_wait() {
        let dir = tempfile::tempdir().unwrap();
        let uds = dir.path().join("vsock");
        let port = HostPort::bind(&uds, 8).unwrap();
        let strangers: Vec<_> = (0..=MAX_STRANGERS)
            .map(|_| {
                connect_saying(
                    &port_path(&uds, 8),
                    b"not the agent\n........................",
                )
            })
            .collect();
        let err = port
            .accept_with_token(&new_token().unwrap(), Duration::from_secs(5))
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::PermissionDenied, "{err}");
        drop(strangers);
    }
}
