//! Initramfs (newc cpio) assembly for cocoon: the guest's initramfs that holds the agent, and the
//! emulated KVM host's initramfs that the test harness builds. Output is reproducible: entries are
//! written in the order given, with fixed inode numbers, owners and timestamps.

use std::io::{self, Write};
use std::path::Path;

use anyhow::{Context, Result};
use cocoon_common::sha256_hex;

pub mod rootfs;

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;
const S_IFCHR: u32 = 0o020000;

enum Body {
    None,
    Bytes(Vec<u8>),
}

struct Entry {
    name: String,
    mode: u32,
    rdev: (u32, u32),
    body: Body,
}

/// An initramfs being assembled in memory.
#[derive(Default)]
pub struct Initramfs {
    entries: Vec<Entry>,
}

fn archive_name(path: &str) -> String {
    path.trim_start_matches('/').to_string()
}

impl Initramfs {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a directory and every missing parent (mode 0755).
    pub fn dir(&mut self, path: &str) -> &mut Self {
        let name = archive_name(path);
        let mut prefix = String::new();
        for part in name.split('/').filter(|p| !p.is_empty()) {
            if !prefix.is_empty() {
                prefix.push('/');
            }
            prefix.push_str(part);
            if !self.entries.iter().any(|e| e.name == prefix) {
                self.entries.push(Entry {
                    name: prefix.clone(),
                    mode: S_IFDIR | 0o755,
                    rdev: (0, 0),
                    body: Body::None,
                });
            }
        }
        self
    }

    fn parent_dirs(&mut self, name: &str) {
        if let Some((parent, _)) = name.rsplit_once('/') {
            self.dir(parent);
        }
    }

    /// Adds a regular file with the given contents and permission bits.
    pub fn file_bytes(&mut self, path: &str, contents: Vec<u8>, perm: u32) -> &mut Self {
        let name = archive_name(path);
        self.parent_dirs(&name);
        self.entries.push(Entry {
            name,
            mode: S_IFREG | (perm & 0o7777),
            rdev: (0, 0),
            body: Body::Bytes(contents),
        });
        self
    }

    /// Adds a copy of a host file.
    pub fn file_from(&mut self, path: &str, source: &Path, perm: u32) -> Result<&mut Self> {
        let contents =
            std::fs::read(source).with_context(|| format!("reading {}", source.display()))?;
        Ok(self.file_bytes(path, contents, perm))
    }

    pub fn symlink(&mut self, path: &str, target: &str) -> &mut Self {
        let name = archive_name(path);
        self.parent_dirs(&name);
        self.entries.push(Entry {
            name,
            mode: S_IFLNK | 0o777,
            rdev: (0, 0),
            body: Body::Bytes(target.as_bytes().to_vec()),
        });
        self
    }

    pub fn char_device(&mut self, path: &str, major: u32, minor: u32, perm: u32) -> &mut Self {
        let name = archive_name(path);
        self.parent_dirs(&name);
        self.entries.push(Entry {
            name,
            mode: S_IFCHR | (perm & 0o7777),
            rdev: (major, minor),
            body: Body::None,
        });
        self
    }

    /// Adds the device nodes the kernel needs before devtmpfs is mounted: the console for init's
    /// stdio, and /dev/null.
    pub fn base_devices(&mut self) -> &mut Self {
        self.char_device("/dev/console", 5, 1, 0o600)
            .char_device("/dev/null", 1, 3, 0o666)
    }

    /// Writes the archive in newc format.
    pub fn write_to<W: Write>(&self, out: W) -> io::Result<W> {
        let mut out = out;
        for (i, entry) in self.entries.iter().enumerate() {
            let data: &[u8] = match &entry.body {
                Body::None => &[],
                Body::Bytes(b) => b,
            };
            let size = u32::try_from(data.len())
                .map_err(|_| io::Error::other(format!("{} is over 4 GiB", entry.name)))?;
            let builder = cpio::newc::Builder::new(&entry.name)
                .ino(i as u32 + 1)
                .mode(entry.mode)
                .uid(0)
                .gid(0)
                .nlink(if entry.mode & S_IFDIR != 0 { 2 } else { 1 })
                .mtime(0)
                .rdev_major(entry.rdev.0)
                .rdev_minor(entry.rdev.1);
            let mut writer = builder.write(out, size);
            writer.write_all(data)?;
            out = writer.finish()?;
        }
        cpio::newc::trailer(out)
    }

    /// Writes the archive to `path` (atomically) and returns its sha256.
    pub fn write_file(&self, path: &Path) -> Result<String> {
        let mut bytes = Vec::new();
        self.write_to(&mut bytes)?;
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, &bytes).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
        Ok(sha256_hex(&bytes))
    }
}

/// True when `elf` is a 64-bit ELF executable that asks for a program interpreter (a dynamic
/// loader), so it cannot run in a guest that has no libraries.
pub fn needs_interpreter(elf: &[u8]) -> bool {
    const PT_INTERP: u32 = 3;
    let u16_at = |o: usize| elf.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u32_at = |o: usize| {
        elf.get(o..o + 4)
            .map(|b| u32::from_le_bytes(b.try_into().unwrap()))
    };
    let u64_at = |o: usize| {
        elf.get(o..o + 8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap()))
    };
    if !elf.starts_with(b"\x7fELF") || elf.get(4) != Some(&2) {
        return false;
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38))
    else {
        return false;
    };
    (0..usize::from(phnum)).any(|i| {
        let at = phoff as usize + i * usize::from(phentsize);
        u32_at(at) == Some(PT_INTERP)
    })
}

/// The guest's initramfs: the agent as /init, the base device nodes and mount points.
pub fn guest_initramfs(agent: &Path) -> Result<Initramfs> {
    let mut image = Initramfs::new();
    image
        .dir("/dev")
        .dir("/proc")
        .dir("/sys")
        .dir("/run")
        .dir("/tmp")
        .base_devices();
    image.file_from("/init", agent, 0o755)?;
    Ok(image)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(bytes: &[u8]) -> Vec<(String, u32, Vec<u8>, u32, u32)> {
        let mut out = Vec::new();
        let mut input = bytes;
        loop {
            let mut reader = cpio::newc::Reader::new(input).unwrap();
            if reader.entry().is_trailer() {
                break;
            }
            let e = reader.entry();
            let (name, mode, maj, min) = (
                e.name().to_string(),
                e.mode(),
                e.rdev_major(),
                e.rdev_minor(),
            );
            let mut data = Vec::new();
            std::io::Read::read_to_end(&mut reader, &mut data).unwrap();
            out.push((name, mode, data, maj, min));
            input = reader.finish().unwrap();
        }
        out
    }

    #[test]
    fn archive_round_trips_through_a_reader() {
        let mut image = Initramfs::new();
        image
            .dir("/a/b")
            .file_bytes("/a/b/c.txt", b"hello".to_vec(), 0o644)
            .symlink("/bin/sh", "busybox")
            .base_devices();
        let mut bytes = Vec::new();
        image.write_to(&mut bytes).unwrap();
        let got = entries(&bytes);
        let names: Vec<&str> = got.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(
            names,
            [
                "a",
                "a/b",
                "a/b/c.txt",
                "bin",
                "bin/sh",
                "dev",
                "dev/console",
                "dev/null"
            ]
        );
        assert_eq!(got[2].2, b"hello");
        assert_eq!(got[2].1, S_IFREG | 0o644);
        assert_eq!(got[4].2, b"busybox");
        assert_eq!(got[4].1 & 0o170000, S_IFLNK);
        assert_eq!((got[6].3, got[6].4), (5, 1));
    }

    #[test]
    fn output_is_reproducible() {
        let build = || {
            let mut image = Initramfs::new();
            image
                .file_bytes("/init", vec![1, 2, 3], 0o755)
                .base_devices();
            let mut bytes = Vec::new();
            image.write_to(&mut bytes).unwrap();
            bytes
        };
        assert_eq!(sha256_hex(&build()), sha256_hex(&build()));
    }

    #[test]
    fn tells_dynamic_from_static_executables() {
        let dynamic = std::fs::read("/bin/sh").unwrap();
        assert!(
            needs_interpreter(&dynamic),
            "/bin/sh is dynamically linked on Debian"
        );
        assert!(!needs_interpreter(b"#!/bin/sh\n"));
        match std::fs::read("/bin/busybox") {
            // Debian's busybox-static (installed by `make deps`) is a static executable.
            Ok(busybox) => assert!(!needs_interpreter(&busybox)),
            Err(e) => println!("skipping the static half: /bin/busybox: {e}"),
        }
    }

    #[test]
    fn missing_agent_names_the_path() {
        let err = guest_initramfs(Path::new("/nonexistent/agent"))
            .err()
            .unwrap();
        assert!(format!("{err:#}").contains("/nonexistent/agent"));
    }
}
