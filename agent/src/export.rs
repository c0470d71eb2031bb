//! `ExportVolume`: a writable volume goes back to the host as a tar stream over a vsock
//! connection of its own (the format is `cocoon_protocol::volume_export`'s). The walk stays on
//! the volume's filesystem, never follows a link, and sends every file whole or not at all.

use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;
use std::sync::OnceLock;

use cocoon_protocol::volume_export::{ExportLimits, OVER_LIMIT_KEY};
use cocoon_protocol::{AgentError, ErrorKind, Reply};
use tar::{Header, HeaderMode};

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

    /// The raw archive, for entries no honest walk makes (the hostile-guest test's [`Prelude`];
    /// each entry written must be [`counted`](Self::counted)).
    pub fn archive(&mut self) -> &mut tar::Builder<W> {
        &mut self.tar
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

    /// Sends what `dir` (at `relative` in the volume) holds, in name order, depth first.
    pub fn walk(&mut self, dir: &Path, relative: &Path) -> io::Result<()> {
        let mut names: Vec<_> = fs::read_dir(dir)?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<io::Result<_>>()?;
        names.sort();
        for name in names {
            let path = dir.join(&name);
            let inside = relative.join(&name);
            let meta = fs::symlink_metadata(&path)?;
            let kind = meta.file_type();
            if kind.is_socket() || (kind.is_dir() && meta.dev() != self.device) {
                // Sockets have no tar type; another filesystem is not the volume's.
                continue;
            }
            self.count_entry()?;
            let mut header = Header::new_gnu();
            header.set_metadata_in_mode(&meta, HeaderMode::Complete);
            if kind.is_symlink() {
                let target = fs::read_link(&path)?;
                self.tar.append_link(&mut header, &inside, target)?;
            } else if kind.is_file() {
                self.file(&mut header, &path, &inside, meta.len())?;
            } else {
                // Directories; device nodes and fifos, which carry no data (the host refuses them).
                header.set_size(0);
                self.tar.append_data(&mut header, &inside, io::empty())?;
                if kind.is_dir() {
                    self.walk(&path, &inside)?;
                }
            }
        }
        Ok(())
    }

    /// A regular file: whole, or (past the byte limit) marked and empty.
    fn file(
        &mut self,
        header: &mut Header,
        path: &Path,
        inside: &Path,
        size: u64,
    ) -> io::Result<()> {
        if self.bytes.saturating_add(size) > self.limits.max_bytes {
            self.tar
                .append_pax_extensions([(OVER_LIMIT_KEY, size.to_string().as_bytes())])?;
            header.set_size(0);
            return self.tar.append_data(header, inside, io::empty());
        }
        let file = File::open(path)?;
        self.tar.append_data(
            header,
            inside,
            Exact {
                inner: file.take(size),
                left: size,
            },
        )?;
        self.bytes += size;
        Ok(())
    }

    /// Writes the end of the archive and flushes it; the entries sent.
    pub fn finish(mut self) -> io::Result<u64> {
        self.tar.finish()?;
        self.tar.get_mut().flush()?;
        Ok(self.entries)
    }

    /// Counts an entry written through [`Self::archive`].
    pub fn counted(&mut self) -> io::Result<()> {
        self.count_entry()
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
            [("d", '5'), ("d/f", '0'), ("h", '0'), ("l", '2'), ("p", '6')],
            "no socket, the hard link as a copy"
        );
        assert_eq!(list[1].2, 3);
        assert_eq!(list[1].3, 0o640);
        assert_eq!((entries, bytes), (5, 6));
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
}
