//! A detached container's log: its stdout and stderr in the order they arrived, each chunk framed
//! as `[stream: u8][length: u32 LE][bytes]` (stream 1 is stdout, 2 is stderr), so `cocoon logs`
//! can give each back to the stream it came from. Frames are the host's: a chunk is at most
//! [`CHUNK`] bytes, a frame that could not be written whole (a full disk) is cut off again, and
//! `replay` takes nothing else, so the guest's bytes never pass for a frame header.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    Stdout = 1,
    Stderr = 2,
}

/// The most bytes one frame holds.
const CHUNK: usize = 64 << 10;

/// Appends one stream's chunks to the shared log until the stream ends (or the log cannot take
/// a frame: it is cut back to the frame's start, and the stream is no longer recorded).
pub fn record(mut from: UnixStream, stream: Stream, log: Arc<Mutex<File>>) -> JoinHandle<()> {
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
            let mut file = cocoon_common::lock(&log);
            let Ok(start) = file.stream_position() else {
                break;
            };
            if file.write_all(&frame).is_err() {
                let _ = file.set_len(start);
                let _ = file.seek(SeekFrom::Start(start));
                break;
            }
        }
    })
}

/// Reads a log, writing each chunk to `out` or `err`. With `follow`, keeps reading as the log
/// grows until `still_running` says the container has ended (and everything is read).
pub fn replay(
    path: &Path,
    out: &mut impl Write,
    err: &mut impl Write,
    follow: bool,
    still_running: impl Fn() -> bool,
) -> io::Result<()> {
    let mut file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    let mut pending = Vec::new();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            if follow && still_running() {
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
            // One more read: the writer may have finished between our read and the check.
            let n = file.read(&mut buf)?;
            if n == 0 {
                return Ok(());
            }
            pending.extend_from_slice(&buf[..n]);
        } else {
            pending.extend_from_slice(&buf[..n]);
        }
        let mut used = 0;
        while pending.len() - used >= 5 {
            let len = u32::from_le_bytes(pending[used + 1..used + 5].try_into().unwrap()) as usize;
            if len > CHUNK || !matches!(pending[used], 1 | 2) {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "{} is not a cocoon log (a bad frame header)",
                        path.display()
                    ),
                ));
            }
            if pending.len() - used < 5 + len {
                break;
            }
            let chunk = &pending[used + 5..used + 5 + len];
            match pending[used] {
                2 => {
                    err.write_all(chunk)?;
                    err.flush()?;
                }
                _ => {
                    out.write_all(chunk)?;
                    out.flush()?;
                }
            }
            used += 5 + len;
        }
        pending.drain(..used);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_come_back_to_their_streams_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let log = Arc::new(Mutex::new(File::create(&path).unwrap()));
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
