//! Tap devices through `/dev/net/tun`: attaching (or, with CAP_NET_ADMIN in the namespace,
//! creating) one by name as `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`, asking a descriptor what it is,
//! and the two settings a virtio-net backend needs (the header size, the offloads the host kernel
//! may hand over). A tap made this way is not persistent: it goes when its last descriptor closes.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

const TUN_DEVICE: &str = "/dev/net/tun";

#[derive(Debug, thiserror::Error)]
pub enum TapError {
    #[error("tap name '{0}': an interface name has 1 to 15 bytes, no '/'")]
    BadName(String),
    #[error("{TUN_DEVICE}: {0} (load the tun module; access to it is needed)")]
    NoTunDevice(io::Error),
    #[error("attaching tap '{name}': {source} (it must be a tap this user may attach, or CAP_NET_ADMIN is needed to create it)")]
    Attach { name: String, source: io::Error },
    #[error("descriptor {fd} is not a tap: {source}")]
    NotTun { fd: RawFd, source: io::Error },
}

/// What TUNGETIFF says of a tun descriptor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TapFlags {
    /// A tap (Ethernet frames), not a tun (IP packets).
    pub tap: bool,
    /// Frames carry a virtio-net header.
    pub vnet_header: bool,
}

fn ifreq_named(name: &str) -> Result<libc::ifreq, TapError> {
    let bytes = name.as_bytes();
    if bytes.is_empty()
        || bytes.len() >= libc::IFNAMSIZ
        || bytes.contains(&0)
        || bytes.contains(&b'/')
    {
        return Err(TapError::BadName(name.to_string()));
    }
    // SAFETY: ifreq is plain old data (a name and a union of integers and addresses), for which
    // all-zero bytes are a valid value.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in request.ifr_name.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    Ok(request)
}

/// Attaches to (or creates) the tap `name`, with the virtio-net header; the descriptor is
/// non-blocking and close-on-exec.
pub fn open_tap(name: &str) -> Result<File, TapError> {
    let mut request = ifreq_named(name)?;
    request.ifr_ifru.ifru_flags =
        (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short;
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(TUN_DEVICE)
        .map_err(TapError::NoTunDevice)?;
    // SAFETY: TUNSETIFF reads (and fills in) one ifreq, which `request` is and which lives across
    // the call; the descriptor is the tun device just opened.
    if unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut request) } < 0 {
        return Err(TapError::Attach {
            name: name.to_string(),
            source: io::Error::last_os_error(),
        });
    }
    Ok(file)
}

/// What the tun descriptor `fd` is attached as.
pub fn tap_flags(fd: RawFd) -> Result<TapFlags, TapError> {
    // SAFETY: as in `ifreq_named`: all-zero bytes are a valid ifreq.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    // SAFETY: TUNGETIFF fills in one ifreq, which `request` is and which lives across the call;
    // on a descriptor that is not a tun device it fails and writes nothing.
    if unsafe { libc::ioctl(fd, libc::TUNGETIFF, &mut request) } < 0 {
        return Err(TapError::NotTun {
            fd,
            source: io::Error::last_os_error(),
        });
    }
    // SAFETY: TUNGETIFF set the flags member of the union.
    let flags = i32::from(unsafe { request.ifr_ifru.ifru_flags });
    Ok(TapFlags {
        tap: flags & libc::IFF_TAP != 0,
        vnet_header: flags & libc::IFF_VNET_HDR != 0,
    })
}

/// The virtio-net header's size on the tap's frames.
pub fn set_vnet_header_size(fd: RawFd, size: usize) -> io::Result<()> {
    let size = size as libc::c_int;
    // SAFETY: TUNSETVNETHDRSZ reads one int, which `size` is and which lives across the call.
    if unsafe { libc::ioctl(fd, libc::TUNSETVNETHDRSZ, &size) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The offloads (`TUN_F_*`) the host kernel may use on frames it hands over.
pub fn set_offloads(fd: RawFd, offloads: libc::c_uint) -> io::Result<()> {
    // SAFETY: TUNSETOFFLOAD takes its argument by value (an unsigned int of TUN_F_ flags); it
    // reads no memory.
    if unsafe { libc::ioctl(fd, libc::TUNSETOFFLOAD, offloads as libc::c_ulong) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
