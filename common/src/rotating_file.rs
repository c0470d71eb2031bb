//! A file that keeps at most two generations of a bounded size: when the next record would take
//! it past its bound, the file becomes `PATH.1` (replacing the generation before) and a new one
//! starts at `PATH`. What a guest makes the host write on its behalf (its serial console, a
//! detached container's output) is bounded this way, as Docker's json-file driver bounds a log
//! with `max-size` and `max-file=2`: a guest that writes for ever costs the host at most twice
//! the bound. Written here because the rotation crates rotate by time or sit under a logging
//! framework; this needs a size bound on records the caller frames, and is a few lines.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// An append-only file of at most `max_bytes`, with its one earlier generation at `PATH.1`.
pub struct RotatingFile {
    path: PathBuf,
    file: File,
    len: u64,
    max_bytes: u64,
}

/// Where the generation before `path`'s is kept.
pub fn previous_generation(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".1");
    PathBuf::from(name)
}

impl RotatingFile {
    /// Opens `path` for appending (created if missing; an existing file counts towards the
    /// bound). `max_bytes` of 0 is taken as 1.
    pub fn open(path: &Path, max_bytes: u64) -> io::Result<Self> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let len = file.metadata()?.len();
        Ok(Self {
            path: path.to_path_buf(),
            file,
            len,
            max_bytes: max_bytes.max(1),
        })
    }

    /// Writes `record` whole into one generation, starting a new one first if it would not fit
    /// in this one. A record longer than the bound keeps only its last `max_bytes` bytes. A
    /// record that could not be written whole (a full disk) is cut off again, so what a reader
    /// finds is whole records only.
    pub fn write_record(&mut self, record: &[u8]) -> io::Result<()> {
        let keep = record.len().min(self.max_bytes as usize);
        let record = &record[record.len() - keep..];
        if self.len > 0 && self.len + record.len() as u64 > self.max_bytes {
            self.rotate()?;
        }
        if let Err(e) = self.file.write_all(record) {
            let _ = self.file.set_len(self.len);
            return Err(e);
        }
        self.len += record.len() as u64;
        Ok(())
    }

    fn rotate(&mut self) -> io::Result<()> {
        std::fs::rename(&self.path, previous_generation(&self.path))?;
        self.file = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(&self.path)?;
        self.len = 0;
        Ok(())
    }
}

/// Each `write` is one record (see [`RotatingFile::write_record`]).
impl Write for RotatingFile {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.write_record(bytes)?;
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(path: &Path) -> String {
        std::fs::read_to_string(path).unwrap_or_default()
    }

    #[test]
    fn keeps_two_generations_each_within_the_bound() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.log");
        let mut file = RotatingFile::open(&path, 10).unwrap();
        for line in ["aaaa\n", "bbbb\n", "cccc\n", "dddd\n", "eeee\n"] {
            file.write_all(line.as_bytes()).unwrap();
        }
        // a+b filled the first generation, c+d the second; e started the third.
        assert_eq!(read(&path), "eeee\n");
        assert_eq!(read(&previous_generation(&path)), "cccc\ndddd\n");
        let files = std::fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(files, 2, "the oldest generation is gone");
    }

    #[test]
    fn a_byte_at_a_time_fills_each_generation_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.log");
        let mut file = RotatingFile::open(&path, 4096).unwrap();
        let total = 3 * 4096 + 100;
        for i in 0..total {
            file.write_all(&[b'a' + (i % 26) as u8]).unwrap();
        }
        let now = std::fs::read(&path).unwrap();
        let before = std::fs::read(previous_generation(&path)).unwrap();
        assert_eq!(now.len(), 100);
        assert_eq!(before.len(), 4096);
        // The two generations are the stream's last bytes, in order.
        let expected: Vec<u8> = (total - 4196..total)
            .map(|i| b'a' + (i % 26) as u8)
            .collect();
        assert_eq!([before, now].concat(), expected);
    }

    #[test]
    fn a_record_is_never_split_and_an_oversized_one_keeps_its_end() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let mut file = RotatingFile::open(&path, 8).unwrap();
        file.write_all(b"12345").unwrap();
        file.write_all(b"6789").unwrap();
        assert_eq!(read(&previous_generation(&path)), "12345");
        assert_eq!(read(&path), "6789");
        file.write_all(b"abcdefghijkl").unwrap();
        assert_eq!(read(&path), "efghijkl");
        assert_eq!(read(&previous_generation(&path)), "6789");
    }

    #[test]
    fn an_existing_file_counts_towards_the_bound() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        std::fs::write(&path, "earlier\n").unwrap();
        let mut file = RotatingFile::open(&path, 10).unwrap();
        file.write_all(b"next\n").unwrap();
        assert_eq!(read(&previous_generation(&path)), "earlier\n");
        assert_eq!(read(&path), "next\n");
    }
}
