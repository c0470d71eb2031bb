//! `ExportVolume`: a writable volume goes back to the host as a tar stream over a vsock
//! connection of its own (the format is `cocoon_protocol::volume_export`'s). The walk stays on
//! the volume's filesystem, never follows a link, and sends every file whole or not at all.

use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;
use std::sync::OnceLock;

use cocoon_protocol::volume_export::{ExportLimits, LeftOut, LEFT_OUT_KEY};
use cocoon_protocol::{AgentError, ErrorKind, Reply};
use tar::{EntryType, Header, HeaderMode};

use crate::vsock;

/// What a volume's stream goes out on.
pub type Stream = BufWriter<File>;

/// Entries sent before the walk's, by a program built on the agent that sets one (the
/// hostile-guest test's, `tests/hostile-agent`); the agent itself sets none.
pub type Prelude = fn(&mut Exporter<Stream>) -> io::Result<()>;

static PRELUDE: OnceLock<Prelude> = OnceLock::new();

/// Sets the [`Prelude`] (once, before the agent runs).
pub fn set_prelude(prelude: Prelude) {
    let _ = PRELUDE.set(prelude);
}

/// Streams the tree under `root` to host `port`, after `token`.
pub(crate) fn export(
    root: &Path,
    port: u32,
    token: &str,
    limits: ExportLimits,
) -> Result<Reply, AgentError> {
    let failed = |what: &str, e: io::Error| {
        AgentError::new(
            ErrorKind::Internal,
            format!("exporting {}: {what}: {e}", root.display()),
        )
    };
    let device = fs::metadata(root)
        .map_err(|e| failed("reading the volume", e))?
        .dev();
    let stream =
        vsock::connect_to_host(port, token).map_err(|e| failed("connecting to the host", e))?;
    let mut exporter = Exporter::new(BufWriter::with_capacity(64 << 10, stream), limits, device);
    if let Some(prelude) = PRELUDE.get() {
        prelude(&mut exporter).map_err(|e| failed("sending the prelude", e))?;
    }
    exporter
        .walk(root, Path::new(""))
        .map_err(|e| failed("sending the tree", e))?;
    let entries = exporter
        .finish()
        .map_err(|e| failed("ending the stream", e))?;
    Ok(Reply::Exported { entries })
}

/// A tar stream being written, with what it has sent so far.
pub struct Exporter<W: Write> {
    tar: tar::Builder<W>,
    limits: ExportLimits,
    /// The volume's filesystem: the walk does not descend into others mounted under it.
    device: u64,
    entries: u64,
    /// File bytes sent, against [`ExportLimits::max_bytes`].
    bytes: u64,
}

impl<W: Write> Exporter<W> {
    pub fn new(out: W, limits: ExportLimits, device: u64) -> Self {
        Self {
            tar: tar::Builder::new(out),
            limits,
            device,
            entries: 0,
            bytes: 0,
        }
    }

    fn count_entry(&mut self) -> io::Result<()> {
        if self.entries >= self.limits.max_entries {
            return Err(io::Error::other(format!(
                "the volume holds more than the {} entries the host allows",
                self.limits.max_entries
            )));
        }
        self.entries += 1;
        Ok(())
    }

    /// Writes one entry: `header` (type, mode, mtime, size) with `path` and, for a link, `link`
    /// as raw bytes. What a header field cannot hold (100 bytes or more, a NUL) goes in a GNU
    /// long-name or long-link entry before it, written here: the tar crate's own would refuse
    /// some names (non-UTF-8 ones of 100 bytes and more) and normalise short link targets. The
    /// honest walk and the hostile-guest test's [`Prelude`] both write through this; the host
    /// checks what either sends.
    pub fn append(
        &mut self,
        header: &mut Header,
        path: &[u8],
        link: &[u8],
        data: impl Read,
    ) -> io::Result<()> {
        self.count_entry()?;
        let mut name = [0u8; 100];
        let mut linkname = [0u8; 100];
        for (bytes, field, kind) in [
            (path, &mut name, EntryType::GNULongName),
            (link, &mut linkname, EntryType::GNULongLink),
        ] {
            if bytes.len() < 100 && !bytes.contains(&0) {
                field[..bytes.len()].copy_from_slice(bytes);
                continue;
            }
            let mut long = Header::new_gnu();
            long.as_old_mut().name[..13].copy_from_slice(b"././@LongLink");
            long.set_entry_type(kind);
            long.set_mode(0o644);
            long.set_size(bytes.len() as u64 + 1);
            long.set_cksum();
            self.tar.append(&long, bytes.chain(&[0u8][..]))?;
        }
        header.as_old_mut().name = name;
        header.as_old_mut().linkname = linkname;
        header.set_cksum();
        self.tar.append(header, data)
    }

    /// Marks `path` as left out (`why`), so the host keeps its own copy.
    pub fn left_out(&mut self, path: &[u8], why: LeftOut) -> io::Result<()> {
        self.tar
            .append_pax_extensions([(LEFT_OUT_KEY, why.as_str().as_bytes())])?;
        let mut header = Header::new_gnu();
        header.set_entry_type(EntryType::Regular);
        header.set_mode(0o644);
        header.set_size(0);
        self.append(&mut header, path, b"", io::empty())
    }

    /// Sends what `dir` (at `relative` in the volume) holds, in name order, depth first.
    pub fn walk(&mut self, dir: &Path, relative: &Path) -> io::Result<()> {
        let mut names: Vec<_> = fs::read_dir(dir)?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<io::Result<_>>()?;
        names.sort();
        for name in names {
            let path = dir.join(&name);
            let inside = relative.join(&name);
            let inside_bytes = inside.as_os_str().as_bytes();
            let meta = fs::symlink_metadata(&path)?;
            let kind = meta.file_type();
            if kind.is_socket() {
                self.left_out(inside_bytes, LeftOut::Socket)?;
                continue;
            }
            if kind.is_dir() && meta.dev() != self.device {
                self.left_out(inside_bytes, LeftOut::OtherFilesystem)?;
                continue;
            }
            let mut header = Header::new_gnu();
            header.set_metadata_in_mode(&meta, HeaderMode::Complete);
            if kind.is_symlink() {
                let target = fs::read_link(&path)?;
                let target = target.as_os_str().as_bytes();
                self.append(&mut header, inside_bytes, target, io::empty())?;
            } else if kind.is_file() {
                self.file(&mut header, &path, inside_bytes, meta.len())?;
            } else {
                // Directories; device nodes and fifos, which carry no data (the host refuses them).
                header.set_size(0);
                self.append(&mut header, inside_bytes, b"", io::empty())?;
                if kind.is_dir() {
                    self.walk(&path, &inside)?;
                }
            }
        }
        Ok(())
    }

    /// A regular file: whole, or (past the byte limit) left out.
    fn file(
        &mut self,
        header: &mut Header,
        path: &Path,
        inside: &[u8],
        size: u64,
    ) -> io::Result<()> {
        if self.bytes.saturating_add(size) > self.limits.max_bytes {
            return self.left_out(inside, LeftOut::OverLimit);
        }
        let file = File::open(path)?;
        let data = Exact {
            inner: file.take(size),
            left: size,
        };
        self.append(header, inside, b"", data)?;
        self.bytes += size;
        Ok(())
    }

    /// Writes the end of the archive and flushes it; the entries sent.
    pub fn finish(mut self) -> io::Result<u64> {
        self.tar.finish()?;
        self.tar.get_mut().flush()?;
        Ok(self.entries)
    }
}

/// Exactly `left` bytes of `inner`: a file that shrank while being sent is an error, not a
/// short entry that would shift every header after it.
struct Exact<R> {
    inner: R,
    left: u64,
}

impl<R: Read> Read for Exact<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            return Ok(0);
        }
        let want = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "a file shrank while it was being exported",
            ));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn limits(max_bytes: u64, max_entries: u64) -> ExportLimits {
        ExportLimits {
            max_bytes,
            max_entries,
        }
    }

    fn export_to_vec(root: &Path, limits: ExportLimits) -> io::Result<(Vec<u8>, u64, u64)> {
        let device = fs::metadata(root)?.dev();
        let mut out = Vec::new();
        let mut exporter = Exporter::new(&mut out, limits, device);
        exporter.walk(root, Path::new(""))?;
        let bytes = exporter.bytes;
        let entries = exporter.finish()?;
        Ok((out, entries, bytes))
    }

    /// (path, type, size, mode, pax keys) of every raw entry.
    fn listing(archive: &[u8]) -> Vec<(String, char, u64, u32)> {
        let mut a = tar::Archive::new(archive);
        a.entries()
            .unwrap()
            .raw(true)
            .map(|e| {
                let e = e.unwrap();
                let h = e.header();
                (
                    String::from_utf8_lossy(&h.path_bytes()).into_owned(),
                    h.entry_type().as_byte() as char,
                    h.entry_size().unwrap(),
                    h.mode().unwrap_or(0) & 0o7777,
                )
            })
            .collect()
    }

    #[test]
    fn a_tree_goes_out_directories_first_links_as_links() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        fs::create_dir(root.join("d")).unwrap();
        fs::write(root.join("d/f"), "abc").unwrap();
        fs::set_permissions(root.join("d/f"), fs::Permissions::from_mode(0o640)).unwrap();
        std::os::unix::fs::symlink("/etc", root.join("l")).unwrap();
        fs::hard_link(root.join("d/f"), root.join("h")).unwrap();
        nix::unistd::mkfifo(
            &root.join("p"),
            nix::sys::stat::Mode::from_bits_truncate(0o600),
        )
        .unwrap();
        let _sock = std::os::unix::net::UnixListener::bind(root.join("s")).unwrap();
        let (archive, entries, bytes) = export_to_vec(root, limits(1 << 20, 100)).unwrap();
        let list = listing(&archive);
        let names: Vec<(&str, char)> = list.iter().map(|(p, t, _, _)| (p.as_str(), *t)).collect();
        assert_eq!(
            names,
            [
                ("d", '5'),
                ("d/f", '0'),
                ("h", '0'),
                ("l", '2'),
                ("p", '6'),
                ("", 'x'),
                ("s", '0')
            ],
            "the hard link as a copy, the socket left out (a PAX mark, then an empty entry)"
        );
        assert_eq!(list[1].2, 3);
        assert_eq!(list[1].3, 0o640);
        assert_eq!((entries, bytes), (6, 6));
    }

    #[test]
    fn files_past_the_byte_limit_are_marked_not_sent() {
        let tmp = tempfile::tempdir().unwrap();
        fs::write(tmp.path().join("a-small"), "12").unwrap();
        let big = File::create(tmp.path().join("b-sparse")).unwrap();
        big.set_len(4 << 30).unwrap();
        let (archive, entries, bytes) = export_to_vec(tmp.path(), limits(1 << 20, 100)).unwrap();
        let list = listing(&archive);
        assert_eq!(list.len(), 3, "{list:?}");
        assert_eq!(list[1].1, 'x', "a PAX header before the left-out file");
        assert_eq!((list[2].0.as_str(), list[2].2), ("b-sparse", 0));
        assert_eq!((entries, bytes), (2, 2));
        assert!(archive.len() < 16 << 10);
    }

    #[test]
    fn long_names_travel_in_gnu_long_name_entries() {
        let tmp = tempfile::tempdir().unwrap();
        let long = "n".repeat(200);
        fs::write(tmp.path().join(&long), "x").unwrap();
        let (archive, _, _) = export_to_vec(tmp.path(), limits(1 << 20, 100)).unwrap();
        let list = listing(&archive);
        assert_eq!(list[0].1, 'L');
        assert_eq!(list.len(), 2);
    }

    #[test]
    fn more_entries_than_allowed_is_an_error() {
        let tmp = tempfile::tempdir().unwrap();
        for i in 0..3 {
            fs::write(tmp.path().join(i.to_string()), "").unwrap();
        }
        let err = export_to_vec(tmp.path(), limits(1 << 20, 2)).unwrap_err();
        assert!(err.to_string().contains("more than the 2 entries"), "{err}");
    }

    /// What the host makes of `root`'s stream in `host` (the real receiver and sync).
    fn round_trip(root: &Path, host: &Path, limits: ExportLimits) -> Vec<String> {
        use cocoon_sandbox::volume_import;
        use std::os::fd::AsFd;
        let (archive, entries, _) = export_to_vec(root, limits).unwrap();
        let staging = tempfile::tempdir().unwrap();
        let staging_fd = volume_import::open_dir(staging.path()).unwrap();
        let received =
            volume_import::receive(&mut archive.as_slice(), staging_fd.as_fd(), limits).unwrap();
        assert_eq!(
            received.entries, entries,
            "the host counts what the agent sent"
        );
        let host_fd = volume_import::open_dir(host).unwrap();
        let synced = volume_import::sync(staging_fd.as_fd(), host_fd.as_fd(), &received).unwrap();
        assert_eq!(synced.line(), None);
        received.refusals.lines(limits.max_bytes)
    }

    #[test]
    fn an_honest_volume_comes_back_whole_through_the_hosts_receiver() {
        use std::ffi::OsStr;
        let tmp = tempfile::tempdir().unwrap();
        let (root, host) = (tmp.path().join("guest"), tmp.path().join("host"));
        fs::create_dir_all(root.join("shared")).unwrap();
        fs::create_dir(&host).unwrap();
        fs::set_permissions(root.join("shared"), fs::Permissions::from_mode(0o2775)).unwrap();
        let long_target = format!("/{}", "t".repeat(150));
        std::os::unix::fs::symlink(&long_target, root.join("long-link")).unwrap();
        std::os::unix::fs::symlink("a//b/.", root.join("odd-link")).unwrap();
        let mut odd_name = vec![0xff_u8];
        odd_name.extend([b'n'; 120]);
        fs::write(root.join(OsStr::from_bytes(&odd_name)), "non-UTF-8, long").unwrap();
        fs::write(root.join("read-only"), "r").unwrap();
        fs::set_permissions(root.join("read-only"), fs::Permissions::from_mode(0o444)).unwrap();
        fs::write(root.join("old"), "1969").unwrap();
        let old = nix::sys::time::TimeSpec::new(-86_400, 0);
        nix::sys::stat::utimensat(
            None,
            &root.join("old"),
            &old,
            &old,
            nix::sys::stat::UtimensatFlags::NoFollowSymlink,
        )
        .unwrap();
        let sparse = File::create(root.join("sparse")).unwrap();
        sparse.set_len(4 << 30).unwrap();
        let _sock = std::os::unix::net::UnixListener::bind(root.join("sock")).unwrap();
        // What the host has of the names the guest leaves out.
        fs::write(host.join("sparse"), "host's copy").unwrap();
        fs::write(host.join("sock"), "host's socket stand-in").unwrap();

        let lines = round_trip(&root, &host, limits(1 << 20, 100));
        assert_eq!(lines.len(), 2, "the sparse file and the socket: {lines:?}");
        assert!(
            lines[0].contains("1 entry past the volume's size limit"),
            "{lines:?}"
        );
        assert!(
            lines[1].starts_with("the guest left out 1 socket"),
            "{lines:?}"
        );
        assert_eq!(
            fs::read_link(host.join("long-link")).unwrap(),
            Path::new(&long_target)
        );
        assert_eq!(
            fs::read_link(host.join("odd-link")).unwrap(),
            Path::new("a//b/."),
            "as it was"
        );
        assert_eq!(
            fs::read_to_string(host.join(OsStr::from_bytes(&odd_name))).unwrap(),
            "non-UTF-8, long"
        );
        let mode = |n: &str| fs::metadata(host.join(n)).unwrap().permissions().mode() & 0o7777;
        assert_eq!((mode("read-only"), mode("shared")), (0o444, 0o2775));
        assert_eq!(fs::metadata(host.join("old")).unwrap().mtime(), -86_400);
        assert_eq!(
            fs::read_to_string(host.join("sparse")).unwrap(),
            "host's copy"
        );
        assert_eq!(
            fs::read_to_string(host.join("sock")).unwrap(),
            "host's socket stand-in"
        );

        // A second copy-back, the read-only file changed in the guest: written again.
        fs::set_permissions(root.join("read-only"), fs::Permissions::from_mode(0o644)).unwrap();
        fs::write(root.join("read-only"), "changed").unwrap();
        fs::set_permissions(root.join("read-only"), fs::Permissions::from_mode(0o444)).unwrap();
        round_trip(&root, &host, limits(1 << 20, 100));
        assert_eq!(
            fs::read_to_string(host.join("read-only")).unwrap(),
            "changed"
        );
    }
}
