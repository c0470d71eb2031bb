//! A detached container's log: its stdout and stderr in the order they arrived, each chunk framed
//! as `[stream: u8][length: u32 LE][bytes]` (stream 1 is stdout, 2 is stderr), so `cocoon logs`
//! can give each back to the stream it came from. Frames are the host's: a chunk is at most
//! [`CHUNK`] bytes, a frame that could not be written whole (a full disk) is cut off again, and
//! `replay` takes nothing else, so the guest's bytes never pass for a frame header. The log is
//! bounded ([`MAX_BYTES`], two generations: `container.log` and `container.log.1`, a frame never
//! split between them), as Docker bounds a json-file log with `max-size`/`max-file`.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use cocoon_common::rotating_file::{previous_generation, RotatingFile};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    Stdout = 1,
    Stderr = 2,
}

/// The most bytes one frame holds.
const CHUNK: usize = 64 << 10;

/// What a container's log keeps: itself and its earlier generation, each at most this (Docker's
/// json-file `max-size=16m`, `max-file=2`): a container that writes for ever costs the host at
/// most twice this.
pub const MAX_BYTES: u64 = 16 << 20;

/// Opens (creates) a container's log, bounded by [`MAX_BYTES`].
pub fn create(path: &Path) -> io::Result<Arc<Mutex<RotatingFile>>> {
    Ok(Arc::new(Mutex::new(RotatingFile::open(path, MAX_BYTES)?)))
}

/// Appends one stream's chunks to the shared log until the stream ends (or the log cannot take
/// a frame: it is cut back to the frame's start, and the stream is no longer recorded). A frame
/// never spans two generations of the log.
pub fn record(
    mut from: UnixStream,
    stream: Stream,
    log: Arc<Mutex<RotatingFile>>,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buf = vec![0u8; CHUNK];
        while let Ok(n) = from.read(&mut buf) {
            if n == 0 {
                break;
            }
            let mut frame = Vec::with_capacity(n + 5);
            frame.push(stream as u8);
            frame.extend_from_slice(&(n as u32).to_le_bytes());
            frame.extend_from_slice(&buf[..n]);
            if cocoon_common::lock(&log).write_record(&frame).is_err() {
                break;
            }
        }
    })
}

/// Frames read so far and not yet whole.
struct Frames<'a, O, E> {
    path: &'a Path,
    pending: Vec<u8>,
    out: &'a mut O,
    err: &'a mut E,
}

impl<O: Write, E: Write> Frames<'_, O, E> {
    /// Takes `bytes` of the log, writing each whole chunk to its stream.
    fn feed(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.pending.extend_from_slice(bytes);
        let pending = &self.pending;
        let mut used = 0;
        while pending.len() - used >= 5 {
            let len = u32::from_le_bytes(pending[used + 1..used + 5].try_into().unwrap()) as usize;
            if len > CHUNK || !matches!(pending[used], 1 | 2) {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "{} is not a cocoon log (a bad frame header)",
                        self.path.display()
                    ),
                ));
            }
            if pending.len() - used < 5 + len {
                break;
            }
            let chunk = &pending[used + 5..used + 5 + len];
            match pending[used] {
                2 => {
                    self.err.write_all(chunk)?;
                    self.err.flush()?;
                }
                _ => {
                    self.out.write_all(chunk)?;
                    self.out.flush()?;
                }
            }
            used += 5 + len;
        }
        self.pending.drain(..used);
        Ok(())
    }

    /// Reads `file` to its end.
    fn feed_all(&mut self, file: &mut File, buf: &mut [u8]) -> io::Result<()> {
        loop {
            let n = file.read(buf)?;
            if n == 0 {
                return Ok(());
            }
            self.feed(&buf[..n])?;
        }
    }
}

fn open_if_there(path: &Path) -> io::Result<Option<File>> {
    match File::open(path) {
        Ok(f) => Ok(Some(f)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Whether the log at `path` is a newer generation than `file` (the writer moved `file` aside).
fn moved_aside(file: &File, path: &Path) -> bool {
    match (file.metadata(), std::fs::metadata(path)) {
        (Ok(ours), Ok(now)) => ours.ino() != now.ino() || ours.dev() != now.dev(),
        _ => false,
    }
}

/// Reads a log (its earlier generation first), writing each chunk to `out` or `err`. With
/// `follow`, keeps reading as the log grows, into each new generation the writer starts, until
/// `still_running` says the container has ended (and everything is read).
pub fn replay(
    path: &Path,
    out: &mut impl Write,
    err: &mut impl Write,
    follow: bool,
    still_running: impl Fn() -> bool,
) -> io::Result<()> {
    let mut frames = Frames {
        path,
        pending: Vec::new(),
        out,
        err,
    };
    let mut buf = vec![0u8; 64 << 10];
    if let Some(mut earlier) = open_if_there(&previous_generation(path))? {
        frames.feed_all(&mut earlier, &mut buf)?;
        frames.pending.clear();
    }
    let Some(mut file) = open_if_there(path)? else {
        return Ok(());
    };
    loop {
        frames.feed_all(&mut file, &mut buf)?;
        if moved_aside(&file, path) {
            // Ours is whole now (the writer only appends to the newest): on to the next.
            frames.feed_all(&mut file, &mut buf)?;
            frames.pending.clear();
            if let Some(next) = open_if_there(path)? {
                file = next;
                continue;
            }
        }
        if follow && still_running() {
            std::thread::sleep(Duration::from_millis(100));
            continue;
        }
        // One more read: the writer may have finished between our read and the check.
        let n = file.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        frames.feed(&buf[..n])?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_come_back_to_their_streams_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let log = create(&path).unwrap();
        let (mut a, b) = UnixStream::pair().unwrap();
        let (mut c, d) = UnixStream::pair().unwrap();
        let out_thread = record(b, Stream::Stdout, log.clone());
        a.write_all(b"one\n").unwrap();
        drop(a);
        out_thread.join().unwrap();
        let err_thread = record(d, Stream::Stderr, log);
        c.write_all(b"two\n").unwrap();
        drop(c);
        err_thread.join().unwrap();
        let (mut out, mut err) = (Vec::new(), Vec::new());
        replay(&path, &mut out, &mut err, false, || false).unwrap();
        assert_eq!(out, b"one\n");
        assert_eq!(err, b"two\n");
    }

    #[test]
    fn a_frame_the_host_never_writes_is_an_error_not_an_allocation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        for bad in [[1u8, 0xff, 0xff, 0xff, 0xff], [7, 1, 0, 0, 0]] {
            std::fs::write(&path, bad).unwrap();
            let (mut out, mut err) = (Vec::new(), Vec::new());
            let e = replay(&path, &mut out, &mut err, false, || false).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
        }
    }

    /// A recorder that writes `chunk` as one frame into `log`.
    fn recorded(log: &Arc<Mutex<RotatingFile>>, stream: Stream, chunk: &[u8]) {
        let (mut a, b) = UnixStream::pair().unwrap();
        let recorder = record(b, stream, log.clone());
        a.write_all(chunk).unwrap();
        drop(a);
        recorder.join().unwrap();
    }

    #[test]
    fn a_log_keeps_two_generations_and_replays_both_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        // Frames of 5 + 9 bytes, three to a generation.
        let log = Arc::new(Mutex::new(RotatingFile::open(&path, 45).unwrap()));
        let lines: Vec<String> = (0..10).map(|i| format!("line {i:03}\n")).collect();
        for line in &lines {
            recorded(&log, Stream::Stdout, line.as_bytes());
        }
        let kept = std::fs::metadata(&path).unwrap().len()
            + std::fs::metadata(previous_generation(&path)).unwrap().len();
        assert!(kept <= 90, "{kept}");
        let (mut out, mut err) = (Vec::new(), Vec::new());
        replay(&path, &mut out, &mut err, false, || false).unwrap();
        // The last generation has line 9, the one before lines 6 to 8.
        assert_eq!(String::from_utf8(out).unwrap(), lines[6..].concat());
        assert!(err.is_empty());
    }

    #[test]
    fn following_a_log_goes_on_into_its_next_generation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let log = Arc::new(Mutex::new(RotatingFile::open(&path, 45).unwrap()));
        recorded(&log, Stream::Stderr, b"first....\n");
        let running = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let follower = {
            let (path, running) = (path.clone(), running.clone());
            std::thread::spawn(move || {
                let (mut out, mut err) = (Vec::new(), Vec::new());
                replay(&path, &mut out, &mut err, true, || {
                    running.load(std::sync::atomic::Ordering::SeqCst)
                })
                .unwrap();
                String::from_utf8(err).unwrap()
            })
        };
        // Two more generations while it follows, slowly enough that it sees each.
        for i in 0..4 {
            let line = format!("later {i}..\n");
            recorded(&log, Stream::Stderr, line.as_bytes());
            recorded(&log, Stream::Stderr, line.as_bytes());
            std::thread::sleep(Duration::from_millis(250));
        }
        running.store(false, std::sync::atomic::Ordering::SeqCst);
        let followed = follower.join().unwrap();
        let expected: String = std::iter::once("first....\n".to_string())
            .chain((0..4).flat_map(|i| [format!("later {i}..\n"), format!("later {i}..\n")]))
            .collect();
        assert_eq!(followed, expected);
    }

    #[test]
    fn a_missing_log_is_empty() {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        replay(
            Path::new("/nonexistent/log"),
            &mut out,
            &mut err,
            true,
            || true,
        )
        .unwrap();
        assert!(out.is_empty() && err.is_empty());
    }
}
