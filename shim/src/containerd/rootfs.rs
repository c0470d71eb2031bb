//! A container's root disk from the mounts containerd passes (an overlay of the image's snapshot
//! layers, or a bind of a prepared directory): mounted on the host, copied into an ext4 image the
//! guest gets as a virtio-blk disk, unmounted again.
//!
//! This copies the image's files on every create; caching the read-only layers as disks of their
//! own and assembling the overlay in the guest is the next step.

use std::path::Path;

use anyhow::{bail, Context, Result};
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

    #[test]
    fn a_bundle_directory_or_an_overlay_becomes_a_disk() {
        let tmp = tempfile::tempdir().unwrap();
        let bundle = tmp.path();
        std::fs::create_dir_all(bundle.join("rootfs/bin")).unwrap();
        std::fs::write(bundle.join("rootfs/bin/x"), "x").unwrap();
        make_disk(&[], bundle, &bundle.join("a.ext4")).unwrap();
        assert!(bundle.join("a.ext4").metadata().unwrap().len() > 0);

        // SAFETY: geteuid(2) cannot fail.
        if unsafe { libc::geteuid() } != 0 {
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
