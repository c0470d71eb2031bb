//! The second half of a copy-back: the host directory made to hold what the staging directory
//! holds — new and changed entries written, entries the stream no longer has removed, except
//! those it refused by name (`Received::keep`) — through directory descriptors only, links never
//! followed on either side, and never into another filesystem mounted in the host directory.
//! A file is rewritten in place (its owner stays) only when its contents changed and it has no
//! other link, which could be outside the directory; otherwise it is replaced. An entry that
//! cannot be written is reported and the rest goes on.

use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;

use rustix::fs::{FileType, Mode, Stat};

use super::beneath;
use super::receive::{timestamps, Received};
use super::refusals::shown;

/// Failures shown by name.
const EXAMPLES: usize = 3;

/// Entries the sync could not write.
#[derive(Debug, Default)]
pub struct Synced {
    pub failures: u64,
    examples: Vec<String>,
}

impl Synced {
    fn fail(&mut self, path: &[u8], error: io::Error) {
        self.failures += 1;
        if self.examples.len() < EXAMPLES {
            let path = if path.is_empty() { b"." } else { path };
            self.examples.push(format!("{}: {error}", shown(path)));
        }
    }

    /// A line saying what could not be written, if anything.
    pub fn line(&self) -> Option<String> {
        (self.failures > 0).then(|| {
            let more = if self.failures > self.examples.len() as u64 {
                ", ..."
            } else {
                ""
            };
            format!(
                "could not write {} entr{} into the host directory ({}{more})",
                self.failures,
                if self.failures == 1 { "y" } else { "ies" },
                self.examples.join(", ")
            )
        })
    }
}

/// Makes `host` hold what `staging` holds.
pub fn sync(
    staging: BorrowedFd<'_>,
    host: BorrowedFd<'_>,
    received: &Received,
) -> io::Result<Synced> {
    let mut sync = Sync {
        received,
        device: rustix::fs::fstat(host)?.st_dev,
        report: Synced::default(),
    };
    sync.dir(staging, host, &[])?;
    Ok(sync.report)
}

struct Sync<'a> {
    received: &'a Received,
    /// The host directory's filesystem; others mounted in it are left alone.
    device: u64,
    report: Synced,
}

fn child_path(parent: &[u8], name: &OsStr) -> Vec<u8> {
    let mut path = parent.to_vec();
    if !path.is_empty() {
        path.push(b'/');
    }
    path.extend_from_slice(name.as_bytes());
    path
}

impl Sync<'_> {
    fn dir(&mut self, from: BorrowedFd<'_>, to: BorrowedFd<'_>, path: &[u8]) -> io::Result<()> {
        let wanted: HashSet<OsString> = beneath::names(from)?.into_iter().collect();
        for name in &wanted {
            let child = child_path(path, name);
            if let Err(e) = self.entry(from, to, name, &child) {
                self.report.fail(&child, e);
            }
        }
        let present = match beneath::names(to) {
            Ok(names) => names,
            Err(e) => {
                self.report.fail(path, e);
                return Ok(());
            }
        };
        for name in present {
            let child = child_path(path, &name);
            if wanted.contains(&name) || self.received.keep.contains(&child) {
                continue;
            }
            if let Err(e) = beneath::remove_on(to, &name, Some(self.device)) {
                self.report.fail(&child, e);
            }
        }
        Ok(())
    }

    fn entry(
        &mut self,
        from: BorrowedFd<'_>,
        to: BorrowedFd<'_>,
        name: &OsStr,
        path: &[u8],
    ) -> io::Result<()> {
        let source =
            beneath::stat(from, name)?.ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        let target = beneath::stat(to, name)?;
        if target.is_some_and(|t| t.st_dev != self.device) {
            return Err(beneath::mounted_elsewhere());
        }
        let same_kind = target.is_some_and(|t| beneath::kind(&t) == beneath::kind(&source));
        if target.is_some() && !same_kind {
            beneath::remove_on(to, name, Some(self.device))?;
        }
        let existing = target.filter(|_| same_kind);
        let mode = self
            .received
            .modes
            .get(path)
            .copied()
            .unwrap_or(source.st_mode & 0o7777);
        match beneath::kind(&source) {
            FileType::Directory => {
                if existing.is_none() {
                    rustix::fs::mkdirat(to, name, Mode::from_raw_mode(0o700))?;
                }
                let from_sub = beneath::open_dir(from, name)?;
                let to_sub = beneath::open_dir(to, name)?;
                let mut current = existing.map_or(0o700, |t| t.st_mode & 0o7777);
                if current & 0o700 != 0o700 {
                    // Writable by us while it fills, whatever mode it had or will have.
                    current |= 0o700;
                    rustix::fs::fchmod(&to_sub, Mode::from_raw_mode(current))?;
                }
                self.dir(from_sub.as_fd(), to_sub.as_fd(), path)?;
                set_mode(to_sub.as_fd(), current, mode)?;
            }
            FileType::RegularFile => self.file(from, to, name, &source, existing, mode)?,
            FileType::Symlink => {
                let link = rustix::fs::readlinkat(from, name, Vec::new())?;
                let current = existing
                    .map(|_| rustix::fs::readlinkat(to, name, Vec::new()))
                    .transpose()?;
                if current.as_ref() != Some(&link) {
                    if existing.is_some() {
                        beneath::remove_on(to, name, Some(self.device))?;
                    }
                    rustix::fs::symlinkat(link.as_c_str(), to, name)?;
                }
            }
            // Staging holds nothing else: the stream's other kinds were refused.
            _ => {}
        }
        Ok(())
    }

    /// A regular file: left as it is if it already holds the contents, rewritten in place if it
    /// is ours to write and has no other link, otherwise replaced.
    fn file(
        &mut self,
        from: BorrowedFd<'_>,
        to: BorrowedFd<'_>,
        name: &OsStr,
        source: &Stat,
        existing: Option<Stat>,
        mode: u32,
    ) -> io::Result<()> {
        let mut source_file = beneath::open_file(from, name)?;
        let alone = existing.filter(|t| t.st_nlink == 1);
        let unchanged = match &alone {
            Some(t) => same_contents(&mut source_file, t, to, name)?,
            None => false,
        };
        let (out, current) = if unchanged {
            let t = alone.expect("unchanged means it exists");
            (beneath::open_file(to, name)?, t.st_mode & 0o7777)
        } else {
            let rewritten = match alone {
                Some(t) => match beneath::rewrite_file(to, name) {
                    Ok(file) => Some((file, t.st_mode & 0o7777)),
                    Err(e) if e.raw_os_error() == Some(libc::EACCES) => None,
                    Err(e) => return Err(e),
                },
                None => None,
            };
            let (mut out, current) = match rewritten {
                Some(rewritten) => rewritten,
                None => {
                    if existing.is_some() {
                        beneath::remove_on(to, name, Some(self.device))?;
                    }
                    (beneath::create_file(to, name)?, 0o600)
                }
            };
            io::copy(&mut source_file, &mut out)?;
            (out, current)
        };
        // The host's own setuid/setgid bits stay on a file whose contents did not change.
        let wanted = if unchanged && current & 0o6000 != 0 && current & !0o6000 == mode {
            current
        } else {
            mode
        };
        set_mode(out.as_fd(), current, wanted)?;
        let mtime_right = unchanged && alone.is_some_and(|t| t.st_mtime == source.st_mtime);
        if !mtime_right {
            rustix::fs::futimens(&out, &timestamps(source.st_mtime))?;
        }
        Ok(())
    }
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
