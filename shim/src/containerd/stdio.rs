//! containerd's side of a process's stdio: the FIFOs (or `file://` paths) it names in Create and
//! Exec, copied to and from the agent's vsock streams. stdout and stderr are copied to the end
//! before the process's exit is published, so nothing written is lost.

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use anyhow::{bail, Context, Result};

/// Where containerd wants one stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    None,
    Fifo(String),
    File(String),
}

impl Target {
    pub fn parse(uri: &str) -> Result<Self> {
        if uri.is_empty() {
            return Ok(Self::None);
        }
        if let Some(path) = uri.strip_prefix("file://") {
            return Ok(Self::File(path.to_string()));
        }
        if uri.starts_with("binary://") {
            bail!("stdio '{uri}': binary:// log drivers are not supported by cocoon yet (use the default FIFOs or file://)");
        }
        if let Some(path) = uri.strip_prefix("fifo://") {
            return Ok(Self::Fifo(path.to_string()));
        }
        if uri.contains("://") {
            bail!("stdio '{uri}': unsupported scheme (cocoon takes FIFO paths and file://)");
        }
        Ok(Self::Fifo(uri.to_string()))
    }

    pub fn is_some(&self) -> bool {
        *self != Self::None
    }
}

/// Opens where output goes. A FIFO is opened read-write so the open never blocks, even before
/// containerd's reader is there.
pub fn open_output(target: &Target) -> Result<Option<File>> {
    match target {
        Target::None => Ok(None),
        Target::Fifo(path) => OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map(Some)
            .with_context(|| format!("opening the output FIFO {path}")),
        Target::File(path) => OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map(Some)
            .with_context(|| format!("opening the output file {path}")),
    }
}

/// Checks that where input comes from is there (the copier opens it later, see [`copy_in`]).
pub fn check_input(target: &Target) -> Result<()> {
    match target {
        Target::None => Ok(()),
        Target::Fifo(path) | Target::File(path) => std::fs::metadata(path)
            .map(|_| ())
            .with_context(|| format!("the input {path}")),
    }
}

/// Copies the process's stream into containerd's until the process closes it.
pub fn copy_out(mut from: UnixStream, mut to: File) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 << 10];
        while let Ok(n) = from.read(&mut buf) {
            if n == 0 || to.write_all(&buf[..n]).is_err() {
                break;
            }
        }
    })
}

/// CloseIO's request to a stdin copier: forward what containerd has written, then end the
/// process's input.
#[derive(Clone, Debug, Default)]
pub struct InputCloser(Arc<AtomicBool>);

impl InputCloser {
    pub fn close(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    fn requested(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// How often (ms) an idle stdin copier looks for a close request.
const INPUT_POLL_MS: u16 = 50;

/// Copies containerd's input to the process; at its end, or on a close request once nothing more
/// is waiting in the FIFO, the process sees EOF.
///
/// containerd's writer (ctr) sends CloseIO as soon as its own input ends, which can be before this
/// copier has read what it wrote: ending the stream then would lose that input, so the request
/// only ends the copy when the FIFO is drained. The FIFO is opened non-blocking and only read when
/// poll says so: a read before containerd's writer has opened it would see end-of-file.
pub fn copy_in(from: Target, to: UnixStream, closer: InputCloser) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let copied = match &from {
            Target::None => return,
            Target::Fifo(path) => OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(path)
                .and_then(|fifo| copy_fifo(fifo, &to, &closer)),
            Target::File(path) => {
                File::open(path).and_then(|mut file| std::io::copy(&mut file, &mut &to).map(drop))
            }
        };
        if let Err(e) = copied {
            tracing::warn!("copying the input {from:?}: {e}");
        }
        let _ = to.shutdown(std::net::Shutdown::Write);
    })
}

fn copy_fifo(mut fifo: File, mut to: &UnixStream, closer: &InputCloser) -> std::io::Result<()> {
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let mut fds = [
            PollFd::new(fifo.as_fd(), PollFlags::POLLIN),
            // Hung up: the process's side of the stream is gone. (Not POLLIN: the process has the
            // stream itself as its stdin, and may write to it.)
            PollFd::new(to.as_fd(), PollFlags::from_bits_retain(libc::POLLRDHUP)),
        ];
        match poll(&mut fds, PollTimeout::from(INPUT_POLL_MS)) {
            Ok(0) if closer.requested() => return Ok(()), // drained
            Ok(0) | Err(Errno::EINTR) => continue,
            Ok(_) => {}
            Err(e) => return Err(e.into()),
        }
        if fds[1].any().unwrap_or(false) {
            return Ok(());
        }
        if !fds[0].any().unwrap_or(false) {
            continue;
        }
        match fifo.read(&mut buf) {
            Ok(0) => return Ok(()), // containerd's writer closed it
            Ok(n) => to.write_all(&buf[..n])?,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {}
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris() {
        assert_eq!(Target::parse("").unwrap(), Target::None);
        assert_eq!(
            Target::parse("/run/containerd/fifo/1-stdout").unwrap(),
            Target::Fifo("/run/containerd/fifo/1-stdout".into())
        );
        assert_eq!(
            Target::parse("file:///var/log/x").unwrap(),
            Target::File("/var/log/x".into())
        );
        assert!(Target::parse("binary:///usr/bin/logger").is_err());
        assert!(Target::parse("http://x").is_err());
    }

    #[test]
    fn output_reaches_a_fifo_and_input_comes_from_one() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("out");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let target = Target::Fifo(fifo.display().to_string());
        let out = open_output(&target).unwrap().unwrap();
        let mut reader = OpenOptions::new().read(true).open(&fifo).unwrap();
        let (mut process, stream) = UnixStream::pair().unwrap();
        let copier = copy_out(stream, out);
        process.write_all(b"hello\n").unwrap();
        drop(process);
        copier.join().unwrap();
        let mut got = [0u8; 6];
        reader.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"hello\n");

        let fifo_in = dir.path().join("in");
        nix::unistd::mkfifo(&fifo_in, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let input = Target::Fifo(fifo_in.display().to_string());
        check_input(&input).unwrap();
        assert!(check_input(&Target::Fifo(
            dir.path().join("absent").display().to_string()
        ))
        .is_err());
        // The copier starts before containerd's writer has opened the FIFO, and must wait for it.
        let (stream, mut process) = UnixStream::pair().unwrap();
        let copier = copy_in(input.clone(), stream, InputCloser::default());
        std::thread::sleep(std::time::Duration::from_millis(200));
        let mut writer = OpenOptions::new().write(true).open(&fifo_in).unwrap();
        writer.write_all(b"typed").unwrap();
        drop(writer);
        let mut got = String::new();
        process.read_to_string(&mut got).unwrap();
        copier.join().unwrap();
        assert_eq!(got, "typed");

        // ctr's order: write, CloseIO, and only then close the FIFO. What was written arrives,
        // and the close request ends the input while the writer still holds the FIFO.
        let (stream, mut process) = UnixStream::pair().unwrap();
        let closer = InputCloser::default();
        let mut writer = OpenOptions::new()
            .read(true) // keeps the open from blocking before the copier is there
            .write(true)
            .open(&fifo_in)
            .unwrap();
        writer.write_all(b"in flight").unwrap();
        closer.close();
        let copier = copy_in(input, stream, closer);
        let mut got = String::new();
        process.read_to_string(&mut got).unwrap();
        copier.join().unwrap();
        assert_eq!(got, "in flight");
        drop(writer);
    }
}
