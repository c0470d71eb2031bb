//! How a writable volume comes back from the guest: as a stream, never as the disk image the
//! guest wrote (which the host would have to parse, and a hostile guest kernel can forge any byte
//! of it).
//!
//! On [`Operation::ExportVolume`](crate::Operation::ExportVolume) the agent connects to the
//! host's vsock port, writes the request's token and a newline (see [`crate::port_token`]),
//! then the volume as a GNU tar stream:
//! - every entry's path relative to the volume's root (the root itself is not sent), a directory
//!   before what it holds; names too long for a header in GNU long-name (`L`) and long-link (`K`)
//!   entries;
//! - directories, regular files and symbolic links as they are (mode and mtime; owners are not
//!   kept on the host); device nodes and fifos as their tar types, size 0, for the host to refuse
//!   by name; hard-linked files as separate copies (no `1` entries);
//! - what the agent leaves out, but whose host copy must not be taken for deleted, as a size-0
//!   entry after a PAX header with [`LEFT_OUT_KEY`] saying why ([`LeftOut`]): a file that would
//!   take the stream past [`ExportLimits::max_bytes`], a socket (tar has no type for it), a
//!   directory on another filesystem mounted in the volume;
//! - then the end-of-archive blocks, and the answer `Exported` counting the entries.
//!
//! The host trusts none of it: it checks every path and type, resolves every entry beneath the
//! destination with links never followed, and enforces the limits itself.

use serde::{Deserialize, Serialize};

/// What one volume may bring back. The host sets them from the disk it made: no honest guest
/// has more entries than the filesystem has inodes, nor more bytes of (non-sparse) files than the
/// disk holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportLimits {
    /// Bytes of file contents in all.
    pub max_bytes: u64,
    /// Entries in all (directories, files, links, refused ones too).
    pub max_entries: u64,
}

/// PAX key marking the next entry as one the agent left out; its value is a [`LeftOut`].
pub const LEFT_OUT_KEY: &str = "COCOON.left-out";

/// Why an entry was left out of the stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeftOut {
    /// A file past the byte limit.
    OverLimit,
    Socket,
    /// A directory another filesystem is mounted on.
    OtherFilesystem,
}

impl LeftOut {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::OverLimit => "over-limit",
            Self::Socket => "socket",
            Self::OtherFilesystem => "other-filesystem",
        }
    }

    pub fn parse(value: &[u8]) -> Option<Self> {
        [Self::OverLimit, Self::Socket, Self::OtherFilesystem]
            .into_iter()
            .find(|why| why.as_str().as_bytes() == value)
    }
}

/// Longest path (bytes) an entry may have, as Linux's PATH_MAX.
pub const MAX_PATH_LEN: usize = 4096;

/// Longest name (bytes) of one path component, as Linux's NAME_MAX.
pub const MAX_NAME_LEN: usize = 255;
