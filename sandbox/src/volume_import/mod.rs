//! A writable volume coming back from the guest, as the host takes it: the guest's tar stream
//! (`cocoon_protocol::volume_export`) made into a private staging directory ([`receive`]), then
//! the host directory made to hold what staging holds ([`sync`]). The stream is hostile input
//! (a guest whose kernel is compromised sends what it likes), so every entry is checked and made
//! beneath a directory descriptor, never through a link ([`beneath`]), within limits the host
//! sets; the caller applies a stream to the host directory only once it is known complete, so
//! one that fails leaves the directory as it was.
//!
//! Nothing here parses a filesystem the guest wrote, which is the point: the ext4 image on the
//! volume's disk is guest-controlled bytes, and a filesystem parser (debugfs did the job once)
//! builds host paths from names the guest chose. Written by hand because no crate unpacks a tar
//! stream under these rules: tar's own `unpack` follows what the archive says about links and
//! reads long names and PAX headers whole, without bound; only its framing is used (raw entries).

mod beneath;
mod entry_path;
#[cfg(test)]
mod hostile_tests;
mod receive;
mod refusals;
mod sync;

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

pub use receive::{receive, ReceiveError, Received};
pub use refusals::{Refusal, Refusals};
pub use sync::{sync, Synced};

/// Opens the directory at `path` (a host path the caller chose, links in it followed).
pub fn open_dir(path: &Path) -> io::Result<OwnedFd> {
    use rustix::fs::{Mode, OFlags};
    Ok(rustix::fs::open(
        path,
        OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// Which directory a path named when it was checked: (device, inode).
pub type DirIdentity = (u64, u64);

/// The identity of the directory at `path`.
pub fn dir_identity(path: &Path) -> io::Result<DirIdentity> {
    let stat = rustix::fs::fstat(open_dir(path)?)?;
    Ok((stat.st_dev, stat.st_ino))
}

/// Opens `path`, an absolute path without links (as `canonicalize` makes it), only if it
/// still names the directory `identity` says: between the check and the copy-back, whoever can
/// write one of its parents could have put a link or another directory in its place.
pub fn open_same_dir(path: &Path, identity: DirIdentity) -> io::Result<OwnedFd> {
    let relative = path
        .strip_prefix("/")
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "not an absolute path"))?;
    let dir = beneath::open_dirs(open_dir(Path::new("/"))?.as_fd(), relative)?;
    let stat = rustix::fs::fstat(&dir)?;
    if (stat.st_dev, stat.st_ino) != identity {
        return Err(io::Error::other(format!(
            "{} is no longer the directory it was when the container started (moved or replaced)",
            path.display()
        )));
    }
    Ok(dir)
}

/// Removes a directory the guest filled (staging), links as links.
pub use beneath::remove;
