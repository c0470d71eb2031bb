//! The copy-back's receiver and sync against streams a hostile guest could send. Each test
//! has a canary directory beside the host directory (and a canary file in it) that must come
//! through unchanged.

use std::fs;
use std::io::{self, Read};
use std::os::fd::AsFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use cocoon_protocol::volume_export::{ExportLimits, LEFT_OUT_KEY};
use tar::{EntryType, Header};

use super::receive::{self, Received};
use super::refusals::Refusal;
use super::{open_dir, sync};

const LIMITS: ExportLimits = ExportLimits {
    max_bytes: 64 << 20,
    max_entries: 10_000,
};

/// A tar stream written header by header, names and links as raw bytes.
struct Crafted(tar::Builder<Vec<u8>>);

impl Crafted {
    fn new() -> Self {
        Self(tar::Builder::new(Vec::new()))
    }

    fn header(kind: EntryType, name: &[u8], link: &[u8], mode: u32, size: u64) -> Header {
        let mut h = Header::new_gnu();
        h.as_old_mut().name[..name.len()].copy_from_slice(name);
        h.as_old_mut().linkname[..link.len()].copy_from_slice(link);
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_mtime(1_600_000_000);
        h.set_size(size);
        h.set_cksum();
        h
    }

    fn put(
        &mut self,
        kind: EntryType,
        name: &[u8],
        link: &[u8],
        mode: u32,
        data: &[u8],
    ) -> &mut Self {
        let h = Self::header(kind, name, link, mode, data.len() as u64);
        self.0.append(&h, data).unwrap();
        self
    }

    fn file(&mut self, name: &str, data: &str) -> &mut Self {
        self.put(
            EntryType::Regular,
            name.as_bytes(),
            b"",
            0o644,
            data.as_bytes(),
        )
    }

    fn dir(&mut self, name: &str) -> &mut Self {
        self.put(EntryType::Directory, name.as_bytes(), b"", 0o755, b"")
    }

    fn symlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.put(
            EntryType::Symlink,
            name.as_bytes(),
            target.as_bytes(),
            0o777,
            b"",
        )
    }

    /// A GNU long-name entry naming the next entry.
    fn long_name(&mut self, name: &[u8]) -> &mut Self {
        self.put(EntryType::GNULongName, b"././@LongLink", b"", 0o644, name)
    }

    fn pax(&mut self, key: &str, value: &[u8]) -> &mut Self {
        self.0.append_pax_extensions([(key, value)]).unwrap();
        self
    }

    fn end(&mut self) -> Vec<u8> {
        self.0.finish().unwrap();
        std::mem::take(self.0.get_mut())
    }
}

/// A host directory with a canary directory beside it.
struct Scene {
    _tmp: tempfile::TempDir,
    host: PathBuf,
    canary: PathBuf,
    staging: PathBuf,
}

impl Scene {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let host = tmp.path().join("vol");
        let canary = tmp.path().join("canary");
        let staging = tmp.path().join("staging");
        for d in [&host, &canary, &staging] {
            fs::create_dir(d).unwrap();
        }
        fs::write(canary.join("secret"), "canary\n").unwrap();
        Self {
            host,
            canary,
            staging,
            _tmp: tmp,
        }
    }

    /// Receives `stream` into a fresh staging directory, then syncs the host directory.
    fn copy_back(&self, mut stream: impl Read, limits: ExportLimits) -> anyhow::Result<Received> {
        let staging = open_dir(&self.staging)?;
        let received = receive::receive(&mut stream, staging.as_fd(), limits)?;
        let host = open_dir(&self.host)?;
        let synced = sync::sync(staging.as_fd(), host.as_fd(), &received)?;
        assert_eq!(synced.line(), None, "every entry written");
        Ok(received)
    }

    /// Everything beside the host directory, and the root's, as (path, kind, size, contents).
    fn outside(&self) -> Vec<String> {
        let mut listing = Vec::new();
        list(self.host.parent().unwrap(), &mut listing, &self.host);
        listing
    }

    fn host_names(&self) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(&self.host)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }
}

fn list(dir: &Path, out: &mut Vec<String>, skip: &Path) {
    let mut entries: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        if path == skip || path.file_name().is_some_and(|n| n == "staging") {
            continue;
        }
        let meta = fs::symlink_metadata(&path).unwrap();
        let contents = if meta.is_file() {
            fs::read_to_string(&path).unwrap()
        } else {
            String::new()
        };
        out.push(format!(
            "{} {:o} {} {contents}",
            path.display(),
            meta.permissions().mode(),
            meta.len()
        ));
        if meta.is_dir() {
            list(&path, out, skip);
        }
    }
}

#[test]
fn paths_that_leave_the_volume_are_refused() {
    let scene = Scene::new();
    let before = scene.outside();
    let stream = Crafted::new()
        .file("../x", "pwned")
        .file("a/../../x", "pwned")
        .file("../canary/secret", "pwned")
        .put(
            EntryType::Regular,
            scene.canary.join("abs").as_os_str().as_encoded_bytes(),
            b"",
            0o644,
            b"pwned",
        )
        .long_name(b"nul\0/../../x\0")
        .file("ignored", "pwned")
        .long_name(&[b'n'; 300])
        .file("ignored", "pwned")
        .file("legit", "ok")
        .end();
    let received = scene.copy_back(stream.as_slice(), LIMITS).unwrap();
    assert_eq!(
        received.refusals.count(Refusal::UnsafePath),
        6,
        "{:?}",
        received.refusals
    );
    assert_eq!(
        scene.outside(),
        before,
        "nothing outside the host directory changed"
    );
    assert_eq!(scene.host_names(), ["legit"]);
}

#[test]
fn a_name_with_a_slash_is_a_path_whose_directory_must_come_first() {
    let scene = Scene::new();
    let stream = Crafted::new()
        .file("no-dir/x", "pwned")
        .dir("d")
        .file("d/y", "ok")
        .end();
    let received = scene.copy_back(stream.as_slice(), LIMITS).unwrap();
    assert_eq!(received.refusals.count(Refusal::NoDirectory), 1);
    assert_eq!(fs::read_to_string(scene.host.join("d/y")).unwrap(), "ok");
    assert!(!scene.host.join("no-dir").exists());
}

#[test]
fn links_come_back_as_links_and_are_never_followed() {
    let scene = Scene::new();
    let before = scene.outside();
    let canary = scene.canary.display().to_string();
    let stream = Crafted::new()
        .symlink("etc", "/etc")
        .file("etc/passwd", "pwned")
        .symlink("out", &canary)
        .file("out/secret", "pwned")
        .symlink("rel", "../canary")
        .dir("rel/sub")
        .symlink("loop-a", "loop-b")
        .symlink("loop-b", "loop-a")
        .file("loop-a/x", "pwned")
        .end();
    let received = scene.copy_back(stream.as_slice(), LIMITS).unwrap();
    assert_eq!(
        received.refusals.count(Refusal::ThroughLink),
        4,
        "{:?}",
        received.refusals
    );
    assert_eq!(scene.outside(), before);
    assert_eq!(fs::read_link(scene.host.join("out")).unwrap(), scene.canary);
    assert_eq!(
        fs::read_link(scene.host.join("loop-a")).unwrap(),
        Path::new("loop-b")
    );
    assert!(!fs::read_to_string("/etc/passwd").unwrap().contains("pwned"));
}

#[test]
fn a_link_that_replaces_a_sent_directory_is_refused() {
    let scene = Scene::new();
    let stream = Crafted::new()
        .dir("d")
        .symlink("d", "/")
        .file("d/x", "ok")
        .end();
    let received = scene.copy_back(stream.as_slice(), LIMITS).unwrap();
    assert_eq!(received.refusals.count(Refusal::Duplicate), 1);
    assert!(scene.host.join("d").symlink_metadata().unwrap().is_dir());
    assert_eq!(fs::read_to_string(scene.host.join("d/x")).unwrap(), "ok");
}

#[test]
fn hard_links_devices_fifos_and_other_kinds_are_refused_and_host_copies_kept() {
    let scene = Scene::new();
    fs::write(scene.host.join("dev"), "host's own").unwrap();
    let before = scene.outside();
    let secret = scene.canary.join("secret").display().to_string();
    let stream = Crafted::new()
        .put(EntryType::Link, b"hard", secret.as_bytes(), 0o644, b"")
        .put(
            EntryType::Link,
            b"hard-rel",
            b"../canary/secret",
            0o644,
            b"",
        )
        .put(EntryType::Char, b"dev", b"", 0o666, b"")
        .put(EntryType::Block, b"blk", b"", 0o666, b"")
        .put(EntryType::Fifo, b"fifo", b"", 0o644, b"")
        .put(EntryType::GNUSparse, b"sparse", b"", 0o644, b"")
        .put(EntryType::new(b'Z'), b"odd", b"", 0o644, b"")
        .end();
    let received = scene.copy_back(stream.as_slice(), LIMITS).unwrap();
    let r = &received.refusals;
    assert_eq!(
        [
            r.count(Refusal::HardLink),
            r.count(Refusal::Device),
            r.count(Refusal::Fifo),
            r.count(Refusal::OtherKind)
        ],
        [2, 2, 1, 2],
        "{r:?}"
    );
    assert_eq!(
        scene.host_names(),
        ["dev"],
        "nothing made; the host's file of a refused name kept"
    );
    assert_eq!(
        fs::read_to_string(scene.host.join("dev")).unwrap(),
        "host's own"
    );
    assert_eq!(scene.outside(), before);
    assert_eq!(r.lines(LIMITS.max_bytes).len(), 4, "one line per kind");
}

#[test]
fn setuid_and_setgid_bits_are_dropped_from_files() {
    let scene = Scene::new();
    // The host's own setuid file, unchanged in the guest, keeps its bit.
    fs::write(scene.host.join("hosts-own"), "x").unwrap();
    fs::set_permissions(
        scene.host.join("hosts-own"),
        fs::Permissions::from_mode(0o4755),
    )
    .unwrap();
    let stream = Crafted::new()
        .put(EntryType::Regular, b"suid", b"", 0o4755, b"#!/bin/sh\n")
        .put(EntryType::Regular, b"sgid", b"", 0o2755, b"#!/bin/sh\n")
        .put(EntryType::Directory, b"shared", b"", 0o6775, b"")
        .put(EntryType::Regular, b"sticky", b"", 0o1644, b"")
        .put(EntryType::Regular, b"hosts-own", b"", 0o4755, b"x")
        .end();
    let received = scene.copy_back(stream.as_slice(), LIMITS).unwrap();
    assert_eq!(received.refusals.count(Refusal::SetId), 3);
    let mode = |n: &str| {
        fs::metadata(scene.host.join(n))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777
    };
    assert_eq!(
        [
            mode("suid"),
            mode("sgid"),
            mode("shared"),
            mode("sticky"),
            mode("hosts-own")
        ],
        [0o755, 0o755, 0o2775, 0o1644, 0o4755],
        "a directory keeps setgid (it only passes its group on)"
    );
}

/// A stream with a file of `size` zero bytes (made as they are read) between `prefix` (entries
/// without the end of the archive) and `suffix`.
fn with_huge_file(prefix: Vec<u8>, name: &[u8], size: u64, suffix: Vec<u8>) -> impl Read {
    let header = Crafted::header(EntryType::Regular, name, b"", 0o644, size);
    io::Cursor::new(prefix)
        .chain(io::Cursor::new(header.as_bytes().to_vec()))
        .chain(io::repeat(0).take(size))
        .chain(io::Cursor::new(suffix))
}

/// Counts what is read through it.
struct Counting<R> {
    inner: R,
    read: u64,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        Ok(n)
    }
}

#[test]
fn a_4_gib_file_past_the_limit_voids_the_stream_without_reading_it() {
    // An honest agent marks such a file left out (the agent's tests send a real 4 GiB sparse
    // file through the exporter and this receiver): a stream with 4 GiB in it is hostile.
    let scene = Scene::new();
    fs::write(scene.host.join("huge"), "host's copy").unwrap();
    let prefix = {
        let mut c = Crafted::new();
        c.file("before", "1");
        c.0.get_ref().clone()
    };
    let suffix = Crafted::new().file("after", "2").end();
    let mut stream = Counting {
        inner: with_huge_file(prefix, b"huge", 4 << 30, suffix),
        read: 0,
    };
    let staging = open_dir(&scene.staging).unwrap();
    let err = receive::receive(&mut stream, staging.as_fd(), LIMITS).unwrap_err();
    assert!(
        err.to_string().contains("more than the volume holds"),
        "{err}"
    );
    assert!(
        stream.read < 1 << 20,
        "stopped at the header, read {}",
        stream.read
    );
    assert_eq!(scene.host_names(), ["huge"]);
}

#[test]
fn entries_past_the_byte_limit_are_refused_and_the_rest_taken() {
    let scene = Scene::new();
    fs::write(scene.host.join("big"), "host's copy").unwrap();
    let limits = ExportLimits {
        max_bytes: 15,
        ..LIMITS
    };
    let stream = Crafted::new()
        .file("small", "0123456789")
        .file("big", "this one does not fit")
        .dir("no-room-for-a-directory")
        .end();
    let received = scene.copy_back(stream.as_slice(), limits).unwrap();
    assert_eq!(received.refusals.count(Refusal::OverLimit), 2);
    assert_eq!(received.bytes, 10);
    assert_eq!(scene.host_names(), ["big", "small"]);
    assert_eq!(
        fs::read_to_string(scene.host.join("big")).unwrap(),
        "host's copy"
    );
}

#[test]
fn a_file_the_agent_marked_over_the_limit_keeps_the_host_copy() {
    let scene = Scene::new();
    fs::write(scene.host.join("big"), "host's copy").unwrap();
    fs::write(scene.host.join("gone"), "removed in the guest").unwrap();
    let stream = Crafted::new()
        .pax(LEFT_OUT_KEY, b"over-limit")
        .file("big", "")
        .end();
    let received = scene.copy_back(stream.as_slice(), LIMITS).unwrap();
    assert_eq!(received.refusals.count(Refusal::OverLimit), 1);
    assert_eq!(scene.host_names(), ["big"]);
    assert_eq!(
        fs::read_to_string(scene.host.join("big")).unwrap(),
        "host's copy"
    );
}

#[test]
fn unknown_pax_keys_void_their_entry() {
    let scene = Scene::new();
    let stream = Crafted::new()
        .pax("size", b"1")
        .file("x", "pwned")
        .file("y", "ok")
        .end();
    let received = scene.copy_back(stream.as_slice(), LIMITS).unwrap();
    assert_eq!(received.refusals.count(Refusal::Extension), 1);
    assert_eq!(scene.host_names(), ["y"]);
}

/// `count` empty files, each header made as it is read.
struct ManyEntries {
    next: u64,
    count: u64,
    block: Vec<u8>,
}

impl Read for ManyEntries {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.block.is_empty() {
            if self.next == self.count {
                return Ok(0);
            }
            let name = format!("f{}", self.next);
            self.block = Crafted::header(EntryType::Regular, name.as_bytes(), b"", 0o644, 0)
                .as_bytes()
                .to_vec();
            self.next += 1;
        }
        let n = buf.len().min(self.block.len());
        buf[..n].copy_from_slice(&self.block[..n]);
        self.block.drain(..n);
        Ok(n)
    }
}

#[test]
fn a_million_entries_past_the_entry_limit_void_the_stream_early() {
    let scene = Scene::new();
    fs::write(scene.host.join("kept"), "host").unwrap();
    let mut stream = ManyEntries {
        next: 0,
        count: 1_000_000,
        block: Vec::new(),
    };
    let limits = ExportLimits {
        max_entries: 1000,
        ..LIMITS
    };
    let err = scene
        .copy_back(&mut stream, limits)
        .unwrap_err()
        .to_string();
    assert!(err.contains("over 1000 entries"), "{err}");
    assert!(
        stream.next <= 1001,
        "stopped reading at the limit, not after {}",
        stream.next
    );
    assert_eq!(
        scene.host_names(),
        ["kept"],
        "the host directory was left as it was"
    );
}

#[test]
fn malformed_truncated_and_oversized_streams_are_errors() {
    let scene = Scene::new();
    fs::write(scene.host.join("kept"), "host").unwrap();
    let mut bad_checksum = Crafted::new().file("a", "x").end();
    bad_checksum[148] ^= 1;
    let full = Crafted::new().file("a", &"x".repeat(2000)).end();
    let truncated = full[..1024].to_vec();
    let long_name = Crafted::new()
        .long_name(&vec![b'a'; 1 << 20])
        .file("x", "")
        .end();
    let pax = Crafted::new()
        .pax("x", &vec![b'a'; 1 << 20])
        .file("x", "")
        .end();
    for (what, stream) in [
        ("checksum", bad_checksum),
        ("truncated", truncated),
        ("long name", long_name),
        ("pax", pax),
    ] {
        fs::remove_dir_all(&scene.staging).unwrap();
        fs::create_dir(&scene.staging).unwrap();
        let err = scene.copy_back(stream.as_slice(), LIMITS);
        assert!(err.is_err(), "{what}");
        assert_eq!(scene.host_names(), ["kept"], "{what}");
    }
}

#[test]
fn sync_adds_changes_removes_and_replaces_host_links_without_following_them() {
    let scene = Scene::new();
    let before = scene.outside();
    fs::write(scene.host.join("kept"), "old").unwrap();
    fs::write(scene.host.join("same"), "same").unwrap();
    fs::write(scene.host.join("removed"), "y").unwrap();
    fs::create_dir_all(scene.host.join("gone-dir/deep")).unwrap();
    fs::write(scene.host.join("sub"), "was a file").unwrap();
    // Links the host directory holds (made on the host), which the copy-back must not follow.
    std::os::unix::fs::symlink(&scene.canary, scene.host.join("trap-dir")).unwrap();
    std::os::unix::fs::symlink(scene.canary.join("secret"), scene.host.join("trap-file")).unwrap();
    let stream = Crafted::new()
        .file("kept", "new")
        .file("same", "same")
        .dir("sub")
        .file("sub/added", "x")
        .dir("trap-dir")
        .file("trap-dir/secret", "pwned")
        .file("trap-file", "pwned")
        .symlink("link", "kept")
        .put(EntryType::Regular, b"private", b"", 0o000, b"p")
        .put(EntryType::Directory, b"locked", b"", 0o500, b"")
        .end();
    scene.copy_back(stream.as_slice(), LIMITS).unwrap();
    assert_eq!(fs::read_to_string(scene.host.join("kept")).unwrap(), "new");
    assert_eq!(
        fs::read_to_string(scene.host.join("sub/added")).unwrap(),
        "x"
    );
    assert_eq!(
        fs::read_link(scene.host.join("link")).unwrap(),
        Path::new("kept")
    );
    assert!(scene
        .host
        .join("trap-dir")
        .symlink_metadata()
        .unwrap()
        .is_dir());
    assert_eq!(
        fs::read_to_string(scene.host.join("trap-file")).unwrap(),
        "pwned"
    );
    assert_eq!(
        scene.outside(),
        before,
        "the canary behind the host's links is untouched"
    );
    let mode = |n: &str| {
        fs::symlink_metadata(scene.host.join(n))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777
    };
    assert_eq!((mode("private"), mode("locked")), (0o000, 0o500));
    assert_eq!(
        scene.host_names(),
        [
            "kept",
            "link",
            "locked",
            "private",
            "same",
            "sub",
            "trap-dir",
            "trap-file"
        ]
    );
    let mtime = fs::metadata(scene.host.join("kept"))
        .unwrap()
        .modified()
        .unwrap();
    assert_eq!(
        mtime,
        std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_600_000_000)
    );
}

#[test]
fn a_file_with_another_link_is_replaced_not_written_through() {
    let scene = Scene::new();
    let before = scene.outside();
    // A link the host directory holds to a file beside it (made on the host, not by the guest).
    fs::hard_link(scene.canary.join("secret"), scene.host.join("linked")).unwrap();
    fs::hard_link(scene.canary.join("secret"), scene.host.join("linked-same")).unwrap();
    let stream = Crafted::new()
        .file("linked", "new contents")
        .put(EntryType::Regular, b"linked-same", b"", 0o777, b"canary\n")
        .end();
    scene.copy_back(stream.as_slice(), LIMITS).unwrap();
    assert_eq!(
        fs::read_to_string(scene.host.join("linked")).unwrap(),
        "new contents"
    );
    assert_eq!(
        scene.outside(),
        before,
        "the other link's file kept its contents and mode"
    );
}

#[test]
fn the_host_directory_must_still_be_the_one_checked() {
    let scene = Scene::new();
    let identity = super::dir_identity(&scene.host).unwrap();
    assert!(super::open_same_dir(&scene.host, identity).is_ok());
    // Someone who can write its parent moves it away and puts a link in its place.
    let moved = scene.host.with_file_name("moved");
    fs::rename(&scene.host, &moved).unwrap();
    std::os::unix::fs::symlink(&scene.canary, &scene.host).unwrap();
    assert_eq!(
        super::open_same_dir(&scene.host, identity)
            .unwrap_err()
            .raw_os_error(),
        Some(libc::ELOOP)
    );
    // Or another directory.
    fs::remove_file(&scene.host).unwrap();
    fs::create_dir(&scene.host).unwrap();
    let err = super::open_same_dir(&scene.host, identity).unwrap_err();
    assert!(err.to_string().contains("no longer the directory"), "{err}");
}

#[test]
fn entries_nested_too_deep_are_refused() {
    let scene = Scene::new();
    let mut c = Crafted::new();
    let mut path = String::new();
    for _ in 0..super::receive::MAX_DEPTH {
        if !path.is_empty() {
            path.push('/');
        }
        path.push('d');
        c.long_name(path.as_bytes()).dir("long");
    }
    c.long_name(format!("{path}/too-deep").as_bytes())
        .file("long", "x");
    let received = scene.copy_back(c.end().as_slice(), LIMITS).unwrap();
    assert_eq!(received.refusals.count(Refusal::TooDeep), 1);
}
