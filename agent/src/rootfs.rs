//! Containers' root filesystems from the VM's disks: one disk mounted whole, or an image's layers
//! (a read-only disk several containers may share, mounted once) joined by overlayfs with the
//! container's own writable disk.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use cocoon_common::lock;
use cocoon_protocol::{AgentError, ErrorKind, Rootfs};
use nix::mount::{mount, umount2, MntFlags, MsFlags};

use crate::errors::error;
use crate::sys_files::read_u64;

/// How long a disk attached while the VM runs may take to show its size.
const MEDIA_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an unmount may wait for the last users of a filesystem (processes just killed).
const BUSY_TIMEOUT: Duration = Duration::from_secs(2);

/// Unmounts `target`, waiting a moment for its last users; if it stays busy, detaches it lazily
/// and says so (its filesystem lives on until they are gone). Not mounted: fine.
fn unmount(target: &Path) -> Result<(), AgentError> {
    let deadline = Instant::now() + BUSY_TIMEOUT;
    loop {
        match umount2(target, MntFlags::empty()) {
            Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {
                return Ok(())
            }
            Err(nix::errno::Errno::EBUSY) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => {
                let _ = umount2(target, MntFlags::MNT_DETACH);
                return Err(error(
                    ErrorKind::FailedPrecondition,
                    format!(
                        "{} is still in use ({e}); detached, its disk must not be reused",
                        target.display()
                    ),
                ));
            }
        }
    }
}

/// A disk slot filled while the VM runs reaches the guest as a resize of an empty disk, handled by
/// the kernel a moment after the host attached it: waits for `/sys/block/<disk>/size` to be
/// non-zero.
fn wait_for_media(device: &str) -> Result<(), AgentError> {
    if !Path::new(device).exists() {
        return Err(error(
            ErrorKind::NotFound,
            format!(
                "rootfs device {device} does not exist in the guest (attach the disk to the VM)"
            ),
        ));
    }
    let Some(name) = device.strip_prefix("/dev/") else {
        return Ok(());
    };
    let size = Path::new("/sys/block").join(name).join("size");
    if !size.exists() {
        return Ok(()); // not a whole disk (a partition, a loop device): nothing to wait for
    }
    let sectors = || read_u64(&size).unwrap_or(0);
    let deadline = Instant::now() + MEDIA_TIMEOUT;
    while sectors() == 0 {
        if Instant::now() > deadline {
            return Err(error(
                ErrorKind::FailedPrecondition,
                format!(
                    "rootfs device {device} is empty: no disk image was attached to it within {}s",
                    MEDIA_TIMEOUT.as_secs()
                ),
            ));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}

/// Mounts the filesystem on `device` at `target`.
fn mount_disk(
    device: &str,
    target: &Path,
    fstype: &str,
    read_only: bool,
    data: Option<&str>,
) -> Result<(), AgentError> {
    wait_for_media(device)?;
    fs::create_dir_all(target).map_err(|e| {
        error(
            ErrorKind::Internal,
            format!("creating {}: {e}", target.display()),
        )
    })?;
    let mut flags = MsFlags::MS_NODEV;
    if read_only {
        flags |= MsFlags::MS_RDONLY;
    }
    mount(Some(device), target, Some(fstype), flags, data).map_err(|e| {
        error(
            ErrorKind::InvalidArgument,
            format!("mounting the rootfs disk {device} ({fstype}): {e}"),
        )
    })
}

/// The read-only layer disks mounted in the guest, each once however many containers use it.
pub struct Layers {
    /// Where they are mounted: `<dir>/<disk name>`.
    dir: PathBuf,
    /// Device → containers using it.
    users: Mutex<HashMap<String, usize>>,
}

impl Layers {
    pub fn new(dir: PathBuf) -> Self {
        Self {
            dir,
            users: Mutex::new(HashMap::new()),
        }
    }

    fn mount_point(&self, device: &str) -> PathBuf {
        self.dir
            .join(device.trim_start_matches("/dev/").replace('/', "_"))
    }

    /// The mount of `device`, mounted now if no container uses it yet.
    fn take(&self, device: &str) -> Result<PathBuf, AgentError> {
        // A disk just attached to a slot may take a moment to show its size: wait before taking
        // the lock, so other containers' mounts and unmounts are not held up meanwhile.
        wait_for_media(device)?;
        let mut users = lock(&self.users);
        let at = self.mount_point(device);
        if !users.contains_key(device) {
            // `noload`: a read-only image has no journal to replay, and must not be written.
            mount_disk(device, &at, "ext4", true, Some("noload"))?;
        }
        *users.entry(device.to_string()).or_default() += 1;
        Ok(at)
    }

    /// One container fewer uses `device`; unmounted when none does (the host may then detach it).
    fn give_back(&self, device: &str) -> Result<(), AgentError> {
        let mut users = lock(&self.users);
        let Some(count) = users.get_mut(device) else {
            return Ok(());
        };
        *count -= 1;
        if *count > 0 {
            return Ok(());
        }
        users.remove(device);
        let at = self.mount_point(device);
        unmount(&at)?;
        let _ = fs::remove_dir(&at);
        Ok(())
    }

    /// Mounts `rootfs` at the bundle's `rootfs`; returns the layer disk it took, to give back with
    /// [`Self::release`].
    pub fn mount(&self, rootfs: &Rootfs, bundle: &Path) -> Result<Option<String>, AgentError> {
        let target = bundle.join("rootfs");
        match rootfs {
            Rootfs::BlockDevice {
                device,
                fstype,
                read_only,
            } => mount_disk(device, &target, fstype, *read_only, None).map(|()| None),
            Rootfs::Overlay { lower, upper } => {
                let lower_dir = self.take(lower)?;
                let result = (|| {
                    let upper_dir = bundle.join("upper");
                    mount_disk(upper, &upper_dir, "ext4", false, None)?;
                    let data = format!(
                        "lowerdir={},upperdir={},workdir={}",
                        lower_dir.display(),
                        upper_dir.join("upper").display(),
                        upper_dir.join("work").display()
                    );
                    fs::create_dir_all(&target).map_err(|e| {
                        error(ErrorKind::Internal, format!("creating the rootfs: {e}"))
                    })?;
                    mount(
                        Some("overlay"),
                        &target,
                        Some("overlay"),
                        MsFlags::MS_NODEV,
                        Some(data.as_str()),
                    )
                    .map_err(|e| {
                        error(
                            ErrorKind::InvalidArgument,
                            format!("joining layers {lower} and {upper} with overlayfs: {e}"),
                        )
                    })
                })();
                match result {
                    Ok(()) => Ok(Some(lower.clone())),
                    Err(e) => {
                        let _ = unmount(&bundle.join("upper"));
                        let _ = self.give_back(lower);
                        Err(e)
                    }
                }
            }
        }
    }

    /// Unmounts what [`Self::mount`] mounted in `bundle` and gives back its layer disk. An error:
    /// something still held one of them (the first such is said; all are detached anyway).
    pub fn release(&self, bundle: &Path, lower: Option<&str>) -> Result<(), AgentError> {
        let root = unmount(&bundle.join("rootfs"));
        let upper = unmount(&bundle.join("upper"));
        let layer = lower.map_or(Ok(()), |lower| self.give_back(lower));
        root.and(upper).and(layer)
    }
}
