//! Work inside another network namespace: on a thread of its own, so the rest of the process
//! stays where it is (a network namespace belongs to a thread; sockets and taps made there stay
//! in it after the thread ends).

use std::path::Path;

use nix::sched::{setns, CloneFlags};

use super::PodNetworkError;

/// Runs `work` on a new thread that has entered the network namespace at `path`.
pub fn in_netns<T: Send + 'static>(
    path: &Path,
    work: impl FnOnce() -> Result<T, PodNetworkError> + Send + 'static,
) -> Result<T, PodNetworkError> {
    let netns_error = |source| PodNetworkError::Netns {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path)
        .map_err(|e| netns_error(nix::Error::from_raw(e.raw_os_error().unwrap_or(libc::EIO))))?;
    let thread = std::thread::spawn(move || {
        setns(&file, CloneFlags::CLONE_NEWNET)?;
        Ok(work())
    });
    match thread.join() {
        Ok(Ok(result)) => result,
        Ok(Err(entering)) => Err(netns_error(entering)),
        Err(_) => Err(PodNetworkError::Panicked),
    }
}
