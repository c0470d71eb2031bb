//! What `IMAGE` names: `default` (the built-in busybox image), a root filesystem directory, or a
//! Docker/OCI image archive (`docker save`'s tar: manifest.json, the image config, layer tars,
//! plain or gzipped). Each run gets its own writable copy as an ext4 disk, so a container never
//! changes the image. Archives are unpacked once and cached by path, size and modification time.

mod archive;
mod progress;

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use cocoon_common::short_hash;
use serde::{Deserialize, Serialize};

pub use archive::ImageConfig;

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
pub fn default_image() -> Result<PathBuf> {
    if let Some(prebuilt) = std::env::var_os("COCOON_DEFAULT_IMAGE") {
        return Ok(prebuilt.into());
    }
    let busybox = std::fs::read(BUSYBOX).with_context(|| {
        format!("the default image is built from {BUSYBOX}: install busybox-static (apt-get install busybox-static)")
    })?;
    let dir = cache_dir();
    let image = dir.join(format!("default-{}.ext4", short_hash(&busybox)));
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
    root_owned(&tree, &partial)?;
    std::fs::rename(&partial, &image)?;
    Ok(image)
}

/// Built by a user other than root, an image's files are that user's: they become root's, as
/// in the image they came from (an archive unpacked without root loses its owners).
fn root_owned(tree: &Path, image: &Path) -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        cocoon_guest_image::rootfs::own_by_root(tree, image)?;
    }
    Ok(())
}

/// An unpacked archive in the cache: its disk image and its config.
#[derive(Serialize, Deserialize)]
struct CachedArchive {
    config: ImageConfig,
}

/// The archive's ext4 image (built on first use) and its config.
fn archive_image(path: &Path) -> Result<(PathBuf, ImageConfig)> {
    let canonical = path.canonicalize()?;
    let meta = std::fs::metadata(&canonical)?;
    let modified = meta
        .modified()
        .ok()
        .and_then(|m| m.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let key = short_hash(format!("{}\0{}\0{modified}", canonical.display(), meta.len()).as_bytes());
    let dir = cache_dir();
    let (image, config_path) = (
        dir.join(format!("archive-{key}.ext4")),
        dir.join(format!("archive-{key}.json")),
    );
    if let (true, Ok(text)) = (image.is_file(), std::fs::read(&config_path)) {
        if let Ok(cached) = serde_json::from_slice::<CachedArchive>(&text) {
            return Ok((image, cached.config));
        }
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let scratch = tempfile::Builder::new()
        .prefix("archive-")
        .tempdir_in(&dir)?;
    let tree = scratch.path().join("rootfs");
    let config = archive::unpack(&canonical, scratch.path(), &tree)?;
    eprintln!("cocoon: making a disk image of {}", path.display());
    let partial = scratch.path().join("image.ext4");
    cocoon_guest_image::rootfs::ext4_image(&tree, &partial, FREE_MIB)?;
    root_owned(&tree, &partial)?;
    std::fs::write(
        &config_path,
        serde_json::to_vec(&CachedArchive {
            config: config.clone(),
        })?,
    )?;
    std::fs::rename(&partial, &image)?;
    Ok((image, config))
}

/// Writes this run's root disk at `out`; returns what the image says to run and how.
pub fn prepare(image: &str, out: &Path) -> Result<ImageConfig> {
    let path = Path::new(image);
    let (source, config) = if image == DEFAULT_IMAGE {
        (default_image()?, ImageConfig::default())
    } else if path.is_file() {
        archive_image(path).with_context(|| format!("image archive {image}"))?
    } else if path.is_dir() {
        if !path.join("bin").exists() && !path.join("usr").exists() {
            bail!("image directory {image} has no bin/ or usr/: it does not look like a root filesystem");
        }
        eprintln!("cocoon: making a disk image of {image}");
        cocoon_guest_image::rootfs::ext4_image(path, out, FREE_MIB).with_context(|| {
            format!("making an ext4 image of {image} (needs mkfs.ext4: apt-get install e2fsprogs)")
        })?;
        return Ok(ImageConfig::default());
    } else {
        bail!("image '{image}' is not 'default', a root filesystem directory or an image archive (docker save -o IMAGE.tar NAME)");
    };
    std::fs::copy(&source, out).with_context(|| format!("copying {}", source.display()))?;
    Ok(config)
}
