//! One stream between a host Unix socket and a guest vsock socket, with the virtio credit
//! accounting of both directions. The host socket is nonblocking: bytes the host cannot take yet
//! wait in a buffer no larger than the credit this side granted, so a slow host reader only ever
//! stalls its own connection.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::num::Wrapping;
use std::os::unix::net::UnixStream;

/// Receive buffer this side advertises to the guest for every connection (guest → host bytes in
/// flight).
pub const BUF_ALLOC: u32 = 256 << 10;
/// Report freed space once this many bytes have been forwarded since the last report.
const CREDIT_UPDATE_THRESHOLD: u32 = BUF_ALLOC / 4;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Host-initiated: REQUEST sent to the guest, waiting for its RESPONSE.
    AwaitingResponse,
    Established,
}

/// The guest broke the protocol on this connection or the host end failed: reset it.
#[derive(Debug, PartialEq, Eq)]
pub struct Reset;

pub struct Connection {
    pub stream: UnixStream,
    pub state: State,
    pub local_port: u32,
    pub peer_port: u32,
    /// Bytes of this side's own for the host (the hybrid vsock "OK" line), written before
    /// anything from the guest and not counted as guest bytes.
    preamble: Vec<u8>,
    /// Guest → host bytes the host socket has not taken yet.
    pending_to_host: VecDeque<u8>,
    /// Guest → host bytes written to the host socket (reported to the guest as fwd_cnt).
    fwd_cnt: Wrapping<u32>,
    fwd_cnt_reported: Wrapping<u32>,
    /// Host → guest bytes sent, and the guest's view of its buffer.
    sent_to_guest: Wrapping<u32>,
    peer_buf_alloc: u32,
    peer_fwd_cnt: Wrapping<u32>,
    /// The host socket may have bytes to read (edge-triggered readiness).
    pub host_readable: bool,
    /// The host socket reached end of file; the guest has been told (SHUTDOWN/SEND).
    pub host_eof: bool,
    /// SHUTDOWN flags received from the guest.
    pub peer_shutdown: u32,
    /// Sitting in the backend's round-robin queue of connections with host data.
    pub queued_for_rx: bool,
}

impl Connection {
    pub fn new(stream: UnixStream, state: State, local_port: u32, peer_port: u32) -> Self {
        Self {
            stream,
            state,
            local_port,
            peer_port,
            preamble: Vec::new(),
            pending_to_host: VecDeque::new(),
            fwd_cnt: Wrapping(0),
            fwd_cnt_reported: Wrapping(0),
            sent_to_guest: Wrapping(0),
            peer_buf_alloc: 0,
            peer_fwd_cnt: Wrapping(0),
            host_readable: true,
            host_eof: false,
            peer_shutdown: 0,
            queued_for_rx: false,
        }
    }

    /// Takes the credit fields of a packet from the guest.
    pub fn update_peer_credit(&mut self, buf_alloc: u32, fwd_cnt: u32) {
        self.peer_buf_alloc = buf_alloc;
        self.peer_fwd_cnt = Wrapping(fwd_cnt);
    }

    /// Bytes the guest can take now. A peer whose counters make no sense gets nothing.
    pub fn peer_credit(&self) -> u32 {
        let in_flight = (self.sent_to_guest - self.peer_fwd_cnt).0;
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// The credit fields this side puts in every packet it sends.
    pub fn credit_fields(&mut self) -> (u32, u32) {
        self.fwd_cnt_reported = self.fwd_cnt;
        (BUF_ALLOC, self.fwd_cnt.0)
    }

    pub fn wants_credit_update(&self) -> bool {
        (self.fwd_cnt - self.fwd_cnt_reported).0 >= CREDIT_UPDATE_THRESHOLD
    }

    /// Guest → host data: written through at once where the host socket takes it, buffered
    /// otherwise. More than the credit granted is a protocol violation.
    pub fn send_to_host(&mut self, data: &[u8]) -> Result<(), Reset> {
        if self.peer_shutdown & super::packet::SHUTDOWN_SEND != 0 {
            return Err(Reset);
        }
        let in_flight = self.pending_to_host.len() + data.len();
        if in_flight > BUF_ALLOC as usize {
            return Err(Reset);
        }
        if self.pending_to_host.is_empty() && self.preamble.is_empty() {
            let written = self.write_some(data, true)?;
            self.pending_to_host.extend(&data[written..]);
        } else {
            self.pending_to_host.extend(data);
            self.flush_to_host()?;
        }
        Ok(())
    }

    /// Puts `data` ahead of everything else bound for the host (the hybrid vsock "OK" line).
    pub fn send_to_host_first(&mut self, data: &[u8]) -> Result<(), Reset> {
        self.preamble.splice(0..0, data.iter().copied());
        self.flush_to_host()
    }

    /// Writes buffered bytes while the host socket takes them.
    pub fn flush_to_host(&mut self) -> Result<(), Reset> {
        if !self.preamble.is_empty() {
            let preamble = std::mem::take(&mut self.preamble);
            let written = self.write_some(&preamble, false)?;
            self.preamble = preamble[written..].to_vec();
            if !self.preamble.is_empty() {
                return Ok(());
            }
        }
        while !self.pending_to_host.is_empty() {
            let (front, _) = self.pending_to_host.as_slices();
            let front = front.to_vec();
            let written = self.write_some(&front, true)?;
            self.pending_to_host.drain(..written);
            if written < front.len() {
                break;
            }
        }
        if self.pending_to_host.is_empty() && self.peer_shutdown & super::packet::SHUTDOWN_SEND != 0
        {
            let _ = self.stream.shutdown(Shutdown::Write);
        }
        Ok(())
    }

    pub fn has_pending_to_host(&self) -> bool {
        !self.pending_to_host.is_empty() || !self.preamble.is_empty()
    }

    /// Writes what the host socket takes now; `guest_bytes` count towards fwd_cnt.
    fn write_some(&mut self, data: &[u8], guest_bytes: bool) -> Result<usize, Reset> {
        let mut written = 0;
        while written < data.len() {
            match self.stream.write(&data[written..]) {
                Ok(0) => return Err(Reset),
                Ok(n) => written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Err(Reset),
            }
        }
        if guest_bytes {
            self.fwd_cnt += Wrapping(written as u32);
        }
        Ok(written)
    }

    /// Reads host → guest bytes into `buf` (at most the guest's credit). `Ok(None)`: nothing to
    /// read now; `Ok(Some(0))`: the host closed its end.
    pub fn read_from_host(&mut self, buf: &mut [u8]) -> Result<Option<usize>, Reset> {
        let limit = buf.len().min(self.peer_credit() as usize);
        if limit == 0 {
            return Ok(None);
        }
        loop {
            match self.stream.read(&mut buf[..limit]) {
                Ok(n) => {
                    self.sent_to_guest += Wrapping(n as u32);
                    return Ok(Some(n));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.host_readable = false;
                    return Ok(None);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Err(Reset),
            }
        }
    }

    /// Whether this connection may produce host → guest data now.
    pub fn can_send_to_guest(&self) -> bool {
        self.state == State::Established
            && self.host_readable
            && !self.host_eof
            && self.peer_shutdown & super::packet::SHUTDOWN_RCV == 0
            && self.peer_credit() > 0
    }

    /// The guest shut down both directions and every byte it sent reached the host.
    pub fn finished(&self) -> bool {
        self.peer_shutdown == super::packet::SHUTDOWN_RCV | super::packet::SHUTDOWN_SEND
            && !self.has_pending_to_host()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (Connection, UnixStream) {
        let (a, b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        (Connection::new(a, State::Established, 1, 2), b)
    }

    #[test]
    fn credit_counts_bytes_in_flight() {
        let (mut c, mut host) = pair();
        c.update_peer_credit(10, 0);
        assert_eq!(c.peer_credit(), 10);
        host.write_all(b"0123456789abc").unwrap();
        let mut buf = [0u8; 64];
        assert_eq!(c.read_from_host(&mut buf).unwrap(), Some(10));
        assert_eq!(c.peer_credit(), 0);
        assert!(!c.can_send_to_guest());
        c.update_peer_credit(10, 4);
        assert_eq!(c.peer_credit(), 4);
        // Nonsense counters (fwd_cnt ahead of what was sent) give no credit, not a huge one.
        c.update_peer_credit(10, 1000);
        assert!(c.peer_credit() <= 10);
    }

    #[test]
    fn a_slow_host_reader_buffers_up_to_the_granted_credit_then_resets() {
        let (mut c, host) = pair();
        let chunk = vec![7u8; 64 << 10];
        let mut sent = 0usize;
        let result = loop {
            match c.send_to_host(&chunk) {
                Ok(()) => sent += chunk.len(),
                Err(e) => break e,
            }
            assert!(sent < 8 << 20, "never reset");
        };
        assert_eq!(result, Reset);
        assert!(c.has_pending_to_host());
        drop(host);
    }

    #[test]
    fn buffered_bytes_reach_the_host_in_order() {
        let (mut c, mut host) = pair();
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        c.send_to_host(&data).unwrap();
        let mut got = Vec::new();
        let mut buf = vec![0u8; 1 << 16];
        host.set_nonblocking(true).unwrap();
        while got.len() < data.len() {
            match host.read(&mut buf) {
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => c.flush_to_host().unwrap(),
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(got, data);
        assert!(c.wants_credit_update());
        let (alloc, fwd) = c.credit_fields();
        assert_eq!((alloc, fwd), (BUF_ALLOC, data.len() as u32));
        assert!(!c.wants_credit_update());
    }
}
