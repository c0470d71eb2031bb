//! `-v HOSTDIR:GUESTDIR[:ro|:rw]`: a host directory in the container. The guest gets an ext4
//! image of the directory on its own virtio-blk disk (read-only disks for `:ro`). For a writable
//! volume the host directory stays the source of truth: when the container has ended and its VM
//! is gone, the image's contents are copied back (files added, changed and removed), with
//! debugfs, so no mount or root is needed on the host.

use std::collections::HashSet;
use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

/// Room a writable volume has beyond what the directory holds (the image is sparse).
const WRITABLE_FREE_MIB: u64 = 256;
/// Where the agent mounts volume N before the container binds it to its place.
const GUEST_MOUNT_BASE: &str = "/run/cocoon/volumes";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Volume {
    pub host: PathBuf,
    pub guest: String,
    pub read_only: bool,
}

/// Parses one `-v`.
pub fn parse(text: &str) -> Result<Volume> {
    let usage =
        || format!("-v '{text}': use HOSTDIR:GUESTDIR, HOSTDIR:GUESTDIR:ro or HOSTDIR:GUESTDIR:rw");
    let parts: Vec<&str> = text.split(':').collect();
    let (host, guest, read_only) = match parts.as_slice() {
        [h, g] => (*h, *g, false),
        [h, g, "ro"] => (*h, *g, true),
        [h, g, "rw"] => (*h, *g, false),
        _ => bail!("{}", usage()),
    };
    if host.is_empty() || guest.is_empty() {
        bail!("{}", usage());
    }
    if !guest.starts_with('/') || guest.split('/').any(|c| c == "..") {
        bail!("-v '{text}': the container path '{guest}' must be absolute, without '..'");
    }
    if guest == "/" {
        bail!("-v '{text}': a volume cannot replace the container's root");
    }
    let host_path = Path::new(host);
    if !host_path.is_dir() {
        bail!("-v '{text}': the host directory {host} does not exist (or is not a directory)");
    }
    Ok(Volume {
        host: host_path
            .canonicalize()
            .with_context(|| format!("resolving {host}"))?,
        guest: guest.trim_end_matches('/').to_string(),
        read_only,
    })
}

impl Volume {
    /// Where the agent mounts the `index`th volume.
    pub fn guest_mount(index: usize) -> String {
        format!("{GUEST_MOUNT_BASE}/{index}")
    }

    /// Writes the volume's disk image at `image`.
    pub fn make_image(&self, image: &Path) -> Result<()> {
        let free = if self.read_only { 0 } else { WRITABLE_FREE_MIB };
        cocoon_guest_image::rootfs::ext4_image(&self.host, image, free)
            .with_context(|| format!("making an image of {}", self.host.display()))?;
        // mkfs.ext4 adds lost+found; the container should see the directory as it is.
        if !self.host.join("lost+found").exists() {
            debugfs(image, true, "rmdir lost+found")?;
        }
        Ok(())
    }

    /// Makes the host directory hold what the image holds now.
    pub fn copy_back(&self, image: &Path, scratch: &Path) -> Result<()> {
        let staging = scratch.join("volume-copy-back");
        let _ = std::fs::remove_dir_all(&staging);
        std::fs::create_dir_all(&staging)?;
        debugfs(image, false, &format!("rdump / {}", staging.display()))?;
        let result = sync_tree(&staging, &self.host);
        let _ = std::fs::remove_dir_all(&staging);
        result.with_context(|| {
            format!(
                "copying the volume back into {} (its image is kept at {})",
                self.host.display(),
                image.display()
            )
        })
    }
}

fn debugfs(image: &Path, write: bool, request: &str) -> Result<()> {
    use std::ffi::OsStr;
    let mut args: Vec<&OsStr> = Vec::new();
    if write {
        args.push(OsStr::new("-w"));
    }
    args.extend([OsStr::new("-R"), OsStr::new(request)]);
    cocoon_guest_image::rootfs::debugfs(image, &args)
        .with_context(|| format!("debugfs '{request}'"))
}

/// Makes `to` a copy of `from`: new and changed entries copied, entries `from` lacks removed.
fn sync_tree(from: &Path, to: &Path) -> Result<()> {
    let mut seen: HashSet<OsString> = HashSet::new();
    for dirent in std::fs::read_dir(from)? {
        let dirent = dirent?;
        let name = dirent.file_name();
        let source = dirent.path();
        let target = to.join(&name);
        seen.insert(name);
        let meta = source.symlink_metadata()?;
        let existing = target.symlink_metadata().ok();
        let kind_changed = existing.as_ref().is_some_and(|e| {
            e.file_type().is_dir() != meta.is_dir()
                || e.file_type().is_symlink() != meta.is_symlink()
        });
        if kind_changed {
            remove(&target)?;
        }
        if meta.is_dir() {
            if existing.is_none() || kind_changed {
                std::fs::create_dir(&target)
                    .with_context(|| format!("creating {}", target.display()))?;
            }
            sync_tree(&source, &target)?;
            std::fs::set_permissions(&target, meta.permissions())?;
        } else if meta.is_symlink() {
            let link = std::fs::read_link(&source)?;
            if std::fs::read_link(&target).ok().as_ref() != Some(&link) {
                let _ = std::fs::remove_file(&target);
                std::os::unix::fs::symlink(&link, &target)
                    .with_context(|| format!("linking {}", target.display()))?;
            }
        } else if meta.is_file() {
            let same = existing.as_ref().is_some_and(|e| e.len() == meta.len())
                && std::fs::read(&source)? == std::fs::read(&target)?;
            if !same {
                std::fs::copy(&source, &target)
                    .with_context(|| format!("copying back {}", target.display()))?;
            }
            let mode = meta.permissions().mode() & 0o7777;
            std::fs::set_permissions(&target, std::fs::Permissions::from_mode(mode))?;
        }
        // Device nodes, fifos and sockets made in the guest are not copied back.
    }
    for dirent in std::fs::read_dir(to)? {
        let dirent = dirent?;
        if !seen.contains(&dirent.file_name()) {
            remove(&dirent.path())?;
        }
    }
    Ok(())
}

fn remove(path: &Path) -> Result<()> {
    let meta = path.symlink_metadata()?;
    if meta.is_dir() {
        std::fs::remove_dir_all(path)
    } else {
        std::fs::remove_file(path)
    }
    .with_context(|| format!("removing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parsing() {
        let dir = tempfile::tempdir().unwrap();
        let host = dir.path().display().to_string();
        let v = parse(&format!("{host}:/data:ro")).unwrap();
        assert_eq!((v.guest.as_str(), v.read_only), ("/data", true), "{v:?}");
        assert!(!parse(&format!("{host}:/data/")).unwrap().read_only);
        for bad in [
            "nocolon".to_string(),
            format!("{host}:relative"),
            format!("{host}:/data:rx"),
            format!("{host}:/"),
            format!("{host}:/a/../b"),
            "/does/not/exist:/data".to_string(),
            format!("{host}:/data:ro:extra"),
        ] {
            let err = parse(&bad).err().map(|e| e.to_string());
            assert!(
                err.as_deref().is_some_and(|e| e.starts_with("-v '")),
                "{bad}: {err:?}"
            );
        }
    }

    #[test]
    fn sync_adds_changes_and_removes() {
        let tmp = tempfile::tempdir().unwrap();
        let (from, to) = (tmp.path().join("from"), tmp.path().join("to"));
        std::fs::create_dir_all(from.join("sub")).unwrap();
        std::fs::create_dir_all(to.join("gone-dir")).unwrap();
        std::fs::write(from.join("kept"), "new").unwrap();
        std::fs::write(to.join("kept"), "old").unwrap();
        std::fs::write(from.join("sub/added"), "x").unwrap();
        std::fs::write(to.join("removed"), "y").unwrap();
        std::fs::write(to.join("sub"), "was a file").unwrap();
        std::os::unix::fs::symlink("kept", from.join("link")).unwrap();
        sync_tree(&from, &to).unwrap();
        assert_eq!(std::fs::read_to_string(to.join("kept")).unwrap(), "new");
        assert_eq!(std::fs::read_to_string(to.join("sub/added")).unwrap(), "x");
        assert_eq!(
            std::fs::read_link(to.join("link")).unwrap(),
            Path::new("kept")
        );
        assert!(!to.join("removed").exists() && !to.join("gone-dir").exists());
    }

    #[test]
    fn an_image_round_trips_to_the_host_directory() {
        if std::process::Command::new("debugfs")
            .arg("-V")
            .output()
            .is_err()
        {
            eprintln!("skipped: no debugfs here (apt-get install e2fsprogs)");
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let host = tmp.path().join("data");
        std::fs::create_dir_all(host.join("d")).unwrap();
        std::fs::write(host.join("d/file"), "contents").unwrap();
        let volume = parse(&format!("{}:/data", host.display())).unwrap();
        let image = tmp.path().join("vol.ext4");
        volume.make_image(&image).unwrap();
        // What the guest would do: write a file; here with debugfs.
        std::fs::write(tmp.path().join("new"), "from the guest").unwrap();
        debugfs(
            &image,
            true,
            &format!("write {} new", tmp.path().join("new").display()),
        )
        .unwrap();
        debugfs(&image, true, "rm d/file").unwrap();
        volume.copy_back(&image, tmp.path()).unwrap();
        assert_eq!(
            std::fs::read_to_string(host.join("new")).unwrap(),
            "from the guest"
        );
        assert!(!host.join("d/file").exists());
        assert!(host.join("d").is_dir());
        assert!(!host.join("lost+found").exists());
    }
}
