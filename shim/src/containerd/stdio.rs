//! containerd's side of a process's stdio: the FIFOs (or `file://` paths) it names in Create and
//! Exec, copied to and from the agent's vsock streams. stdout and stderr are copied to the end
//! before the process's exit is published, so nothing written is lost.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::thread::JoinHandle;

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

/// Copies containerd's input to the process; at its end (or on CloseIO) the process sees EOF.
///
/// A FIFO is opened here, in the copier, blocking until containerd's writer has opened it: a
/// FIFO read while no writer has it open reads end-of-file, so a reader opened and read earlier
/// could end the process's input before containerd wrote any.
pub fn copy_in(from: Target, to: UnixStream) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let opened = match &from {
            Target::None => return,
            Target::Fifo(path) => OpenOptions::new().read(true).open(path),
            Target::File(path) => File::open(path),
        };
        match opened {
            Ok(mut file) => {
                let mut to_writer = &to;
                let _ = std::io::copy(&mut file, &mut to_writer);
            }
            Err(e) => log::warn!("opening the input {from:?}: {e}"),
        }
        let _ = to.shutdown(std::net::Shutdown::Write);
    })
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
        let copier = copy_in(input, stream);
        std::thread::sleep(std::time::Duration::from_millis(200));
        let mut writer = OpenOptions::new().write(true).open(&fifo_in).unwrap();
        writer.write_all(b"typed").unwrap();
        drop(writer);
        let mut got = String::new();
        process.read_to_string(&mut got).unwrap();
        copier.join().unwrap();
        assert_eq!(got, "typed");
    }
}
