//! A container's root as disks for the guest, from the mounts containerd passes.
//!
//! The usual case, an overlay of the image's snapshot layers over an empty writable directory,
//! becomes two disks: the layers as one read-only ext4 image, made once and kept in the layer cache
//! by the layers' identity (every container of that image shares it, in any VM), and a small empty
//! writable ext4 for the container's changes; the guest joins them with overlayfs. Anything else
//! (a bind of a prepared directory, an overlay whose writable layer already holds files) is
//! mounted on the host and copied whole into one writable disk.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::binds::{self, FileBind};
use nix::mount::{mount, umount2, MntFlags, MsFlags};

/// Free room in the container's writable root.
const FREE_MIB: u64 = 256;

/// One mount as containerd describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RootMount {
    pub fstype: String,
    pub source: String,
    pub options: Vec<String>,
}

/// Flags and data for mount(2) from fstab-style options.
fn flags_and_data(options: &[String]) -> (MsFlags, String) {
    let mut flags = MsFlags::empty();
    let mut data = Vec::new();
    for option in options {
        match option.as_str() {
            "ro" => flags |= MsFlags::MS_RDONLY,
            "rw" | "defaults" => {}
            "bind" => flags |= MsFlags::MS_BIND,
            "rbind" => flags |= MsFlags::MS_BIND | MsFlags::MS_REC,
            "nosuid" => flags |= MsFlags::MS_NOSUID,
            "nodev" => flags |= MsFlags::MS_NODEV,
            "noexec" => flags |= MsFlags::MS_NOEXEC,
            other => data.push(other),
        }
    }
    (flags, data.join(","))
}

/// Room for the image's files in its layer disk (the layers are never written).
const LAYER_FREE_MIB: u64 = 0;

/// The disks of a container's root.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RootDisks {
    /// Everything copied into one writable disk.
    Whole(PathBuf),
    /// The image's layers in a cached read-only disk; the container's writes in `upper`, which
    /// holds `upper/` and `work/` for overlayfs.
    Layered { lower: PathBuf, upper: PathBuf },
}

/// containerd's overlay of image layers over an empty writable directory: the layers, top first.
fn image_layers(mounts: &[RootMount]) -> Option<Vec<PathBuf>> {
    let [m] = mounts else {
        return None;
    };
    if m.fstype != "overlay" {
        return None;
    }
    let option = |key: &str| m.options.iter().find_map(|o| o.strip_prefix(key));
    let upper = option("upperdir=")?;
    if std::fs::read_dir(upper).ok()?.next().is_some() {
        return None; // it holds changes already: copied along with the rest
    }
    Some(option("lowerdir=")?.split(':').map(PathBuf::from).collect())
}

/// Makes the disks of a container's root in `dir` (the layer disk in `layer_cache`), with the
/// host files and directories the spec binds copied in; returns them and the binds copied (a root
/// copied whole takes files only).
pub fn prepare(
    mounts: &[RootMount],
    bundle: &Path,
    dir: &Path,
    layer_cache: &Path,
    host_binds: &[FileBind],
) -> Result<(RootDisks, Vec<FileBind>)> {
    if let Some(layers) = image_layers(mounts) {
        let lower = cached_layers(&layers, layer_cache)?;
        let upper = dir.join("upper.ext4");
        let tree = dir.join("upper-tree");
        let made = (|| {
            std::fs::create_dir_all(tree.join("upper"))?;
            std::fs::create_dir_all(tree.join("work"))?;
            binds::place_in_tree(&tree.join("upper"), host_binds, &layers)?;
            cocoon_guest_image::rootfs::ext4_image(&tree, &upper, FREE_MIB)
        })();
        let _ = std::fs::remove_dir_all(&tree);
        made?;
        return Ok((RootDisks::Layered { lower, upper }, host_binds.to_vec()));
    }
    let disk = dir.join("rootfs.ext4");
    make_disk(mounts, bundle, &disk)?;
    let files: Vec<FileBind> = host_binds
        .iter()
        .filter(|b| !b.directory)
        .cloned()
        .collect();
    binds::copy_into(&disk, &files, dir)?;
    Ok((RootDisks::Whole(disk), files))
}

/// The read-only disk of `layers` (top first): made once, then found in `cache` by the layers'
/// identity (path, inode and change time of each: a committed snapshot never changes). Next to it,
/// `<name>.layers` lists the layers, so disks whose layers containerd removed are pruned.
fn cached_layers(layers: &[PathBuf], cache: &Path) -> Result<PathBuf> {
    use sha2::Digest;
    let mut key = sha2::Sha256::new();
    for layer in layers {
        let meta = std::fs::metadata(layer)
            .with_context(|| format!("the image layer {}", layer.display()))?;
        key.update(layer.as_os_str().as_encoded_bytes());
        key.update(format!(
            ":{}:{}.{};",
            meta.ino(),
            meta.ctime(),
            meta.ctime_nsec()
        ));
    }
    let name: String = key.finalize()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let disk = cache.join(format!("{name}.ext4"));
    if disk.exists() {
        return Ok(disk);
    }
    std::fs::create_dir_all(cache)
        .with_context(|| format!("creating the layer cache {}", cache.display()))?;
    prune(cache);
    // Built aside and renamed into place: a disk in the cache is always whole.
    let pid = std::process::id();
    let building = cache.join(format!(".{name}.{pid}.ext4"));
    let made = if let [single] = layers {
        cocoon_guest_image::rootfs::ext4_image(single, &building, LAYER_FREE_MIB)
    } else {
        let merged = cache.join(format!(".{name}.{pid}.mnt"));
        std::fs::create_dir_all(&merged)?;
        let lowerdir: Vec<String> = layers.iter().map(|l| l.display().to_string()).collect();
        let made = mount(
            Some("overlay"),
            &merged,
            Some("overlay"),
            MsFlags::MS_RDONLY,
            Some(format!("lowerdir={}", lowerdir.join(":")).as_str()),
        )
        .context("mounting the image's layers")
        .and_then(|()| {
            let made = cocoon_guest_image::rootfs::ext4_image(&merged, &building, LAYER_FREE_MIB);
            let _ = umount2(&merged, MntFlags::MNT_DETACH);
            made
        });
        let _ = std::fs::remove_dir(&merged);
        made
    };
    if let Err(e) = made {
        let _ = std::fs::remove_file(&building);
        return Err(e);
    }
    // The listing first, renamed into place too: a pruner never reads half of one, and a disk in
    // the cache always has its listing.
    let listing: String = layers
        .iter()
        .map(|l| format!("{}\n", l.display()))
        .collect();
    let listing_building = cache.join(format!(".{name}.{pid}.layers"));
    std::fs::write(&listing_building, listing)?;
    std::fs::rename(&listing_building, cache.join(format!("{name}.layers")))?;
    std::fs::rename(&building, &disk)?;
    Ok(disk)
}

/// Removes cached layer disks whose layers are gone (a VMM using one keeps its open file), and
/// what a shim that died while building one left (`.<name>.<pid>.*` of a pid no longer running).
fn prune(cache: &Path) {
    for entry in std::fs::read_dir(cache).into_iter().flatten().flatten() {
        let path = entry.path();
        let file_name = entry.file_name().to_string_lossy().into_owned();
        if let Some(pid) = file_name
            .strip_prefix('.')
            .and_then(|n| n.split('.').nth(1))
        {
            if pid.parse::<u32>().is_ok() && !Path::new("/proc").join(pid).exists() {
                let _ = umount2(&path, MntFlags::MNT_DETACH);
                let _ = std::fs::remove_dir(&path);
                let _ = std::fs::remove_file(&path);
            }
            continue;
        }
        if path.extension().is_none_or(|e| e != "layers") {
            continue;
        }
        let listing = std::fs::read_to_string(&path).unwrap_or_default();
        if listing.lines().any(|l| !Path::new(l).exists()) {
            let _ = std::fs::remove_file(path.with_extension("ext4"));
            let _ = std::fs::remove_file(&path);
        }
    }
}

/// Writes the root disk at `image` from `mounts` (empty: the bundle's `rootfs` directory is the
/// root already).
pub fn make_disk(mounts: &[RootMount], bundle: &Path, image: &Path) -> Result<()> {
    let rootfs = bundle.join("rootfs");
    if mounts.is_empty() {
        if !rootfs.is_dir() {
            bail!("no rootfs mounts and no {} directory", rootfs.display());
        }
        return cocoon_guest_image::rootfs::ext4_image(&rootfs, image, FREE_MIB);
    }
    if mounts.len() > 1 {
        bail!(
            "{} rootfs mounts: cocoon takes one (an overlay or a bind)",
            mounts.len()
        );
    }
    let m = &mounts[0];
    std::fs::create_dir_all(&rootfs)?;
    let (flags, data) = flags_and_data(&m.options);
    mount(
        Some(m.source.as_str()),
        &rootfs,
        Some(m.fstype.as_str()),
        flags,
        (!data.is_empty()).then_some(data.as_str()),
    )
    .with_context(|| format!("mounting the {} rootfs on {}", m.fstype, rootfs.display()))?;
    let made = cocoon_guest_image::rootfs::ext4_image(&rootfs, image, FREE_MIB);
    let unmounted = umount2(&rootfs, MntFlags::MNT_DETACH)
        .with_context(|| format!("unmounting {}", rootfs.display()));
    made?;
    unmounted?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_split_into_flags_and_data() {
        let (flags, data) =
            flags_and_data(&["ro".into(), "index=off".into(), "lowerdir=/a:/b".into()]);
        assert!(flags.contains(MsFlags::MS_RDONLY));
        assert_eq!(data, "index=off,lowerdir=/a:/b");
        let (flags, data) = flags_and_data(&["rbind".into(), "rw".into()]);
        assert!(flags.contains(MsFlags::MS_BIND | MsFlags::MS_REC));
        assert!(data.is_empty());
    }

    fn overlay(lower: &[&Path], upper: &Path) -> RootMount {
        let lowers: Vec<String> = lower.iter().map(|l| l.display().to_string()).collect();
        RootMount {
            fstype: "overlay".into(),
            source: "overlay".into(),
            options: vec![
                "index=off".into(),
                format!("workdir={}", upper.with_extension("work").display()),
                format!("upperdir={}", upper.display()),
                format!("lowerdir={}", lowers.join(":")),
            ],
        }
    }

    fn listing(image: &Path, dir: &str) -> String {
        let out = std::process::Command::new("debugfs")
            .args(["-R", &format!("ls {dir}")])
            .arg(image)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    #[test]
    fn image_layers_become_a_cached_shared_disk_and_an_empty_writable_one() {
        let tmp = tempfile::tempdir().unwrap();
        let (layer, upper, cache) = (
            tmp.path().join("snapshots/1/fs"),
            tmp.path().join("snapshots/2/fs"),
            tmp.path().join("cache"),
        );
        std::fs::create_dir_all(layer.join("bin")).unwrap();
        std::fs::write(layer.join("bin/tool"), "tool").unwrap();
        std::fs::create_dir_all(&upper).unwrap();
        let mounts = [overlay(&[&layer], &upper)];
        assert_eq!(image_layers(&mounts), Some(vec![layer.clone()]));

        let first = tmp.path().join("c1");
        std::fs::create_dir_all(&first).unwrap();
        let (disks, _) = prepare(&mounts, &first, &first, &cache, &[]).unwrap();
        let RootDisks::Layered { lower, upper: own } = &disks else {
            panic!("{disks:?}");
        };
        assert!(lower.starts_with(&cache) && listing(lower, "/bin").contains("tool"));
        let writable = listing(own, "/");
        assert!(
            writable.contains("upper") && writable.contains("work"),
            "{writable}"
        );

        // A second container of the image shares the layer disk as it is.
        let built = lower.metadata().unwrap().modified().unwrap();
        let second = tmp.path().join("c2");
        std::fs::create_dir_all(&second).unwrap();
        let (again, _) = prepare(&mounts, &second, &second, &cache, &[]).unwrap();
        let RootDisks::Layered { lower: shared, .. } = &again else {
            panic!("{again:?}");
        };
        assert_eq!(shared, lower);
        assert_eq!(shared.metadata().unwrap().modified().unwrap(), built);

        // Changes in the writable directory already: copied whole instead.
        std::fs::write(upper.join("changed"), "x").unwrap();
        assert_eq!(image_layers(&mounts), None);
        std::fs::remove_file(upper.join("changed")).unwrap();

        // The image is removed: its disk goes at the next build.
        std::fs::remove_dir_all(&layer).unwrap();
        let other = tmp.path().join("snapshots/3/fs");
        std::fs::create_dir_all(&other).unwrap();
        // What a builder that died left (no process 4000000 runs here).
        let stale = cache.join(".deadbeef.4000000.ext4");
        std::fs::write(&stale, "half").unwrap();
        cached_layers(&[other], &cache).unwrap();
        assert!(!lower.exists(), "pruned");
        assert!(!stale.exists(), "a dead builder's leftovers pruned");
    }

    #[test]
    fn a_bundle_directory_or_an_overlay_becomes_a_disk() {
        let tmp = tempfile::tempdir().unwrap();
        let bundle = tmp.path();
        std::fs::create_dir_all(bundle.join("rootfs/bin")).unwrap();
        std::fs::write(bundle.join("rootfs/bin/x"), "x").unwrap();
        make_disk(&[], bundle, &bundle.join("a.ext4")).unwrap();
        assert!(bundle.join("a.ext4").metadata().unwrap().len() > 0);

        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped the overlay half: mounting needs root");
            return;
        }
        let (lower, upper, work) = (bundle.join("l"), bundle.join("u"), bundle.join("w"));
        for d in [&lower, &upper, &work] {
            std::fs::create_dir_all(d).unwrap();
        }
        std::fs::write(lower.join("from-lower"), "l").unwrap();
        let overlay = RootMount {
            fstype: "overlay".into(),
            source: "overlay".into(),
            options: vec![
                format!("workdir={}", work.display()),
                format!("upperdir={}", upper.display()),
                format!("lowerdir={}", lower.display()),
            ],
        };
        let other = tmp.path().join("b2");
        std::fs::create_dir_all(&other).unwrap();
        make_disk(&[overlay], &other, &other.join("b.ext4")).unwrap();
        let listing = std::process::Command::new("debugfs")
            .args(["-R", "ls /"])
            .arg(other.join("b.ext4"))
            .output()
            .unwrap();
        assert!(String::from_utf8_lossy(&listing.stdout).contains("from-lower"));
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(
            !mounts.contains(&other.join("rootfs").display().to_string()),
            "unmounted again"
        );
    }
}
