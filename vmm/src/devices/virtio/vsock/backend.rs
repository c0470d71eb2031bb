//! The host side of virtio-vsock, compatible with Firecracker's "hybrid vsock": the VMM listens
//! on a Unix socket; a host client connects, writes `CONNECT <port>\n` and, once the guest
//! accepts, reads `OK <host_port>\n` and then has a byte stream to the guest's listener on that
//! port. A guest connection to the host (CID 2) port P is forwarded to the Unix socket `<path>_P`.
//!
//! Everything here runs on the event-loop thread and never blocks: host sockets are nonblocking
//! and watched edge-triggered; host → guest data waits in the host socket until the guest has
//! both credit and receive buffers for it.

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use super::connection::{Connection, Reset, State, BUF_ALLOC};
use super::packet::*;

/// Most connections (and pending host handshakes) one VM may hold at once.
pub const MAX_CONNECTIONS: usize = 1024;
/// Longest acceptable `CONNECT <port>` line.
const MAX_HANDSHAKE_LINE: usize = 64;
/// Host-initiated connections get local ports from here up.
const FIRST_LOCAL_PORT: u32 = 1 << 30;

/// A connection's identity: (host port, guest port).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub struct ConnKey {
    pub local_port: u32,
    pub peer_port: u32,
}

/// A host client that has not finished its `CONNECT` line yet.
struct Handshake {
    stream: UnixStream,
    line: Vec<u8>,
}

/// A packet this side owes the guest; headers are filled when it is sent, so credit fields are
/// current.
#[derive(Clone, Copy, Debug)]
struct Outgoing {
    key: ConnKey,
    op: u16,
    flags: u32,
}

/// A host socket to add to or remove from the event loop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Registration {
    Add(RawFd),
    Remove(RawFd),
}

pub struct Backend {
    guest_cid: u64,
    uds_path: PathBuf,
    listener: UnixListener,
    connections: HashMap<ConnKey, Connection>,
    by_fd: HashMap<RawFd, ConnKey>,
    handshakes: HashMap<RawFd, Handshake>,
    control: VecDeque<Outgoing>,
    rx_ready: VecDeque<ConnKey>,
    next_local_port: u32,
    registrations: Vec<Registration>,
    /// Closed host sockets, kept open until the event loop has forgotten them.
    closed: Vec<UnixStream>,
}

/// The listening socket could not be created.
#[derive(Debug, thiserror::Error)]
#[error("vsock socket {path}: {reason}")]
pub struct ListenError {
    pub path: String,
    pub reason: String,
}

impl Backend {
    /// Listens on `uds_path`, which must not exist.
    pub fn bind(guest_cid: u64, uds_path: &Path) -> Result<Self, ListenError> {
        let err = |reason: String| ListenError {
            path: uds_path.display().to_string(),
            reason,
        };
        if uds_path.symlink_metadata().is_ok() {
            return Err(err(
                "already exists (another VM uses it, or a stale socket from a VMM that was killed: remove it)".into(),
            ));
        }
        let listener = UnixListener::bind(uds_path).map_err(|e| err(e.to_string()))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| err(e.to_string()))?;
        Ok(Self {
            guest_cid,
            uds_path: uds_path.to_path_buf(),
            listener,
            connections: HashMap::new(),
            by_fd: HashMap::new(),
            handshakes: HashMap::new(),
            control: VecDeque::new(),
            rx_ready: VecDeque::new(),
            next_local_port: FIRST_LOCAL_PORT,
            registrations: Vec::new(),
            closed: Vec::new(),
        })
    }

    pub fn listener_fd(&self) -> RawFd {
        self.listener.as_raw_fd()
    }

    /// Host sockets to (de)register with the event loop since the last call.
    pub fn take_registrations(&mut self) -> Vec<Registration> {
        std::mem::take(&mut self.registrations)
    }

    /// Closes the sockets whose removal the event loop has applied.
    pub fn release_closed(&mut self) {
        self.closed.clear();
    }

    /// Every host socket being watched (connections and handshakes).
    pub fn host_socket_fds(&self) -> Vec<RawFd> {
        self.by_fd
            .keys()
            .chain(self.handshakes.keys())
            .copied()
            .collect()
    }

    pub fn connection_count(&self) -> usize {
        self.connections.len()
    }

    fn at_capacity(&self) -> bool {
        self.connections.len() + self.handshakes.len() >= MAX_CONNECTIONS
    }

    /// Accepts every pending host client.
    pub fn accept_host_clients(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if self.at_capacity() || stream.set_nonblocking(true).is_err() {
                        tracing::warn!("vsock: refusing a host client (connection limit reached)");
                        continue;
                    }
                    let fd = stream.as_raw_fd();
                    self.registrations.push(Registration::Add(fd));
                    self.handshakes.insert(
                        fd,
                        Handshake {
                            stream,
                            line: Vec::new(),
                        },
                    );
                    self.read_handshake(fd);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
    }

    /// A host socket became readable and/or writable.
    pub fn on_host_socket_event(&mut self, fd: RawFd, readable: bool, writable: bool) {
        if self.handshakes.contains_key(&fd) {
            self.read_handshake(fd);
            return;
        }
        let Some(&key) = self.by_fd.get(&fd) else {
            return;
        };
        if writable {
            let flushed = self
                .connections
                .get_mut(&key)
                .map(|c| c.flush_to_host().map(|()| c.finished()));
            match flushed {
                Some(Err(Reset)) => return self.close(key, true),
                Some(Ok(true)) => return self.close(key, true),
                _ => self.queue_credit_update_if_due(key),
            }
        }
        if readable {
            if let Some(conn) = self.connections.get_mut(&key) {
                conn.host_readable = true;
            }
            self.mark_rx_ready(key);
        }
    }

    fn read_handshake(&mut self, fd: RawFd) {
        let Some(handshake) = self.handshakes.get_mut(&fd) else {
            return;
        };
        // One byte at a time: whatever follows the line belongs to the guest.
        let mut byte = [0u8; 1];
        let complete = loop {
            match handshake.stream.read(&mut byte) {
                Ok(0) => break Err(()),
                Ok(_) if byte[0] == b'\n' => break Ok(true),
                Ok(_) if handshake.line.len() >= MAX_HANDSHAKE_LINE => break Err(()),
                Ok(_) => handshake.line.push(byte[0]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break Err(()),
            }
        };
        match complete {
            Ok(false) => {}
            Err(()) => self.drop_handshake(fd),
            Ok(true) => {
                let Some(handshake) = self.handshakes.remove(&fd) else {
                    return;
                };
                match parse_connect_line(&handshake.line) {
                    Some(peer_port) => self.start_host_connection(handshake.stream, peer_port),
                    None => {
                        tracing::debug!("vsock: host client sent no valid CONNECT line");
                        self.retire(handshake.stream);
                    }
                }
            }
        }
    }

    fn drop_handshake(&mut self, fd: RawFd) {
        if let Some(handshake) = self.handshakes.remove(&fd) {
            self.retire(handshake.stream);
        }
    }

    fn retire(&mut self, stream: UnixStream) {
        self.registrations
            .push(Registration::Remove(stream.as_raw_fd()));
        self.closed.push(stream);
    }

    fn allocate_local_port(&mut self, peer_port: u32) -> Option<u32> {
        for _ in 0..=MAX_CONNECTIONS {
            let port = self.next_local_port;
            self.next_local_port = self
                .next_local_port
                .checked_add(1)
                .filter(|p| *p < u32::MAX)
                .unwrap_or(FIRST_LOCAL_PORT);
            let key = ConnKey {
                local_port: port,
                peer_port,
            };
            if !self.connections.contains_key(&key) {
                return Some(port);
            }
        }
        None
    }

    fn start_host_connection(&mut self, stream: UnixStream, peer_port: u32) {
        let Some(local_port) = self.allocate_local_port(peer_port) else {
            return self.retire(stream);
        };
        let key = ConnKey {
            local_port,
            peer_port,
        };
        self.by_fd.insert(stream.as_raw_fd(), key);
        self.connections.insert(
            key,
            Connection::new(stream, State::AwaitingResponse, local_port, peer_port),
        );
        self.control.push_back(Outgoing {
            key,
            op: OP_REQUEST,
            flags: 0,
        });
    }

    /// The guest connects to the host: forward to `<uds>_<port>` if a host program listens there.
    fn connect_to_host(&self, port: u32) -> Option<UnixStream> {
        use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, UnixAddr};
        let mut path = self.uds_path.clone().into_os_string();
        path.push(format!("_{port}"));
        let addr = UnixAddr::new(Path::new(&path)).ok()?;
        let fd = socket(
            AddressFamily::Unix,
            SockType::Stream,
            SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
            None,
        )
        .ok()?;
        // A nonblocking connect to a Unix socket either completes at once or fails (EAGAIN when
        // the listener's backlog is full): the event loop never waits for a host program.
        connect(fd.as_raw_fd(), &addr).ok()?;
        Some(UnixStream::from(fd))
    }

    /// A packet from the guest's TX queue.
    pub fn handle_guest_packet(&mut self, header: &Header, data: &[u8]) {
        if header.src_cid != self.guest_cid {
            tracing::debug!(
                "vsock: dropping a packet with source CID {}",
                header.src_cid
            );
            return;
        }
        let key = ConnKey {
            local_port: header.dst_port,
            peer_port: header.src_port,
        };
        if header.dst_cid != HOST_CID || header.type_ != TYPE_STREAM {
            if header.op != OP_RST {
                self.send_reset(key);
            }
            return;
        }
        if header.op == OP_REQUEST {
            return self.accept_guest_connection(key, header);
        }
        let Some(conn) = self.connections.get_mut(&key) else {
            if header.op != OP_RST {
                self.send_reset(key);
            }
            return;
        };
        conn.update_peer_credit(header.buf_alloc, header.fwd_cnt);
        match header.op {
            OP_RESPONSE if conn.state == State::AwaitingResponse => {
                conn.state = State::Established;
                let ok = format!("OK {}\n", conn.local_port);
                if conn.send_to_host_first(ok.as_bytes()).is_err() {
                    return self.close(key, true);
                }
                self.mark_rx_ready(key);
            }
            OP_RW if conn.state == State::Established => {
                if conn.send_to_host(data).is_err() {
                    return self.close(key, true);
                }
                self.queue_credit_update_if_due(key);
            }
            // Its credit was taken above, as every packet's is.
            OP_CREDIT_UPDATE => {}
            OP_CREDIT_REQUEST => self.control.push_back(Outgoing {
                key,
                op: OP_CREDIT_UPDATE,
                flags: 0,
            }),
            OP_SHUTDOWN => {
                conn.peer_shutdown |= header.flags & (SHUTDOWN_RCV | SHUTDOWN_SEND);
                match conn.flush_to_host() {
                    Ok(()) if conn.finished() => self.close(key, true),
                    Ok(()) => {}
                    Err(Reset) => self.close(key, true),
                }
            }
            OP_RST => self.close(key, false),
            // A response to nothing, data before the handshake, an unknown operation.
            _ => self.close(key, true),
        }
        // Any packet may carry the credit that lets held host data go (Linux reports freed
        // space on its data packets, and then owes no CREDIT_UPDATE): a connection that can
        // send again goes back on the send list, or it would wait for host data that may never
        // come (edge-triggered readiness fired already). A closed one is not there any more.
        self.mark_rx_ready(key);
    }

    fn accept_guest_connection(&mut self, key: ConnKey, header: &Header) {
        if self.connections.contains_key(&key) || self.at_capacity() {
            return self.send_reset(key);
        }
        let Some(stream) = self.connect_to_host(key.local_port) else {
            return self.send_reset(key);
        };
        let mut conn = Connection::new(stream, State::Established, key.local_port, key.peer_port);
        conn.update_peer_credit(header.buf_alloc, header.fwd_cnt);
        let fd = conn.stream.as_raw_fd();
        self.registrations.push(Registration::Add(fd));
        self.by_fd.insert(fd, key);
        self.connections.insert(key, conn);
        self.control.push_back(Outgoing {
            key,
            op: OP_RESPONSE,
            flags: 0,
        });
        self.mark_rx_ready(key);
    }

    fn send_reset(&mut self, key: ConnKey) {
        self.control.push_back(Outgoing {
            key,
            op: OP_RST,
            flags: 0,
        });
    }

    /// Forgets a connection, telling the guest with a RST when `reset_guest`.
    fn close(&mut self, key: ConnKey, reset_guest: bool) {
        if let Some(conn) = self.connections.remove(&key) {
            self.by_fd.remove(&conn.stream.as_raw_fd());
            self.retire(conn.stream);
        }
        if reset_guest {
            self.send_reset(key);
        }
    }

    fn queue_credit_update_if_due(&mut self, key: ConnKey) {
        if self
            .connections
            .get(&key)
            .is_some_and(|c| c.wants_credit_update())
        {
            self.control.push_back(Outgoing {
                key,
                op: OP_CREDIT_UPDATE,
                flags: 0,
            });
        }
    }

    fn mark_rx_ready(&mut self, key: ConnKey) {
        if let Some(conn) = self.connections.get_mut(&key) {
            if !conn.queued_for_rx && conn.can_send_to_guest() {
                conn.queued_for_rx = true;
                self.rx_ready.push_back(key);
            }
        }
    }

    /// Whether the guest may be owed a packet.
    pub fn has_rx_work(&self) -> bool {
        !self.control.is_empty() || !self.rx_ready.is_empty()
    }

    fn header_for(&mut self, key: ConnKey, op: u16, flags: u32, len: u32) -> Header {
        let (buf_alloc, fwd_cnt) = self
            .connections
            .get_mut(&key)
            .map_or((BUF_ALLOC, 0), |c| c.credit_fields());
        Header {
            src_cid: HOST_CID,
            dst_cid: self.guest_cid,
            src_port: key.local_port,
            dst_port: key.peer_port,
            len,
            type_: TYPE_STREAM,
            op,
            flags,
            buf_alloc,
            fwd_cnt,
        }
    }

    /// The next packet for the guest, its data read into `buf`: control packets first, then host
    /// data from connections in turn. `None`: nothing to send now.
    pub fn next_rx_packet(&mut self, buf: &mut [u8]) -> Option<(Header, usize)> {
        if let Some(out) = self.control.pop_front() {
            return Some((self.header_for(out.key, out.op, out.flags, 0), 0));
        }
        while let Some(key) = self.rx_ready.pop_front() {
            let Some(conn) = self.connections.get_mut(&key) else {
                continue;
            };
            conn.queued_for_rx = false;
            if !conn.can_send_to_guest() {
                continue;
            }
            match conn.read_from_host(buf) {
                Ok(None) => continue,
                Ok(Some(0)) => {
                    conn.host_eof = true;
                    return Some((self.header_for(key, OP_SHUTDOWN, SHUTDOWN_SEND, 0), 0));
                }
                Ok(Some(n)) => {
                    self.mark_rx_ready(key);
                    return Some((self.header_for(key, OP_RW, 0, n as u32), n));
                }
                Err(Reset) => {
                    self.close(key, false);
                    return Some((self.header_for(key, OP_RST, 0, 0), 0));
                }
            }
        }
        None
    }

    /// The driver reset the device: every connection is gone.
    pub fn reset(&mut self) {
        let keys: Vec<ConnKey> = self.connections.keys().copied().collect();
        for key in keys {
            self.close(key, false);
        }
        let fds: Vec<RawFd> = self.handshakes.keys().copied().collect();
        for fd in fds {
            self.drop_handshake(fd);
        }
        self.control.clear();
        self.rx_ready.clear();
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.uds_path);
    }
}

/// `CONNECT <port>`, case-insensitive, as Firecracker accepts it.
fn parse_connect_line(line: &[u8]) -> Option<u32> {
    let line = std::str::from_utf8(line).ok()?.trim_end_matches('\r');
    let (verb, port) = line.split_once(' ')?;
    if !verb.eq_ignore_ascii_case("connect") {
        return None;
    }
    port.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_lines() {
        assert_eq!(parse_connect_line(b"CONNECT 1024"), Some(1024));
        assert_eq!(parse_connect_line(b"connect 52\r"), Some(52));
        assert_eq!(parse_connect_line(b"CONNECT"), None);
        assert_eq!(parse_connect_line(b"CONNECT -1"), None);
        assert_eq!(parse_connect_line(b"LISTEN 5"), None);
        assert_eq!(parse_connect_line(&[0xff, b' ', b'1']), None);
    }
}
