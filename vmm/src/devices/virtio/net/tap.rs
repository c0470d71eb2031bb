//! A tap device (`IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`): opened by name through `/dev/net/tun`,
//! or inherited as a descriptor. With the virtio-net header on the tap (12 bytes, set with
//! `TUNSETVNETHDRSZ`) the guest's checksum and segmentation offloads pass straight through, and
//! `TUNSETOFFLOAD` lets the host kernel hand the guest large, unchecksummed frames it accepted.
//! A tap inherited without `IFF_VNET_HDR` still works, with plain frames and no offloads.

use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsRawFd, RawFd};

use cocoon_net::tap;

use super::backend::{inherited, set_nonblocking, Backend, BackendError};
use super::state::{F_GUEST_CSUM, F_GUEST_TSO4, F_GUEST_TSO6, NET_HDR_LEN};

pub struct Tap {
    file: File,
    vnet_header: bool,
}

fn setting_error(what: &str) -> impl FnOnce(std::io::Error) -> BackendError + '_ {
    move |source| BackendError::Open {
        what: what.to_string(),
        source,
    }
}

impl Tap {
    /// Attaches to (or, with CAP_NET_ADMIN, creates) the tap interface `name`.
    pub fn open(name: &str) -> Result<Self, BackendError> {
        let tap = Self {
            file: tap::open_tap(name)?,
            vnet_header: true,
        };
        tap.set_header_size()?;
        tap.set_offloads(0)?;
        Ok(tap)
    }

    /// A tap descriptor the VMM inherited, already attached to its interface.
    pub fn from_fd(fd: RawFd) -> Result<Self, BackendError> {
        let file = File::from(inherited(fd, "tap")?);
        let flags = tap::tap_flags(file.as_raw_fd())?;
        if !flags.tap {
            return Err(BackendError::Open {
                what: format!("descriptor {fd} is a tun device, not a tap (fd=N takes a tap: Ethernet frames)"),
                source: std::io::Error::from_raw_os_error(libc::EINVAL),
            });
        }
        set_nonblocking(file.as_raw_fd(), "the tap")?;
        let tap = Self {
            file,
            vnet_header: flags.vnet_header,
        };
        if tap.vnet_header {
            tap.set_header_size()?;
            tap.set_offloads(0)?;
        }
        Ok(tap)
    }

    fn set_header_size(&self) -> Result<(), BackendError> {
        tap::set_vnet_header_size(self.file.as_raw_fd(), NET_HDR_LEN)
            .map_err(setting_error("setting the tap's virtio-net header size"))
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
        tap::set_offloads(self.file.as_raw_fd(), offloads)
            .map_err(setting_error("setting the tap's offloads"))
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
