//! Descriptors a child process inherits at fixed numbers (the VMM its network backends, passt
//! its socket, the agent's spawn helper a container process's streams): put in place between
//! fork and exec, where only async-signal-safe calls may run.

use std::os::fd::RawFd;

/// In the child, between fork and exec: puts each `(from, to)` descriptor at `to`, open across
/// exec. Copies go above every target first, so no target overwrites a source still to be moved.
/// Only async-signal-safe calls (fcntl, dup2).
pub fn move_descriptors(fds: &[(RawFd, RawFd)]) -> std::io::Result<()> {
    let above = fds.iter().map(|(_, to)| *to).max().unwrap_or(0) + 1;
    let mut copies = [0 as RawFd; MAX_INHERITED_FDS];
    if fds.len() > MAX_INHERITED_FDS {
        return Err(std::io::Error::from_raw_os_error(libc::EMFILE));
    }
    for (copy, (from, _)) in copies.iter_mut().zip(fds) {
        // SAFETY: fcntl on a descriptor this process holds; the result is checked.
        *copy = unsafe { libc::fcntl(*from, libc::F_DUPFD_CLOEXEC, above) };
        if *copy < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    for (copy, (_, to)) in copies.iter().zip(fds) {
        // SAFETY: dup2 onto a number the child owns from now on; dup2's copy is not CLOEXEC.
        if unsafe { libc::dup2(*copy, *to) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// The most descriptors one child inherits (a VMM's network backends: the VMM's own limit on
/// devices is lower).
const MAX_INHERITED_FDS: usize = 32;

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;
    use std::os::unix::process::CommandExt;
    use std::process::Command;

    use super::*;

    #[test]
    fn descriptors_reach_the_child_at_their_numbers() {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let (ours2, theirs2) = UnixStream::pair().unwrap();
        let fds = [(theirs.as_raw_fd(), 4), (theirs2.as_raw_fd(), 3)];
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo three >&3; echo four >&4"]);
        // SAFETY: move_descriptors only makes async-signal-safe calls.
        unsafe {
            cmd.pre_exec(move || move_descriptors(&fds));
        }
        let status = cmd.status().unwrap();
        assert!(status.success());
        drop((theirs, theirs2));
        let mut text = String::new();
        (&ours).read_to_string(&mut text).unwrap();
        assert_eq!(text, "four\n");
        text.clear();
        (&ours2).read_to_string(&mut text).unwrap();
        assert_eq!(text, "three\n");
    }
}
