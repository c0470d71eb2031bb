//! Progress of a long step on stderr: one line rewritten in place on a terminal, else a line per
//! tenth of the way.

use std::io::{IsTerminal, Read, Write};

pub struct Progress {
    label: String,
    total: u64,
    done: u64,
    shown_tenths: u64,
    terminal: bool,
}

impl Progress {
    pub fn new(label: impl Into<String>, total: u64) -> Self {
        Self {
            label: label.into(),
            total: total.max(1),
            done: 0,
            shown_tenths: u64::MAX,
            terminal: std::io::stderr().is_terminal(),
        }
    }

    pub fn advance(&mut self, bytes: u64) {
        self.done = (self.done + bytes).min(self.total);
        let tenths = self.done * 10 / self.total;
        if tenths == self.shown_tenths {
            return;
        }
        self.shown_tenths = tenths;
        let line = format!(
            "cocoon: {}: {:>3}% ({} of {} MiB)",
            self.label,
            tenths * 10,
            self.done >> 20,
            self.total >> 20
        );
        let mut err = std::io::stderr().lock();
        let _ = if self.terminal {
            let end = if self.done == self.total { "\n" } else { "" };
            write!(err, "\r{line}{end}")
        } else {
            writeln!(err, "{line}")
        };
    }
}

/// A reader that reports what passes through it.
pub struct Counting<R> {
    pub inner: R,
    pub progress: Progress,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.progress.advance(n as u64);
        Ok(n)
    }
}
