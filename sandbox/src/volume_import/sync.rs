//! The second half of a copy-back: the host directory made to hold what the staging directory
//! holds — new and changed entries written, entries the stream no longer has removed, except
//! those it refused by name (`Received::keep`) — through directory descriptors only, links never
//! followed on either side. Files are rewritten in place (their owner and other links stay) only
//! when their contents changed.

use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;

use rustix::fs::{FileType, Mode, Stat};

use super::beneath;
use super::receive::{timestamps, Received};

/// Makes `host` hold what `staging` holds.
pub fn sync(staging: BorrowedFd<'_>, host: BorrowedFd<'_>, received: &Received) -> io::Result<()> {
    sync_dir(staging, host, &[], received)
}

fn child_path(parent: &[u8], name: &OsStr) -> Vec<u8> {
    let mut path = parent.to_vec();
    if !path.is_empty() {
        path.push(b'/');
    }
    path.extend_from_slice(name.as_bytes());
    path
}

fn sync_dir(
    from: BorrowedFd<'_>,
    to: BorrowedFd<'_>,
    path: &[u8],
    received: &Received,
) -> io::Result<()> {
    let wanted: HashSet<OsString> = beneath::names(from)?.into_iter().collect();
    for name in &wanted {
        let child = child_path(path, name);
        let source =
            beneath::stat(from, name)?.ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        let target = beneath::stat(to, name)?;
        let same_kind = target
            .as_ref()
            .is_some_and(|t| beneath::kind(t) == beneath::kind(&source));
        if target.is_some() && !same_kind {
            beneath::remove(to, name)?;
        }
        let mode = received
            .modes
            .get(&child)
            .copied()
            .unwrap_or(source.st_mode & 0o7777);
        match beneath::kind(&source) {
            FileType::Directory => {
                if !same_kind {
                    rustix::fs::mkdirat(to, name.as_os_str(), Mode::from_raw_mode(0o700))?;
                }
                let from_sub = beneath::open_dir(from, name)?;
                let to_sub = beneath::open_dir(to, name)?;
                let mut current = match target.filter(|_| same_kind) {
                    Some(t) => t.st_mode & 0o7777,
                    None => 0o700,
                };
                if current & 0o700 != 0o700 {
                    // Writable by us while it fills, whatever mode it had or will have.
                    current |= 0o700;
                    rustix::fs::fchmod(&to_sub, Mode::from_raw_mode(current))?;
                }
                sync_dir(from_sub.as_fd(), to_sub.as_fd(), &child, received)?;
                set_mode(to_sub.as_fd(), current, mode)?;
            }
            FileType::RegularFile => {
                let mut source_file = beneath::open_file(from, name)?;
                let existing = target.filter(|_| same_kind);
                let current = existing.as_ref().map_or(0o600, |t| t.st_mode & 0o7777);
                let unchanged = match &existing {
                    Some(t) => same_contents(&mut source_file, t, to, name)?,
                    None => false,
                };
                let out = if unchanged {
                    beneath::open_file(to, name)?
                } else {
                    let mut out = match existing {
                        Some(_) => beneath::rewrite_file(to, name)?,
                        None => beneath::create_file(to, name)?,
                    };
                    io::copy(&mut source_file, &mut out)?;
                    out
                };
                set_mode(out.as_fd(), current, mode)?;
                let mtime_right =
                    unchanged && existing.is_some_and(|t| t.st_mtime == source.st_mtime);
                if !mtime_right {
                    rustix::fs::futimens(&out, &timestamps(source.st_mtime.max(0) as u64))?;
                }
            }
            FileType::Symlink => {
                let link = rustix::fs::readlinkat(from, name.as_os_str(), Vec::new())?;
                let current = same_kind
                    .then(|| rustix::fs::readlinkat(to, name.as_os_str(), Vec::new()))
                    .transpose()?;
                if current.as_ref() != Some(&link) {
                    if same_kind {
                        beneath::remove(to, name)?;
                    }
                    rustix::fs::symlinkat(link.as_c_str(), to, name.as_os_str())?;
                }
            }
            // Staging holds nothing else: the stream's other kinds were refused.
            _ => {}
        }
    }
    for name in beneath::names(to)? {
        if !wanted.contains(&name) && !received.keep.contains(&child_path(path, &name)) {
            beneath::remove(to, &name)?;
        }
    }
    Ok(())
}

/// Gives `fd` `wanted` unless it has that mode already (a host entry that is not ours but
/// already right is left alone).
fn set_mode(fd: BorrowedFd<'_>, current: u32, wanted: u32) -> io::Result<()> {
    if current != wanted {
        rustix::fs::fchmod(fd, Mode::from_raw_mode(wanted))?;
    }
    Ok(())
}

/// Whether the host's regular file `name` (`stat`) already holds `source`'s bytes; `source` is
/// back at its start afterwards.
fn same_contents(
    source: &mut File,
    stat: &Stat,
    dir: BorrowedFd<'_>,
    name: &OsStr,
) -> io::Result<bool> {
    use std::io::Seek;
    if source.metadata()?.len() != stat.st_size as u64 {
        return Ok(false);
    }
    let mut other = beneath::open_file(dir, name)?;
    let (mut a, mut b) = (vec![0u8; 64 << 10], vec![0u8; 64 << 10]);
    let same = loop {
        let n = read_full(source, &mut a)?;
        if n == 0 {
            break true;
        }
        if read_full(&mut other, &mut b[..n])? != n || a[..n] != b[..n] {
            break false;
        }
    };
    source.rewind()?;
    Ok(same)
}

fn read_full(file: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}
