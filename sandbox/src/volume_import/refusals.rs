//! What the copy-back refused, by kind, for `cocoon run` to say in one line per kind. Example
//! paths come from the guest: they are shown escaped (no control characters reach a terminal)
//! and cut short.

use std::collections::BTreeMap;

/// A kind of entry the host does not take (or, for `SetId`, takes without its bits).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Refusal {
    /// Absolute, with `..` or NUL, or over PATH_MAX / NAME_MAX.
    UnsafePath,
    /// A symbolic link on the way (never followed).
    ThroughLink,
    /// Its directory was not sent before it, or is no directory.
    NoDirectory,
    /// A second entry for a name already made.
    Duplicate,
    /// A symbolic link with an empty, NUL-holding or overlong target.
    BadLinkTarget,
    HardLink,
    Device,
    Fifo,
    /// A tar type the host never makes (sparse, contiguous, ...).
    OtherKind,
    /// After an archive extension the host does not take.
    Extension,
    /// Nested deeper than `receive::MAX_DEPTH`.
    TooDeep,
    /// Past the volume's byte limit.
    OverLimit,
    /// Left out by the agent: a socket (tar has no type for it).
    Socket,
    /// Left out by the agent: a directory another filesystem is mounted on.
    OtherFilesystem,
    /// Written, but without its setuid/setgid bits.
    SetId,
}

impl Refusal {
    /// The line's wording after the count: (one, several).
    fn what(self) -> (&'static str, &'static str) {
        match self {
            Self::UnsafePath => (
                "entry whose path leaves the volume (absolute, '..', NUL or too long)",
                "entries whose paths leave the volume (absolute, '..', NUL or too long)",
            ),
            Self::ThroughLink => (
                "entry under a symbolic link (links are never followed)",
                "entries under a symbolic link (links are never followed)",
            ),
            Self::NoDirectory => (
                "entry whose directory was not sent before it",
                "entries whose directory was not sent before them",
            ),
            Self::Duplicate => (
                "second entry for a name already written",
                "second entries for names already written",
            ),
            Self::BadLinkTarget => (
                "symbolic link with an empty, NUL-holding or overlong target",
                "symbolic links with empty, NUL-holding or overlong targets",
            ),
            Self::HardLink => ("hard link", "hard links"),
            Self::Device => ("device node", "device nodes"),
            Self::Fifo => ("fifo", "fifos"),
            Self::OtherKind => (
                "entry of a kind the host does not make (sparse, contiguous, ...)",
                "entries of kinds the host does not make (sparse, contiguous, ...)",
            ),
            Self::Extension => (
                "entry with an archive extension the host does not take",
                "entries with archive extensions the host does not take",
            ),
            Self::TooDeep => (
                "entry nested over 256 directories deep",
                "entries nested over 256 directories deep",
            ),
            Self::OverLimit => (
                "entry past the volume's size limit",
                "entries past the volume's size limit",
            ),
            Self::Socket => ("socket", "sockets"),
            Self::OtherFilesystem => (
                "directory another filesystem is mounted on",
                "directories other filesystems are mounted on",
            ),
            Self::SetId => ("file", "files"),
        }
    }
}

const EXAMPLES: usize = 3;
const EXAMPLE_CHARS: usize = 80;

#[derive(Debug, Default)]
pub struct Refusals {
    kinds: BTreeMap<Refusal, (u64, Vec<String>)>,
}

/// A guest-chosen path as it may be shown: lossy UTF-8, control characters escaped, cut short.
pub fn shown(path: &[u8]) -> String {
    let text: String = String::from_utf8_lossy(path).escape_debug().collect();
    if text.chars().count() > EXAMPLE_CHARS {
        let cut: String = text.chars().take(EXAMPLE_CHARS).collect();
        format!("\"{cut}...\"")
    } else {
        format!("\"{text}\"")
    }
}

impl Refusals {
    pub fn note(&mut self, kind: Refusal, path: &[u8]) {
        let (count, examples) = self.kinds.entry(kind).or_default();
        *count += 1;
        if examples.len() < EXAMPLES {
            examples.push(shown(path));
        }
    }

    #[cfg(test)]
    pub fn count(&self, kind: Refusal) -> u64 {
        self.kinds.get(&kind).map_or(0, |(n, _)| *n)
    }

    /// One line per kind, e.g. `refused 2 hard links ("a", "b"); the host's copies are kept`.
    pub fn lines(&self, limit_bytes: u64) -> Vec<String> {
        self.kinds
            .iter()
            .map(|(kind, (count, examples))| {
                let (one, several) = kind.what();
                let what = if *count > 1 { several } else { one };
                let mut list = examples.join(", ");
                if *count > examples.len() as u64 {
                    list.push_str(", ...");
                }
                match kind {
                    Refusal::SetId => {
                        format!("dropped the setuid/setgid bits of {count} {what} ({list})")
                    }
                    Refusal::OverLimit => format!(
                        "refused {count} {what} of {} MiB ({list}); the host's copies, if any, are kept",
                        limit_bytes >> 20
                    ),
                    Refusal::UnsafePath
                    | Refusal::ThroughLink
                    | Refusal::NoDirectory
                    | Refusal::Duplicate
                    | Refusal::BadLinkTarget => format!("refused {count} {what} ({list})"),
                    Refusal::HardLink
                    | Refusal::Device
                    | Refusal::Fifo
                    | Refusal::OtherKind
                    | Refusal::Extension
                    | Refusal::TooDeep => format!(
                        "refused {count} {what} ({list}); the host's copies, if any, are kept"
                    ),
                    Refusal::Socket | Refusal::OtherFilesystem => format!(
                        "the guest left out {count} {what} ({list}); the host's copies, if any, are kept"
                    ),
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_kind_with_escaped_examples() {
        let mut r = Refusals::default();
        r.note(Refusal::HardLink, b"a");
        r.note(Refusal::UnsafePath, b"../x\x1b[2J");
        for i in 0..5 {
            r.note(Refusal::Device, format!("dev{i}").as_bytes());
        }
        let lines = r.lines(300 << 20);
        assert_eq!(lines.len(), 3, "{lines:?}");
        assert_eq!(
            lines[0],
            "refused 1 entry whose path leaves the volume (absolute, '..', NUL or too long) (\"../x\\u{1b}[2J\")"
        );
        assert!(
            lines[1].starts_with("refused 1 hard link (\"a\")"),
            "{lines:?}"
        );
        assert!(
            lines[2].starts_with("refused 5 device nodes (\"dev0\", \"dev1\", \"dev2\", ...)"),
            "{lines:?}"
        );
        assert!(lines.iter().all(|l| !l.contains('\x1b')));
        assert_eq!(r.count(Refusal::Device), 5);
    }

    #[test]
    fn long_examples_are_cut() {
        let shown = shown(&[b'x'; 500]);
        assert!(shown.len() < 100 && shown.ends_with("...\""), "{shown}");
    }
}
