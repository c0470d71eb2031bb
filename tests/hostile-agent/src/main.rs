//! `cocoon-hostile-agent`, test only (never in the guest image; `make test-guest` builds it into
//! `target/guest/hostile-initramfs.cpio`): the agent, with what a guest whose kernel or agent is
//! compromised could put in a volume's stream sent before the volume's real tree, so that the
//! container suite can check the host refuses each kind and still takes the rest. Entries go
//! through the agent's raw writer (`Exporter::append`): the tar crate rightly refuses to make
//! most of them.

use std::io;

use cocoon_protocol::volume_export::LeftOut;
use tar::{EntryType, Header};

use cocoon_agent::export::{Exporter, Stream};

fn main() {
    cocoon_agent::export::set_prelude(send_attacks);
    cocoon_agent::run();
}

/// One entry as an attacker writes it: `name` and `link` as raw bytes.
fn raw(
    exporter: &mut Exporter<Stream>,
    kind: EntryType,
    name: &[u8],
    link: &[u8],
    mode: u32,
    data: &[u8],
) -> io::Result<()> {
    let mut header = Header::new_gnu();
    header.set_entry_type(kind);
    header.set_mode(mode);
    header.set_mtime(1_700_000_000);
    header.set_size(data.len() as u64);
    exporter.append(&mut header, name, link, data)
}

/// Every attack, each its own kind of refusal on the host (`cocoon_sandbox::volume_import`).
fn send_attacks(exporter: &mut Exporter<Stream>) -> io::Result<()> {
    let file = EntryType::Regular;
    let pwned = b"written by a hostile guest\n";
    // Paths that leave the volume.
    raw(exporter, file, b"../escape-dotdot", b"", 0o644, pwned)?;
    raw(
        exporter,
        file,
        b"sub/../../escape-nested",
        b"",
        0o644,
        pwned,
    )?;
    raw(exporter, file, b"/escape-absolute", b"", 0o644, pwned)?;
    raw(exporter, file, b"nul\0/../../escape-nul", b"", 0o644, pwned)?;
    // Links to follow out: to the directory beside the volume, to /etc, and a loop.
    raw(
        exporter,
        EntryType::Symlink,
        b"link-out",
        b"../canary",
        0o777,
        b"",
    )?;
    raw(
        exporter,
        file,
        b"link-out/escape-through-link",
        b"",
        0o644,
        pwned,
    )?;
    raw(
        exporter,
        EntryType::Symlink,
        b"etc-link",
        b"/etc",
        0o777,
        b"",
    )?;
    raw(exporter, file, b"etc-link/escape-etc", b"", 0o644, pwned)?;
    raw(
        exporter,
        EntryType::Symlink,
        b"loop-a",
        b"loop-b",
        0o777,
        b"",
    )?;
    raw(
        exporter,
        EntryType::Symlink,
        b"loop-b",
        b"loop-a",
        0o777,
        b"",
    )?;
    raw(exporter, file, b"loop-a/escape-loop", b"", 0o644, pwned)?;
    // A directory swapped for a link after it was sent.
    raw(exporter, EntryType::Directory, b"swapped", b"", 0o755, b"")?;
    raw(exporter, EntryType::Symlink, b"swapped", b"/", 0o777, b"")?;
    raw(
        exporter,
        file,
        b"no-such-dir/escape-orphan",
        b"",
        0o644,
        pwned,
    )?;
    // Kinds the host never makes.
    raw(
        exporter,
        EntryType::Link,
        b"hard-out",
        b"../canary/secret",
        0o644,
        b"",
    )?;
    raw(exporter, EntryType::Char, b"dev-null", b"", 0o666, b"")?;
    raw(exporter, EntryType::Fifo, b"fifo", b"", 0o644, b"")?;
    raw(exporter, EntryType::GNUSparse, b"sparse", b"", 0o644, b"")?;
    // Privilege on the host: setuid root, if the host kept it.
    raw(exporter, file, b"setuid", b"", 0o4755, b"#!/bin/sh\nid\n")?;
    // A file past the byte limit, as an honest agent marks it (the test's container removed
    // `big`, which the host directory has: the host keeps its copy).
    exporter.left_out(b"big", LeftOut::OverLimit)?;
    Ok(())
}
