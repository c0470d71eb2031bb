//! cocoon's host front ends: [`launcher`] is `cocoon run` (one command, one microVM, one
//! container); [`containerd`] is containerd's runtime v2 shim, `containerd-shim-cocoon-v2`.

pub mod containerd;
pub mod launcher;

/// The first 8 bytes of `bytes`' SHA-256, in hex: names for cache entries and VM directories.
pub(crate) fn short_hash(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(bytes)
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}
