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
    // `main`, not `run`: the agent re-runs this binary as its spawn helper.
    cocoon_agent::main();
}

/// An entry as an attacker writes it: kind, name and link target (raw bytes), mode, contents.
type Attack = (EntryType, &'static [u8], &'static [u8], u32, &'static [u8]);

const PWNED: &[u8] = b"written by a hostile guest\n";
const FILE: EntryType = EntryType::Regular;
const LINK: EntryType = EntryType::Symlink;

/// Every attack, each its own kind of refusal on the host (`cocoon_sandbox::volume_import`).
const ATTACKS: &[Attack] = &[
    // Paths that leave the volume.
    (FILE, b"../escape-dotdot", b"", 0o644, PWNED),
    (FILE, b"sub/../../escape-nested", b"", 0o644, PWNED),
    (FILE, b"/escape-absolute", b"", 0o644, PWNED),
    (FILE, b"nul\0/../../escape-nul", b"", 0o644, PWNED),
    // Links to follow out: to the directory beside the volume, to /etc, and a loop.
    (LINK, b"link-out", b"../canary", 0o777, b""),
    (FILE, b"link-out/escape-through-link", b"", 0o644, PWNED),
    (LINK, b"etc-link", b"/etc", 0o777, b""),
    (FILE, b"etc-link/escape-etc", b"", 0o644, PWNED),
    (LINK, b"loop-a", b"loop-b", 0o777, b""),
    (LINK, b"loop-b", b"loop-a", 0o777, b""),
    (FILE, b"loop-a/escape-loop", b"", 0o644, PWNED),
    // A directory swapped for a link after it was sent; an entry without its directory.
    (EntryType::Directory, b"swapped", b"", 0o755, b""),
    (LINK, b"swapped", b"/", 0o777, b""),
    (FILE, b"no-such-dir/escape-orphan", b"", 0o644, PWNED),
    // Kinds the host never makes.
    (
        EntryType::Link,
        b"hard-out",
        b"../canary/secret",
        0o644,
        b"",
    ),
    (EntryType::Char, b"dev-null", b"", 0o666, b""),
    (EntryType::Fifo, b"fifo", b"", 0o644, b""),
    (EntryType::GNUSparse, b"sparse", b"", 0o644, b""),
    // Privilege on the host: setuid root, if the host kept it.
    (FILE, b"setuid", b"", 0o4755, b"#!/bin/sh\nid\n"),
];

fn send_attacks(exporter: &mut Exporter<Stream>) -> io::Result<()> {
    for &(kind, name, link, mode, data) in ATTACKS {
        let mut header = Header::new_gnu();
        header.set_entry_type(kind);
        header.set_mode(mode);
        header.set_mtime(1_700_000_000);
        header.set_size(data.len() as u64);
        exporter.append(&mut header, name, link, data)?;
    }
    // A file past the byte limit, as an honest agent marks it (the test's container removed
    // `big`, which the host directory has: the host keeps its copy).
    exporter.left_out(b"big", LeftOut::OverLimit)
}
