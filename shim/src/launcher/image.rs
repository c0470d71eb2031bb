//! What `IMAGE` names: `default` (the built-in busybox image) or a root filesystem directory. Each
//! run gets its own writable copy as an ext4 disk, so a container never changes the image.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

/// The built-in image's name on the command line.
pub const DEFAULT_IMAGE: &str = "default";
const BUSYBOX: &str = "/bin/busybox";
/// Room left free in a container's root filesystem.
const FREE_MIB: u64 = 64;

fn cache_dir() -> PathBuf {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir)
        .join("cocoon/images")
}

/// The built-in image, built once from this host's busybox-static and cached by its hash.
/// `COCOON_DEFAULT_IMAGE` points at a prebuilt one instead.
fn default_image() -> Result<PathBuf> {
    if let Some(prebuilt) = std::env::var_os("COCOON_DEFAULT_IMAGE") {
        return Ok(prebuilt.into());
    }
    let busybox = std::fs::read(BUSYBOX).with_context(|| {
        format!("the default image is built from {BUSYBOX}: install busybox-static (apt-get install busybox-static)")
    })?;
    let key: String = Sha256::digest(&busybox)
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect();
    let dir = cache_dir();
    let image = dir.join(format!("default-{key}.ext4"));
    if image.is_file() {
        return Ok(image);
    }
    eprintln!(
        "cocoon: building the default image (busybox) in {}",
        dir.display()
    );
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let scratch = tempfile::Builder::new()
        .prefix("default-")
        .tempdir_in(&dir)?;
    let tree = scratch.path().join("rootfs");
    let partial = scratch.path().join("image.ext4");
    cocoon_guest_image::rootfs::busybox_rootfs(&tree, Path::new(BUSYBOX))?;
    cocoon_guest_image::rootfs::ext4_image(&tree, &partial, 0)?;
    std::fs::rename(&partial, &image)?;
    Ok(image)
}

/// Writes this run's root disk at `out`.
pub fn prepare(image: &str, out: &Path) -> Result<()> {
    if image == DEFAULT_IMAGE {
        let source = default_image()?;
        std::fs::copy(&source, out)
            .with_context(|| format!("copying the default image {}", source.display()))?;
        return Ok(());
    }
    let dir = Path::new(image);
    if !dir.is_dir() {
        bail!("image '{image}' is neither 'default' nor a root filesystem directory (give a directory holding the container's files, or 'default')");
    }
    if !dir.join("bin").exists() && !dir.join("usr").exists() {
        bail!(
            "image directory {image} has no bin/ or usr/: it does not look like a root filesystem"
        );
    }
    eprintln!("cocoon: making a disk image of {image}");
    cocoon_guest_image::rootfs::ext4_image(dir, out, FREE_MIB).with_context(|| {
        format!("making an ext4 image of {image} (needs mkfs.ext4: apt-get install e2fsprogs)")
    })
}
