//! How long a Unix socket's path may be, for every socket host and guest create: `sun_path` holds
//! 108 bytes, one of them the terminating NUL. Paths made from container and exec ids (64 bytes
//! each under containerd and CRI) must stay under it whatever the ids are, so sockets are named
//! by short hashes or counters, never by ids.

use std::path::Path;

/// The longest path a Unix socket can be bound or connected at.
pub const MAX_SOCKET_PATH_LEN: usize = 107;

/// What a hybrid-vsock socket's path grows by for a host-side listener: `_` and a u32 port.
pub const VSOCK_PORT_SUFFIX_LEN: usize = "_4294967295".len();

/// The longest a VMM's hybrid-vsock socket path may be: its listeners' paths must fit too.
pub const MAX_VSOCK_UDS_LEN: usize = MAX_SOCKET_PATH_LEN - VSOCK_PORT_SUFFIX_LEN;

/// True if a socket can be made at `path`.
pub fn fits(path: &Path) -> bool {
    path.as_os_str().len() <= MAX_SOCKET_PATH_LEN
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limit_is_the_kernels() {
        let dir = std::env::temp_dir().join(format!("cocoon-sun-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let name_room = MAX_SOCKET_PATH_LEN - dir.as_os_str().len() - 1;
        let longest = dir.join("s".repeat(name_room));
        assert!(fits(&longest));
        let bound = std::os::unix::net::UnixListener::bind(&longest);
        let too_long = dir.join("s".repeat(name_room + 1));
        assert!(!fits(&too_long));
        let refused = std::os::unix::net::UnixListener::bind(&too_long);
        let _ = std::fs::remove_dir_all(&dir);
        bound.expect("a path of the longest length binds");
        assert!(refused.is_err(), "a path one byte longer must not bind");
    }
}
