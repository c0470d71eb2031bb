//! A tap device (`IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`): opened by name through `/dev/net/tun`,
//! or inherited as a descriptor. With the virtio-net header on the tap (12 bytes, set with
//! `TUNSETVNETHDRSZ`) the guest's checksum and segmentation offloads pass straight through, and
//! `TUNSETOFFLOAD` lets the host kernel hand the guest large, unchecksummed frames it accepted.
//! A tap inherited without `IFF_VNET_HDR` still works, with plain frames and no offloads.

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

use super::backend::{inherited, set_nonblocking, Backend, BackendError};
use super::state::{F_GUEST_CSUM, F_GUEST_TSO4, F_GUEST_TSO6, NET_HDR_LEN};

const TUN_DEVICE: &str = "/dev/net/tun";

pub struct Tap {
    file: File,
    vnet_header: bool,
}

fn ifreq_named(name: &str) -> Result<libc::ifreq, BackendError> {
    let bytes = name.as_bytes();
    if bytes.is_empty()
        || bytes.len() >= libc::IFNAMSIZ
        || bytes.contains(&0)
        || bytes.contains(&b'/')
    {
        return Err(BackendError::Open {
            what: format!(
                "tap name '{name}': an interface name has 1 to {} bytes, no '/' (tap=NAME)",
                libc::IFNAMSIZ - 1
            ),
            source: std::io::Error::from_raw_os_error(libc::EINVAL),
        });
    }
    // SAFETY: ifreq is plain old data (a name and a union of integers and addresses), for which
    // all-zero bytes are a valid value.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in request.ifr_name.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    Ok(request)
}

fn last_error(what: impl Into<String>) -> BackendError {
    BackendError::Open {
        what: what.into(),
        source: std::io::Error::last_os_error(),
    }
}

impl Tap {
    /// Attaches to (or, with CAP_NET_ADMIN, creates) the tap interface `name`.
    pub fn open(name: &str) -> Result<Self, BackendError> {
        let mut request = ifreq_named(name)?;
        request.ifr_ifru.ifru_flags =
            (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(TUN_DEVICE)
            .map_err(|source| BackendError::Open {
                what: format!("{TUN_DEVICE} (load the tun module; the VMM needs access to it)"),
                source,
            })?;
        // SAFETY: TUNSETIFF reads (and fills in) one ifreq, which `request` is and which lives
        // across the call; the descriptor is the tun device just opened.
        let ret = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut request) };
        if ret < 0 {
            return Err(last_error(format!(
                "attaching tap '{name}' (it must be a tap this user may attach, or need CAP_NET_ADMIN to create)"
            )));
        }
        let tap = Self {
            file,
            vnet_header: true,
        };
        tap.set_header_size()?;
        tap.set_offloads(0)?;
        Ok(tap)
    }

    /// A tap descriptor the VMM inherited, already attached to its interface.
    pub fn from_fd(fd: RawFd) -> Result<Self, BackendError> {
        let file = File::from(inherited(fd, "tap")?);
        // SAFETY: as in `ifreq_named`: all-zero bytes are a valid ifreq.
        let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
        // SAFETY: TUNGETIFF fills in one ifreq, which `request` is and which lives across the
        // call; on a descriptor that is not a tun device it fails and writes nothing.
        let ret = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNGETIFF, &mut request) };
        if ret < 0 {
            return Err(last_error(format!(
                "descriptor {fd} is not a tap (fd=N takes an attached tap)"
            )));
        }
        // SAFETY: TUNGETIFF set the flags member of the union.
        let flags = i32::from(unsafe { request.ifr_ifru.ifru_flags });
        if flags & libc::IFF_TAP == 0 {
            return Err(BackendError::Open {
                what: format!("descriptor {fd} is a tun device, not a tap (fd=N takes a tap: Ethernet frames)"),
                source: std::io::Error::from_raw_os_error(libc::EINVAL),
            });
        }
        set_nonblocking(file.as_raw_fd(), "the tap")?;
        let tap = Self {
            file,
            vnet_header: flags & libc::IFF_VNET_HDR != 0,
        };
        if tap.vnet_header {
            tap.set_header_size()?;
            tap.set_offloads(0)?;
        }
        Ok(tap)
    }

    fn set_header_size(&self) -> Result<(), BackendError> {
        let size = NET_HDR_LEN as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads one int, which `size` is and which lives across the call.
        let ret = unsafe { libc::ioctl(self.file.as_raw_fd(), libc::TUNSETVNETHDRSZ, &size) };
        if ret < 0 {
            return Err(last_error("setting the tap's virtio-net header size"));
        }
        Ok(())
    }
}

impl Backend for Tap {
    fn fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    fn has_vnet_header(&self) -> bool {
        self.vnet_header
    }

    fn set_offloads(&self, features: u64) -> Result<(), BackendError> {
        if !self.vnet_header {
            return Ok(());
        }
        let mut offloads: libc::c_uint = 0;
        if features & F_GUEST_CSUM != 0 {
            offloads |= libc::TUN_F_CSUM;
            if features & F_GUEST_TSO4 != 0 {
                offloads |= libc::TUN_F_TSO4;
            }
            if features & F_GUEST_TSO6 != 0 {
                offloads |= libc::TUN_F_TSO6;
            }
        }
        // SAFETY: TUNSETOFFLOAD takes its argument by value (an unsigned int of TUN_F_ flags);
        // it reads no memory.
        let ret = unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                libc::TUNSETOFFLOAD,
                offloads as libc::c_ulong,
            )
        };
        if ret < 0 {
            return Err(last_error("setting the tap's offloads"));
        }
        Ok(())
    }

    fn read_frame(&mut self, buf: &mut [u8]) -> Result<Option<usize>, BackendError> {
        loop {
            match self.file.read(buf) {
                Ok(n) => return Ok((n > 0).then_some(n)),
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(None),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    fn write_frame(&mut self, frame: &[u8]) -> Result<bool, BackendError> {
        loop {
            match self.file.write(frame) {
                Ok(_) => return Ok(true),
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    fn flush(&mut self) -> Result<bool, BackendError> {
        Ok(true)
    }
}
