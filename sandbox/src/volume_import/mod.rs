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

use std::ffi::OsStr;
use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::path::Path;

pub use receive::{receive, Received};
pub use refusals::{Refusal, Refusals};
pub use sync::sync;

/// Opens the directory at `path` (a host path the caller chose, links in it followed).
pub fn open_dir(path: &Path) -> io::Result<OwnedFd> {
    use rustix::fs::{Mode, OFlags};
    Ok(rustix::fs::open(
        path,
        OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// Removes `name` from `dir`, a directory with all it holds, links as links (a staging
/// directory the guest filled).
pub fn remove(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
    beneath::remove(dir, name)
}
