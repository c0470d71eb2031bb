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
}

/// Connections heard at once while waiting for the agent's; the oldest is dropped for a new one.
const MAX_CANDIDATES: usize = 64;
/// How long a connection may take to send its token (the agent writes it as it connects).
const TOKEN_TIMEOUT: Duration = Duration::from_secs(2);

/// A fresh token for the connections of one request, from the kernel's random source.
pub fn new_token() -> io::Result<String> {
    let mut bytes = [0u8; cocoon_protocol::port_token::TOKEN_LEN / 2];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// A connection that has not said its token yet.
struct Candidate {
    stream: UnixStream,
    said: Vec<u8>,
    since: Instant,
}

impl HostPort {
    /// The agent's connection: the first that starts with `token` and a newline, within
    /// `timeout`. Every connection is heard at once (a guest process that connects and says
    /// nothing holds up no one) and dropped as soon as it says something else or stays silent
    /// [`TOKEN_TIMEOUT`]; nothing past the token is read.
    pub fn accept_with_token(&self, token: &str, timeout: Duration) -> io::Result<UnixStream> {
        let deadline = Instant::now() + timeout;
        let expected = format!("{token}\n").into_bytes();
        let mut candidates: Vec<Candidate> = Vec::new();
        let mut strangers = 0u64;
        loop {
            loop {
                match self.listener.accept() {
                    Ok((stream, _)) => {
                        stream.set_nonblocking(true)?;
                        if candidates.len() == MAX_CANDIDATES {
                            candidates.remove(0);
                            strangers += 1;
                        }
                        candidates.push(Candidate {
                            stream,
                            said: Vec::new(),
                            since: Instant::now(),
                        });
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(e),
                }
            }
            let mut i = 0;
            while i < candidates.len() {
                match hear(&mut candidates[i], &expected) {
                    Some(true) => {
                        let agent = candidates.swap_remove(i).stream;
                        agent.set_nonblocking(false)?;
                        return Ok(agent);
                    }
                    Some(false) => {
                        candidates.swap_remove(i);
                        strangers += 1;
                    }
                    None => i += 1,
                }
            }
            if Instant::now() >= deadline {
                return Err(if strangers > 0 {
                    io::Error::new(
                        io::ErrorKind::PermissionDenied,
                        format!(
                            "{strangers} connections to host port {} came without the agent's token (a guest process other than the agent?), and the agent's did not come in {timeout:?}",
                            self.port
                        ),
                    )
                } else {
                    io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!(
                            "the guest did not connect to host port {} in {timeout:?}",
                            self.port
                        ),
                    )
                });
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

/// What `candidate` has said so far: its token (`true`), something else or nothing in time
/// (`false`), or not all of it yet.
fn hear(candidate: &mut Candidate, expected: &[u8]) -> Option<bool> {
    let mut buf = [0u8; 64];
    let want = (expected.len() - candidate.said.len()).min(buf.len());
    match candidate.stream.read(&mut buf[..want]) {
        Ok(0) => Some(false),
        Ok(n) => {
            candidate.said.extend_from_slice(&buf[..n]);
            if !expected.starts_with(&candidate.said) {
                Some(false)
            } else if candidate.said.len() == expected.len() {
                Some(true)
            } else {
                None
            }
        }
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
            (candidate.since.elapsed() > TOKEN_TIMEOUT).then_some(false)
        }
        Err(_) => Some(false),
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
    fn a_silent_stranger_holds_up_no_one() {
        let dir = tempfile::tempdir().unwrap();
        let uds = dir.path().join("vsock");
        let port = HostPort::bind(&uds, 9).unwrap();
        let token = new_token().unwrap();
        let _silent = UnixStream::connect(port_path(&uds, 9)).unwrap();
        let _agent = connect_saying(&port_path(&uds, 9), format!("{token}\n").as_bytes());
        let started = Instant::now();
        port.accept_with_token(&token, Duration::from_secs(10))
            .unwrap();
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
    }

    #[test]
    fn strangers_alone_are_an_error_at_the_deadline() {
        let dir = tempfile::tempdir().unwrap();
        let uds = dir.path().join("vsock");
        let port = HostPort::bind(&uds, 8).unwrap();
        let strangers: Vec<_> = (0..100)
            .map(|_| {
                connect_saying(
                    &port_path(&uds, 8),
                    b"not the agent\n.......................",
                )
            })
            .collect();
        let err = port
            .accept_with_token(&new_token().unwrap(), Duration::from_millis(300))
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::PermissionDenied, "{err}");
        assert!(err.to_string().starts_with("100 connections"), "{err}");
        drop(strangers);
        let err = port
            .accept_with_token(&new_token().unwrap(), Duration::from_millis(50))
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut, "{err}");
    }
}
