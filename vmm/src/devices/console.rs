//! Where the guest's serial output goes (stdout, a file bounded in size, a Unix socket, nowhere),
//! and a watcher that notices the guest kernel's panic banner so a panic-then-reboot is not
//! mistaken for a clean stop.

use std::io::{self, Write};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use cocoon_common::RotatingFile;

use crate::config::ConsoleConfig;

const PANIC_BANNER: &[u8] = b"Kernel panic - not syncing";

/// The console's byte sink. Writes never fail towards the UART: a broken sink is reported once and
/// then ignored, so a closed terminal cannot stop the guest.
pub struct ConsoleSink {
    out: Option<Box<dyn Write + Send>>,
    recent: Vec<u8>,
    panicked: Arc<AtomicBool>,
    broken: bool,
}

impl ConsoleSink {
    fn with(out: Option<Box<dyn Write + Send>>) -> Self {
        Self {
            out,
            recent: Vec::with_capacity(PANIC_BANNER.len()),
            panicked: Arc::new(AtomicBool::new(false)),
            broken: false,
        }
    }

    /// Opens the sink a configuration names; a file keeps at most `max_bytes` twice (itself and
    /// `PATH.1`, see [`RotatingFile`]).
    pub fn open(config: &ConsoleConfig, max_bytes: u64) -> io::Result<Self> {
        let out: Option<Box<dyn Write + Send>> = match config {
            ConsoleConfig::Stdout => Some(Box::new(io::stdout())),
            ConsoleConfig::Off => None,
            ConsoleConfig::File(path) => Some(Box::new(
                RotatingFile::open(path, max_bytes)
                    .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?,
            )),
            ConsoleConfig::Unix(path) => {
                Some(Box::new(UnixStream::connect(path).map_err(|e| {
                    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
                })?))
            }
        };
        Ok(Self::with(out))
    }

    /// A sink that collects into a shared buffer (tests, embedding).
    pub fn to_buffer(buffer: Arc<Mutex<Vec<u8>>>) -> Self {
        struct Shared(Arc<Mutex<Vec<u8>>>);
        impl Write for Shared {
            fn write(&mut self, b: &[u8]) -> io::Result<usize> {
                cocoon_common::lock(&self.0).extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        Self::with(Some(Box::new(Shared(buffer))))
    }

    /// Set once the guest kernel has printed its panic banner.
    pub fn panic_flag(&self) -> Arc<AtomicBool> {
        self.panicked.clone()
    }

    fn watch(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if self.recent.len() == PANIC_BANNER.len() {
                self.recent.remove(0);
            }
            self.recent.push(b);
            if self.recent == PANIC_BANNER {
                self.panicked.store(true, Ordering::SeqCst);
            }
        }
    }
}

impl Write for ConsoleSink {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.watch(bytes);
        if let (Some(out), false) = (self.out.as_mut(), self.broken) {
            if let Err(e) = out.write_all(bytes).and_then(|()| out.flush()) {
                self.broken = true;
                tracing::warn!("console output stopped: {e}");
            }
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DEFAULT_CONSOLE_MAX_BYTES;

    #[test]
    fn notices_the_panic_banner_across_writes() {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let mut sink = ConsoleSink::to_buffer(buf.clone());
        let flag = sink.panic_flag();
        sink.write_all(b"[ 1.0] Kernel pan").unwrap();
        assert!(!flag.load(Ordering::SeqCst));
        for b in b"ic - not syncing: VFS" {
            sink.write_all(&[*b]).unwrap();
        }
        assert!(flag.load(Ordering::SeqCst));
        assert!(buf.lock().unwrap().ends_with(b"syncing: VFS"));
    }

    #[test]
    fn a_broken_sink_does_not_fail_the_uart() {
        struct Broken;
        impl Write for Broken {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::Error::from(io::ErrorKind::BrokenPipe))
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let mut sink = ConsoleSink::with(Some(Box::new(Broken)));
        assert_eq!(sink.write(b"x").unwrap(), 1);
        assert_eq!(sink.write(b"y").unwrap(), 1);
    }

    #[test]
    fn streams_to_a_unix_socket_and_a_file() {
        use std::io::Read;
        let dir = std::env::temp_dir().join(format!("cocoon-console-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let sock = dir.join("console.sock");
        let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let mut sink = ConsoleSink::open(
            &ConsoleConfig::Unix(sock.clone()),
            DEFAULT_CONSOLE_MAX_BYTES,
        )
        .unwrap();
        sink.write_all(b"to the socket\n").unwrap();
        drop(sink);
        let mut got = String::new();
        listener
            .accept()
            .unwrap()
            .0
            .read_to_string(&mut got)
            .unwrap();
        assert_eq!(got, "to the socket\n");

        let file = dir.join("console.log");
        std::fs::write(&file, b"earlier\n").unwrap();
        let mut sink = ConsoleSink::open(
            &ConsoleConfig::File(file.clone()),
            DEFAULT_CONSOLE_MAX_BYTES,
        )
        .unwrap();
        sink.write_all(b"appended\n").unwrap();
        drop(sink);
        assert_eq!(
            std::fs::read_to_string(&file).unwrap(),
            "earlier\nappended\n"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_file_console_keeps_at_most_twice_its_bound() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("console.log");
        let mut sink = ConsoleSink::open(&ConsoleConfig::File(file.clone()), 4096).unwrap();
        let flag = sink.panic_flag();
        // A guest that writes for ever, a byte at a time as the UART does; its panic comes last.
        for i in 0..100_000u32 {
            sink.write_all(&[b'0' + (i % 10) as u8]).unwrap();
        }
        sink.write_all(b"\nKernel panic - not syncing: the end\n")
            .unwrap();
        let now = std::fs::read_to_string(&file).unwrap();
        let before = std::fs::metadata(cocoon_common::rotating_file::previous_generation(&file))
            .unwrap()
            .len();
        assert!(
            now.len() <= 4096 && before <= 4096,
            "{} {before}",
            now.len()
        );
        assert!(
            now.ends_with("not syncing: the end\n"),
            "the newest bytes are kept"
        );
        assert!(flag.load(Ordering::SeqCst));
    }

    #[test]
    fn unreachable_socket_names_the_path() {
        let err = ConsoleSink::open(
            &ConsoleConfig::Unix("/nonexistent/console.sock".into()),
            DEFAULT_CONSOLE_MAX_BYTES,
        )
        .err()
        .unwrap();
        assert!(err.to_string().contains("/nonexistent/console.sock"));
    }
}
