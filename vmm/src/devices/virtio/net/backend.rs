//! What carries a device's frames on the host, behind one trait: a [`Tap`](super::tap::Tap) or
//! a [`Stream`](super::stream::Stream) socket. Every backend is non-blocking: "not now" is an
//! answer, and the event loop comes back when the descriptor is ready.

use std::os::fd::RawFd;

use cocoon_protocol::vm_config::NetBackendConfig;

use super::stream::Stream;
use super::tap::Tap;

/// A backend failed.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("{what}: {source}")]
    Open {
        what: String,
        source: std::io::Error,
    },
    #[error("{0} (tap=NAME, fd=N)")]
    Tap(#[from] cocoon_net::tap::TapError),
    #[error("the backend closed its end (the link is down)")]
    Closed,
    #[error("the backend sent a frame of {0} bytes, more than a frame can be")]
    FrameTooLong(usize),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

pub trait Backend: Send {
    /// The descriptor the event loop watches.
    fn fd(&self) -> RawFd;
    /// Frames carry the 12-byte virtio-net header both ways (a tap opened with
    /// `IFF_VNET_HDR`), so offloads pass through.
    fn has_vnet_header(&self) -> bool;
    /// Lets the backend hand the guest frames with the offloads the driver accepted.
    fn set_offloads(&self, features: u64) -> Result<(), BackendError>;
    /// Reads the next frame (with the header, if the backend has one) into `buf`, which holds
    /// the largest: `Some(len)`, or None when none is ready.
    fn read_frame(&mut self, buf: &mut [u8]) -> Result<Option<usize>, BackendError>;
    /// Sends one frame: true once taken (a stream may keep part of it to send later), false if
    /// the backend cannot take it now.
    fn write_frame(&mut self, frame: &[u8]) -> Result<bool, BackendError>;
    /// Sends what an earlier frame left; true when nothing is left.
    fn flush(&mut self) -> Result<bool, BackendError>;
}

/// Opens the backend `config` names.
pub fn open_backend(config: &NetBackendConfig) -> Result<Box<dyn Backend>, BackendError> {
    Ok(match config {
        NetBackendConfig::Tap(name) => Box::new(Tap::open(name)?),
        NetBackendConfig::TapFd(fd) => Box::new(Tap::from_fd(*fd)?),
        NetBackendConfig::StreamFd(fd) => Box::new(Stream::from_fd(*fd)?),
    })
}

/// Takes ownership of `fd`, a descriptor the VMM was started with, after checking it is open.
pub(super) fn inherited(fd: RawFd, what: &str) -> Result<std::os::fd::OwnedFd, BackendError> {
    use std::os::fd::FromRawFd;
    let open_error = |source| BackendError::Open {
        what: format!("{what} descriptor {fd} (pass a descriptor the VMM inherits, above 2)"),
        source,
    };
    if fd <= 2 {
        return Err(open_error(std::io::Error::from_raw_os_error(libc::EBADF)));
    }
    nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFD)
        .map_err(|e| open_error(std::io::Error::from(e)))?;
    // SAFETY: the descriptor is open (F_GETFD succeeded) and was handed to the VMM for this
    // device alone, so nothing else in the process owns or closes it.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
}

/// Makes `fd` non-blocking, as every backend is.
pub(super) fn set_nonblocking(fd: RawFd, what: &str) -> Result<(), BackendError> {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    let open_error = |e: nix::Error| BackendError::Open {
        what: format!("making {what} non-blocking"),
        source: e.into(),
    };
    let flags = fcntl(fd, FcntlArg::F_GETFL).map_err(open_error)?;
    fcntl(
        fd,
        FcntlArg::F_SETFL(OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK),
    )
    .map_err(open_error)?;
    Ok(())
}
