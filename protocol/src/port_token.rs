//! Who may use a host port. Any guest process reaches every host vsock port (AF_VSOCK is not
//! network-namespaced, and hybrid vsock hands each guest connection to CID 2 port P to the host's
//! listener on P), so a container could otherwise take another process's stdin or a volume's
//! stream. Each connection the agent makes to a host port therefore starts with a token and a
//! newline: one the host chose for that request and sent over the control channel, which no
//! container sees. The host drops a connection that does not.

/// Characters of a token (lower-case hex).
pub const TOKEN_LEN: usize = 32;

/// Whether `token` is one a host would make.
pub fn is_token(token: &str) -> bool {
    token.len() == TOKEN_LEN
        && token
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_32_lower_hex_digits() {
        assert!(is_token(&"0123456789abcdef".repeat(2)));
        assert!(!is_token(&"0123456789ABCDEF".repeat(2)));
        assert!(!is_token("abc"));
        assert!(!is_token(&format!("{}\n", "a".repeat(31))));
    }
}
