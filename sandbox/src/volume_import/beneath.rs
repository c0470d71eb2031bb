//! Filesystem operations relative to a directory descriptor that never follow a symbolic link:
//! how the copy-back touches the staging and host directories, whatever names the guest chose
//! and whatever links the tree holds. Multi-component paths resolve with `openat2`
//! (`RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV`), or where
//! the kernel lacks it (before 5.6) one `O_NOFOLLOW` directory at a time, which is as strict; the
//! last component is always acted on by an `*at` call that does not follow it. (`openat2`
//! refused by a seccomp profile, `EPERM`, takes the same fallback.)

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags, Stat};

const DIR_FLAGS: OFlags = OFlags::DIRECTORY
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC)
    .union(OFlags::RDONLY);

/// The directory `components` name under `root`, opened without following any link; an error
/// (`ELOOP` for a link on the way, `ENOTDIR`, `ENOENT`) otherwise.
pub fn open_dir_beneath(root: BorrowedFd<'_>, components: &[&OsStr]) -> io::Result<OwnedFd> {
    if components.is_empty() {
        return root.try_clone_to_owned();
    }
    let path = super::entry_path::joined(components);
    let resolve = ResolveFlags::BENEATH
        | ResolveFlags::NO_SYMLINKS
        | ResolveFlags::NO_MAGICLINKS
        | ResolveFlags::NO_XDEV;
    // RESOLVE_NO_SYMLINKS refuses a link anywhere, the last component too (ELOOP).
    let flags = DIR_FLAGS.difference(OFlags::NOFOLLOW);
    match rustix::fs::openat2(
        root,
        OsStr::from_bytes(&path),
        flags,
        Mode::empty(),
        resolve,
    ) {
        // Kernels before 5.6 lack openat2; some seccomp profiles refuse it.
        Err(rustix::io::Errno::NOSYS | rustix::io::Errno::PERM) => {
            open_dirs(root, components.iter().copied())
        }
        other => Ok(other?),
    }
}

/// The directory `components` name under `dir`, opened one `O_NOFOLLOW` directory at a time
/// (which, unlike `open_dir_beneath`, crosses mount points).
pub fn open_dirs<'a>(
    dir: BorrowedFd<'_>,
    components: impl IntoIterator<Item = &'a OsStr>,
) -> io::Result<OwnedFd> {
    let mut dir = dir.try_clone_to_owned()?;
    for c in components {
        dir = open_dir(dir.as_fd(), c)?;
    }
    Ok(dir)
}

/// The directory `name` in `dir`; `ELOOP` if it is a link.
pub fn open_dir(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<OwnedFd> {
    match rustix::fs::openat(dir, name, DIR_FLAGS, Mode::empty()) {
        // O_DIRECTORY answers a link with ENOTDIR before O_NOFOLLOW can say ELOOP.
        Err(rustix::io::Errno::NOTDIR)
            if stat(dir, name)?.is_some_and(|s| kind(&s) == FileType::Symlink) =>
        {
            Err(rustix::io::Errno::LOOP.into())
        }
        other => Ok(other?),
    }
}

/// `name` in `dir` opened with `flags`, never through a link (`ELOOP`), and never waiting on a
/// fifo that took a file's place (`O_NONBLOCK` does nothing to regular files).
fn open_file_at(dir: BorrowedFd<'_>, name: &OsStr, flags: OFlags, mode: u32) -> io::Result<File> {
    let flags = flags | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK;
    let fd = rustix::fs::openat(dir, name, flags, Mode::from_raw_mode(mode))?;
    Ok(File::from(fd))
}

/// `name` in `dir` opened for reading.
pub fn open_file(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<File> {
    open_file_at(dir, name, OFlags::RDONLY, 0)
}

/// A new file `name` in `dir`, for writing, mode 0600; `EEXIST` if anything has that name.
pub fn create_file(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<File> {
    open_file_at(
        dir,
        name,
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL,
        0o600,
    )
}

/// The existing regular file `name` in `dir`, truncated for writing.
pub fn rewrite_file(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<File> {
    open_file_at(dir, name, OFlags::WRONLY | OFlags::TRUNC, 0)
}

/// What `name` in `dir` is, the link itself for a link; `None` if nothing has that name.
pub fn stat(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<Option<Stat>> {
    match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(stat) => Ok(Some(stat)),
        Err(rustix::io::Errno::NOENT) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

pub fn kind(stat: &Stat) -> FileType {
    FileType::from_raw_mode(stat.st_mode)
}

/// The names in `dir` (without `.` and `..`).
pub fn names(dir: BorrowedFd<'_>) -> io::Result<Vec<OsString>> {
    let mut names = Vec::new();
    for entry in rustix::fs::Dir::read_from(dir)? {
        let name = entry?.file_name().to_bytes().to_vec();
        if name != b"." && name != b".." {
            names.push(OsString::from_vec(name));
        }
    }
    Ok(names)
}

/// What an operation on another filesystem mounted in the tree answers.
pub fn mounted_elsewhere() -> io::Error {
    io::Error::other("another filesystem is mounted there; left as it is")
}

/// Removes `name` from `dir`, a directory with everything in it, links as links.
pub fn remove(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
    remove_on(dir, name, None)
}

/// [`remove`], refusing to touch anything on a filesystem other than `device` (one mounted
/// inside the tree) when given.
pub fn remove_on(dir: BorrowedFd<'_>, name: &OsStr, device: Option<u64>) -> io::Result<()> {
    let Some(stat) = stat(dir, name)? else {
        return Ok(());
    };
    if device.is_some_and(|d| d != stat.st_dev) {
        return Err(mounted_elsewhere());
    }
    if kind(&stat) == FileType::Directory {
        let sub = open_dir(dir, name)?;
        if stat.st_mode & 0o300 != 0o300 {
            // Ours to empty even where the guest or the host made it read-only.
            rustix::fs::fchmod(&sub, Mode::from_raw_mode((stat.st_mode & 0o7777) | 0o700))?;
        }
        for child in names(sub.as_fd())? {
            remove_on(sub.as_fd(), &child, device)?;
        }
        rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR)?;
    } else {
        rustix::fs::unlinkat(dir, name, AtFlags::empty())?;
    }
    Ok(())
}
