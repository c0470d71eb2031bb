//! The path of an entry in a volume's stream, as the guest sent it, checked before anything is
//! made of it: relative, no `..`, no NUL, within Linux's PATH_MAX and NAME_MAX. `.` and empty
//! components (`a//b`, `./a`, a directory's trailing `/`) are dropped, as tar readers do.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

use cocoon_protocol::volume_export::{MAX_NAME_LEN, MAX_PATH_LEN};

/// Why a path is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unsafe {
    Absolute,
    DotDot,
    Nul,
    TooLong,
}

/// The components of `raw`, which must stay beneath the volume; none for the volume's root.
pub fn components(raw: &[u8]) -> Result<Vec<&OsStr>, Unsafe> {
    if raw.len() > MAX_PATH_LEN {
        return Err(Unsafe::TooLong);
    }
    if raw.contains(&0) {
        return Err(Unsafe::Nul);
    }
    if raw.starts_with(b"/") {
        return Err(Unsafe::Absolute);
    }
    let mut parts = Vec::new();
    for part in raw.split(|b| *b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => return Err(Unsafe::DotDot),
            _ if part.len() > MAX_NAME_LEN => return Err(Unsafe::TooLong),
            _ => parts.push(OsStr::from_bytes(part)),
        }
    }
    Ok(parts)
}

/// `components` joined by `/`: the one spelling of a path the copy-back keeps.
pub fn joined(components: &[&OsStr]) -> Vec<u8> {
    let mut path = Vec::new();
    for (i, c) in components.iter().enumerate() {
        if i > 0 {
            path.push(b'/');
        }
        path.extend_from_slice(c.as_bytes());
    }
    path
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plain(raw: &[u8]) -> Result<Vec<u8>, Unsafe> {
        components(raw).map(|c| joined(&c))
    }

    #[test]
    fn plain_paths_pass_normalised() {
        assert_eq!(plain(b"a/b/c"), Ok(b"a/b/c".to_vec()));
        assert_eq!(plain(b"./a//b/"), Ok(b"a/b".to_vec()));
        assert_eq!(plain(b"..a/b..c/...").unwrap(), b"..a/b..c/...");
        assert_eq!(plain(b"."), Ok(Vec::new()));
        assert_eq!(
            plain(b"\xff\xfe/x").unwrap(),
            b"\xff\xfe/x",
            "any bytes but / and NUL"
        );
    }

    #[test]
    fn escaping_paths_are_refused() {
        assert_eq!(plain(b"../x"), Err(Unsafe::DotDot));
        assert_eq!(plain(b"a/../../x"), Err(Unsafe::DotDot));
        assert_eq!(plain(b"a/.."), Err(Unsafe::DotDot));
        assert_eq!(plain(b"/etc/passwd"), Err(Unsafe::Absolute));
        assert_eq!(plain(b"//x"), Err(Unsafe::Absolute));
        assert_eq!(plain(b"a\0/../../x"), Err(Unsafe::Nul));
        assert_eq!(plain(b"x\0"), Err(Unsafe::Nul));
    }

    #[test]
    fn overlong_paths_and_names_are_refused() {
        assert_eq!(plain(&[b'a'; 256]), Err(Unsafe::TooLong));
        assert!(plain(&[b'a'; 255]).is_ok());
        let long: Vec<u8> = b"d/".repeat(2049);
        assert_eq!(plain(&long), Err(Unsafe::TooLong));
    }
}
