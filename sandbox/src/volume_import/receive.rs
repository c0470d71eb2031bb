//! The first half of a copy-back: a volume's stream from the guest (the tar stream of
//! `cocoon_protocol::volume_export`) made into a private staging directory, with every entry
//! checked as hostile input. The tar crate only frames the stream (raw entries: its own handling
//! of long names and PAX headers reads them whole, without bound); this module reads the
//! extension entries itself, bounded, and makes each entry with `beneath`'s calls, so nothing the
//! guest names can land outside the staging directory or pass through a link.
//!
//! Refused entries are counted by kind (`refusals`) and skipped; the stream goes on. What makes
//! the whole stream void — the host directory then stays as it was — is a malformed or
//! truncated stream, more entries than the volume's filesystem has inodes, more data than an
//! honest stream of the volume could hold, or more than [`MAX_KEPT_NAME_BYTES`] of names to
//! remember.

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd};

use cocoon_protocol::volume_export::{ExportLimits, LeftOut, LEFT_OUT_KEY, MAX_PATH_LEN};
use rustix::fs::{Mode, Timespec, Timestamps, UTIME_OMIT};
use tar::EntryType;

use super::beneath;
use super::entry_path;
use super::refusals::{Refusal, Refusals};

/// Largest PAX header taken (the stream's only PAX key is short).
const MAX_PAX_LEN: u64 = 64 << 10;
/// Names the copy-back may have to remember (kept host copies, modes staging cannot carry).
pub const MAX_KEPT_NAME_BYTES: usize = 16 << 20;
/// What remembering one name costs beyond its bytes (the maps' own entries).
const KEPT_NAME_OVERHEAD: usize = 64;
/// Deepest entry taken: the sync holds two descriptors per level, so the host's descriptor
/// limit (1024 by default) must not be reached.
pub const MAX_DEPTH: usize = 256;
/// What a directory costs against the byte limit (one ext4 block).
const DIRECTORY_BYTES: u64 = 4096;

/// Why a stream was void as a whole (the host directory then stays as it was). The guest's
/// part is said as such; an I/O error is shown inline, as the one cause.
#[derive(Debug, thiserror::Error)]
pub enum ReceiveError {
    #[error("reading the volume stream: {0}")]
    Stream(io::Error),
    #[error("reading {what}: {cause}")]
    Header {
        what: &'static str,
        cause: io::Error,
    },
    #[error("a malformed PAX header: {0}")]
    MalformedPax(io::Error),
    #[error("the guest sent over {0} bytes, more than the volume holds")]
    TooManyBytes(u64),
    #[error("the guest sent over {0} extension headers")]
    TooManyExtensions(u64),
    #[error("the guest sent over {0} entries, more than the volume's filesystem has inodes")]
    TooManyEntries(u64),
    #[error("the guest sent {what} of over {max} bytes")]
    Oversized { what: &'static str, max: u64 },
    #[error("the guest sent over {} MiB of names of refused or unreadable entries", MAX_KEPT_NAME_BYTES >> 20)]
    TooManyNames,
    #[error("opening a staging directory: {0}")]
    StagingDirectory(io::Error),
    #[error("writing {path} into staging: {cause}")]
    Staging { path: String, cause: io::Error },
}

type Result<T> = std::result::Result<T, ReceiveError>;

/// What the stream made, and what it refused.
#[derive(Debug, Default)]
pub struct Received {
    /// Entries (extension headers not counted), to check against the agent's count.
    pub entries: u64,
    /// Bytes staged (files, directories, link targets), against [`ExportLimits::max_bytes`].
    pub bytes: u64,
    pub refusals: Refusals,
    /// Paths (joined by `/`) of entries refused by name: the host's copies stay as they are.
    pub keep: HashSet<Vec<u8>>,
    /// Modes the staging copy does not carry because they deny its owner (0o600 for files,
    /// 0o700 for directories, are added there so the copy can be read back).
    pub modes: HashMap<Vec<u8>, u32>,
    kept_name_bytes: usize,
}

impl Received {
    fn remember(&mut self, bytes: usize) -> Result<()> {
        self.kept_name_bytes += bytes + KEPT_NAME_OVERHEAD;
        if self.kept_name_bytes > MAX_KEPT_NAME_BYTES {
            return Err(ReceiveError::TooManyNames);
        }
        Ok(())
    }

    fn refuse_keeping(&mut self, kind: Refusal, path: Vec<u8>) -> Result<()> {
        self.refusals.note(kind, &path);
        self.remember(path.len())?;
        self.keep.insert(path);
        Ok(())
    }

    /// Takes `cost` bytes of the limit, if they are left.
    fn charge(&mut self, cost: u64, limits: &ExportLimits) -> bool {
        if cost > limits.max_bytes - self.bytes {
            return false;
        }
        self.bytes += cost;
        true
    }
}

/// Extension headers that apply to the next entry.
#[derive(Default)]
struct Pending {
    long_name: Option<Vec<u8>>,
    long_link: Option<Vec<u8>>,
    left_out: Option<LeftOut>,
    unknown_extension: bool,
}

/// Reads `input` up to its end-of-archive into `staging`, an empty directory of the host's.
pub fn receive(
    input: &mut impl Read,
    staging: BorrowedFd<'_>,
    limits: ExportLimits,
) -> Result<Received> {
    let mut received = Received::default();
    let mut archive = tar::Archive::new(input);
    let entries = archive.entries().map_err(ReceiveError::Stream)?.raw(true);
    let mut pending = Pending::default();
    // Extension headers carry no entry of their own: bounded apart, as a stream of nothing else
    // would otherwise never reach the entry limit. Data the host does not keep (refused entries,
    // extension headers) is read and dropped; no honest stream has more than this of it.
    let max_extensions = limits.max_entries.saturating_mul(3).saturating_add(16);
    let max_read = limits.max_bytes.saturating_add(
        limits
            .max_entries
            .saturating_mul(2 * (MAX_PATH_LEN as u64 + 1) + 1024),
    );
    let (mut extensions, mut read) = (0u64, 0u64);
    for entry in entries {
        let mut entry = entry.map_err(ReceiveError::Stream)?;
        let kind = entry.header().entry_type();
        let size = entry
            .header()
            .entry_size()
            .map_err(header("an entry's size"))?;
        read = read.saturating_add(size);
        if read > max_read {
            return Err(ReceiveError::TooManyBytes(max_read));
        }
        if matches!(
            kind,
            EntryType::GNULongName
                | EntryType::GNULongLink
                | EntryType::XHeader
                | EntryType::XGlobalHeader
        ) {
            extensions += 1;
            if extensions > max_extensions {
                return Err(ReceiveError::TooManyExtensions(max_extensions));
            }
            match kind {
                EntryType::GNULongName => pending.long_name = Some(long_text(&mut entry)?),
                EntryType::GNULongLink => pending.long_link = Some(long_text(&mut entry)?),
                EntryType::XHeader => pax(&mut entry, &mut pending)?,
                _ => pending.unknown_extension = true,
            }
            continue;
        }
        received.entries += 1;
        if received.entries > limits.max_entries {
            return Err(ReceiveError::TooManyEntries(limits.max_entries));
        }
        let pending = std::mem::take(&mut pending);
        let path = match pending.long_name {
            Some(name) => name,
            None => entry.header().path_bytes().into_owned(),
        };
        let link = match pending.long_link {
            Some(link) => Some(link),
            None => entry.header().link_name_bytes().map(|l| l.into_owned()),
        };
        let Ok(components) = entry_path::components(&path) else {
            received.refusals.note(Refusal::UnsafePath, &path);
            continue;
        };
        if components.is_empty() {
            continue; // The volume's root: the host directory keeps its own mode.
        }
        let path = entry_path::joined(&components);
        let refusal = if pending.unknown_extension {
            Some(Refusal::Extension)
        } else if components.len() > MAX_DEPTH {
            Some(Refusal::TooDeep)
        } else if let Some(why) = pending.left_out {
            Some(match why {
                LeftOut::OverLimit => Refusal::OverLimit,
                LeftOut::Socket => Refusal::Socket,
                LeftOut::OtherFilesystem => Refusal::OtherFilesystem,
            })
        } else {
            match kind {
                EntryType::Regular | EntryType::Directory | EntryType::Symlink => None,
                EntryType::Link => Some(Refusal::HardLink),
                EntryType::Char | EntryType::Block => Some(Refusal::Device),
                EntryType::Fifo => Some(Refusal::Fifo),
                _ => Some(Refusal::OtherKind),
            }
        };
        if let Some(refusal) = refusal {
            received.refuse_keeping(refusal, path)?;
            continue;
        }
        let link = match kind {
            EntryType::Symlink => match link.as_deref().and_then(checked_link_target) {
                Some(target) => Some(target.to_owned()),
                None => {
                    received.refusals.note(Refusal::BadLinkTarget, &path);
                    continue;
                }
            },
            _ => None,
        };
        let header = entry.header();
        let cost = match (kind, &link) {
            (EntryType::Directory, _) => DIRECTORY_BYTES,
            (_, Some(target)) => target.len() as u64,
            _ => size,
        };
        if !received.charge(cost, &limits) {
            // A file's data is skipped unread (counted in what the stream may hold).
            received.refuse_keeping(Refusal::OverLimit, path)?;
            continue;
        }
        let mode = header.mode().map_err(self::header("an entry's mode"))? & 0o7777;
        // As a signed number of seconds: a time before 1970 is negative.
        let mtime = header.mtime().map_err(self::header("an entry's mtime"))? as i64;
        let mode = if kind == EntryType::Directory {
            // setgid on a directory only passes its group on; setuid means nothing there.
            mode & 0o3777
        } else {
            if mode & 0o6000 != 0 {
                received.refusals.note(Refusal::SetId, &path);
            }
            mode & 0o1777
        };
        let (name, parent) = components.split_last().expect("not the root");
        let parent = match beneath::open_dir_beneath(staging, parent) {
            Ok(fd) => fd,
            Err(e) => {
                received.bytes -= cost;
                let refusal = match e.raw_os_error() {
                    Some(libc::ELOOP) => Refusal::ThroughLink,
                    Some(libc::ENOENT | libc::ENOTDIR) => Refusal::NoDirectory,
                    _ => return Err(ReceiveError::StagingDirectory(e)),
                };
                received.refusals.note(refusal, &path);
                continue;
            }
        };
        let made = match &link {
            Some(target) => {
                rustix::fs::symlinkat(target.as_os_str(), &parent, *name).map_err(Into::into)
            }
            None if kind == EntryType::Directory => make_dir(parent.as_fd(), name, mode),
            None => make_file(parent.as_fd(), name, mode, mtime, size, &mut entry),
        };
        match made {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                received.bytes -= cost;
                received.refusals.note(Refusal::Duplicate, &path);
                continue;
            }
            Err(cause) => {
                return Err(ReceiveError::Staging {
                    path: super::refusals::shown(&path),
                    cause,
                })
            }
        }
        let owner_bits = if kind == EntryType::Directory {
            0o700
        } else {
            0o600
        };
        if link.is_none() && mode & owner_bits != owner_bits {
            received.remember(path.len())?;
            received.modes.insert(path, mode);
        }
    }
    Ok(received)
}

/// A GNU long name or link: the whole text, without its terminating NUL.
fn long_text(entry: &mut impl Read) -> Result<Vec<u8>> {
    let mut text = bounded(entry, MAX_PATH_LEN as u64 + 1, "a long name")?;
    if text.last() == Some(&0) {
        text.pop();
    }
    Ok(text)
}

/// A PAX header: only [`LEFT_OUT_KEY`] with a known reason is taken; anything else voids the
/// next entry.
fn pax(entry: &mut impl Read, pending: &mut Pending) -> Result<()> {
    let data = bounded(entry, MAX_PAX_LEN, "a PAX header")?;
    for record in tar::PaxExtensions::new(&data) {
        let record = record.map_err(ReceiveError::MalformedPax)?;
        match LeftOut::parse(record.value_bytes()) {
            Some(why) if record.key_bytes() == LEFT_OUT_KEY.as_bytes() => {
                pending.left_out = Some(why)
            }
            _ => pending.unknown_extension = true,
        }
    }
    Ok(())
}

/// All of an entry's data, which may not exceed `max` bytes.
fn bounded(entry: &mut impl Read, max: u64, what: &'static str) -> Result<Vec<u8>> {
    let mut data = Vec::new();
    entry
        .take(max + 1)
        .read_to_end(&mut data)
        .map_err(header(what))?;
    if data.len() as u64 > max {
        return Err(ReceiveError::Oversized { what, max });
    }
    Ok(data)
}

/// An I/O error reading `what` of an entry.
fn header(what: &'static str) -> impl FnOnce(io::Error) -> ReceiveError {
    move |cause| ReceiveError::Header { what, cause }
}

/// A link target as it may be written: any bytes but NUL, at most PATH_MAX of them.
fn checked_link_target(target: &[u8]) -> Option<&OsStr> {
    use std::os::unix::ffi::OsStrExt;
    (!target.is_empty() && target.len() <= MAX_PATH_LEN && !target.contains(&0))
        .then(|| OsStr::from_bytes(target))
}

fn make_dir(parent: BorrowedFd<'_>, name: &OsStr, mode: u32) -> io::Result<()> {
    rustix::fs::mkdirat(parent, name, Mode::from_raw_mode(0o700))?;
    let dir = beneath::open_dir(parent, name)?;
    rustix::fs::fchmod(&dir, Mode::from_raw_mode(mode | 0o700))?;
    Ok(())
}

fn make_file(
    parent: BorrowedFd<'_>,
    name: &OsStr,
    mode: u32,
    mtime: i64,
    size: u64,
    data: &mut impl Read,
) -> io::Result<()> {
    let mut file = beneath::create_file(parent, name)?;
    let copied = io::copy(data, &mut file)?;
    if copied != size {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the stream ended inside a file",
        ));
    }
    rustix::fs::fchmod(&file, Mode::from_raw_mode(mode | 0o600))?;
    rustix::fs::futimens(&file, &timestamps(mtime))?;
    Ok(())
}

/// A modification time to set, the access time left alone.
pub fn timestamps(mtime: i64) -> Timestamps {
    Timestamps {
        last_access: Timespec {
            tv_sec: 0,
            tv_nsec: UTIME_OMIT,
        },
        last_modification: Timespec {
            tv_sec: mtime,
            tv_nsec: 0,
        },
    }
}
