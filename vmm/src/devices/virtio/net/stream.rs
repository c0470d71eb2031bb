//! A stream socket speaking qemu's stream netdev framing: each Ethernet frame is preceded by its
//! length, 4 bytes big-endian. Debian's `passt --fd N` speaks it on one end of a socketpair.
//! No virtio-net header travels, so no offloads are offered with it.
//!
//! Reads gather partial frames in a bounded buffer; a length no frame can have is the peer
//! breaking the stream, and ends the link. A write the socket takes only in part keeps its rest
//! (one frame at most) and sends it before anything else.

use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;

use super::backend::{inherited, set_nonblocking, Backend, BackendError};
use super::state::MAX_FRAME_LEN;

const LENGTH_PREFIX: usize = 4;
/// Room for one whole frame and the start of the next.
const INBOUND_CAPACITY: usize = 2 * (LENGTH_PREFIX + MAX_FRAME_LEN);

pub struct Stream {
    socket: UnixStream,
    inbound: Box<[u8]>,
    /// Bytes in `inbound` not yet handed out.
    inbound_len: usize,
    outbound: Vec<u8>,
    /// How much of `outbound` went already.
    outbound_sent: usize,
}

impl Stream {
    pub fn new(socket: UnixStream) -> Result<Self, BackendError> {
        set_nonblocking(socket.as_raw_fd(), "the stream socket")?;
        Ok(Self {
            socket,
            inbound: vec![0; INBOUND_CAPACITY].into_boxed_slice(),
            inbound_len: 0,
            outbound: Vec::with_capacity(LENGTH_PREFIX + MAX_FRAME_LEN),
            outbound_sent: 0,
        })
    }

    /// A connected stream socket the VMM inherited as `fd`.
    pub fn from_fd(fd: RawFd) -> Result<Self, BackendError> {
        let socket = UnixStream::from(inherited(fd, "stream socket")?);
        Self::new(socket)
    }

    /// A whole frame at the start of `inbound`: its length.
    fn complete_frame(&self) -> Result<Option<usize>, BackendError> {
        if self.inbound_len < LENGTH_PREFIX {
            return Ok(None);
        }
        let prefix: [u8; LENGTH_PREFIX] =
            self.inbound[..LENGTH_PREFIX].try_into().expect("4 bytes");
        let len = u32::from_be_bytes(prefix) as usize;
        if len > MAX_FRAME_LEN {
            return Err(BackendError::FrameTooLong(len));
        }
        Ok((self.inbound_len >= LENGTH_PREFIX + len).then_some(len))
    }
}

impl Backend for Stream {
    fn fd(&self) -> RawFd {
        self.socket.as_raw_fd()
    }

    fn has_vnet_header(&self) -> bool {
        false
    }

    fn set_offloads(&self, _features: u64) -> Result<(), BackendError> {
        Ok(())
    }

    fn read_frame(&mut self, buf: &mut [u8]) -> Result<Option<usize>, BackendError> {
        loop {
            if let Some(len) = self.complete_frame()? {
                let frame = &self.inbound[LENGTH_PREFIX..LENGTH_PREFIX + len];
                let copied = len.min(buf.len());
                buf[..copied].copy_from_slice(&frame[..copied]);
                self.inbound
                    .copy_within(LENGTH_PREFIX + len..self.inbound_len, 0);
                self.inbound_len -= LENGTH_PREFIX + len;
                return Ok(Some(copied));
            }
            match self.socket.read(&mut self.inbound[self.inbound_len..]) {
                Ok(0) => return Err(BackendError::Closed),
                Ok(n) => self.inbound_len += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(None),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    fn write_frame(&mut self, frame: &[u8]) -> Result<bool, BackendError> {
        if !self.flush()? {
            return Ok(false);
        }
        self.outbound.clear();
        self.outbound
            .extend_from_slice(&(frame.len() as u32).to_be_bytes());
        self.outbound.extend_from_slice(frame);
        self.outbound_sent = 0;
        self.flush()?;
        Ok(true)
    }

    fn flush(&mut self) -> Result<bool, BackendError> {
        while self.outbound_sent < self.outbound.len() {
            match self.socket.write(&self.outbound[self.outbound_sent..]) {
                Ok(0) => return Err(BackendError::Closed),
                Ok(n) => self.outbound_sent += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::BrokenPipe => return Err(BackendError::Closed),
                Err(e) => return Err(e.into()),
            }
        }
        self.outbound.clear();
        self.outbound_sent = 0;
        Ok(true)
    }
}
