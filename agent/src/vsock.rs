//! AF_VSOCK stream sockets: the control listener and the stdio connections to the host.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use nix::sys::socket::{
    accept4, bind, connect, listen, socket, AddressFamily, Backlog, SockFlag, SockType, VsockAddr,
};

/// The host, as the guest addresses it.
pub const HOST_CID: u32 = 2;
/// Any local CID (for listening).
const CID_ANY: u32 = u32::MAX;

fn stream_socket() -> io::Result<OwnedFd> {
    Ok(socket(
        AddressFamily::Vsock,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?)
}

/// Connects to a host program listening on `port` (through the VMM, at `<uds>_<port>`) and
/// identifies the agent with the host's `token` (`cocoon_protocol::port_token`).
pub fn connect_to_host(port: u32, token: &str) -> io::Result<File> {
    if !cocoon_protocol::port_token::is_token(token) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "the host's token for port {port} is not {} hex digits",
                cocoon_protocol::port_token::TOKEN_LEN
            ),
        ));
    }
    let fd = stream_socket()?;
    connect(fd.as_raw_fd(), &VsockAddr::new(HOST_CID, port))?;
    let mut stream = File::from(fd);
    stream.write_all(format!("{token}\n").as_bytes())?;
    Ok(stream)
}

pub fn listen_on(port: u32) -> io::Result<OwnedFd> {
    let fd = stream_socket()?;
    bind(fd.as_raw_fd(), &VsockAddr::new(CID_ANY, port))?;
    listen(&fd, Backlog::new(16).map_err(io::Error::from)?)?;
    Ok(fd)
}

pub fn accept_on(listener: &OwnedFd) -> io::Result<File> {
    let fd = accept4(listener.as_raw_fd(), SockFlag::SOCK_CLOEXEC)?;
    // SAFETY: accept(2) returned a new descriptor that nothing else owns.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// Whether the VMM gave this guest a virtio-vsock device (virtio device ID 19).
pub fn device_present() -> bool {
    std::fs::read_dir("/sys/bus/virtio/devices")
        .map(|entries| {
            entries.filter_map(Result::ok).any(|e| {
                std::fs::read_to_string(e.path().join("device"))
                    .is_ok_and(|id| id.trim() == "0x0013")
            })
        })
        .unwrap_or(false)
}
