//! Container root filesystems for the guest: the built-in default image (busybox-static and the few
//! files a shell expects) and ext4 disk images of a directory, made by `mkfs.ext4 -d` without
//! mounting anything (so no root and no loop devices are needed).

use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};

const PASSWD: &str =
    "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n";
const GROUP: &str = "root:x:0:\nnogroup:x:65534:\n";

/// Lays out the default image in `dir` (which must be empty or absent): `/bin/busybox` from the
/// static `busybox` given, a `/bin` symlink for each of its applets, `/etc/passwd` and `/etc/group`,
/// and the usual mount points.
pub fn busybox_rootfs(dir: &Path, busybox: &Path) -> Result<()> {
    let binary =
        std::fs::read(busybox).with_context(|| format!("reading {}", busybox.display()))?;
    if crate::needs_interpreter(&binary) {
        bail!(
            "{} is dynamically linked; the default image needs busybox-static (apt-get install busybox-static)",
            busybox.display()
        );
    }
    if dir.exists() && std::fs::read_dir(dir)?.next().is_some() {
        bail!("{} is not empty", dir.display());
    }
    for sub in [
        "bin", "dev", "etc", "proc", "sys", "root", "run", "var", "mnt",
    ] {
        std::fs::create_dir_all(dir.join(sub))?;
    }
    let tmp = dir.join("tmp");
    std::fs::create_dir_all(&tmp)?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o1777))?;
    let target = dir.join("bin/busybox");
    std::fs::write(&target, &binary)?;
    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o755))?;

    let list = Command::new(busybox)
        .arg("--list")
        .output()
        .with_context(|| format!("running {} --list", busybox.display()))?;
    if !list.status.success() {
        bail!("{} --list failed", busybox.display());
    }
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        let applet = applet.trim();
        let valid = !applet.is_empty()
            && applet != "busybox"
            && applet
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.[".contains(c));
        if valid {
            symlink("busybox", dir.join("bin").join(applet))?;
        }
    }
    std::fs::write(dir.join("etc/passwd"), PASSWD)?;
    std::fs::write(dir.join("etc/group"), GROUP)?;
    std::fs::write(dir.join("etc/hostname"), "cocoon\n")?;
    Ok(())
}

/// Bytes used by the files under `dir` (symlinks not followed).
/// Bytes (in whole 4 KiB blocks) and entries under `dir`.
fn tree_size(dir: &Path) -> Result<(u64, u64)> {
    let (mut bytes, mut entries) = (0, 0);
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let entry = entry?;
        let meta = entry.path().symlink_metadata()?;
        entries += 1;
        bytes += if meta.is_dir() {
            let (b, e) = tree_size(&entry.path())?;
            entries += e;
            4096 + b
        } else {
            meta.len().max(1).div_ceil(4096) * 4096
        };
    }
    Ok((bytes, entries))
}

/// Makes an ext4 image at `out` holding the tree under `dir`, owned by root, with `free_mib` MiB
/// free beyond its contents (at least 16 MiB in all). It has an inode for every entry of the tree
/// and one per 16 KiB free (mke2fs's own ratio for larger filesystems would run out on trees of
/// many small files).
pub fn ext4_image(dir: &Path, out: &Path, free_mib: u64) -> Result<()> {
    ext4_image_sized(dir, out, free_mib).map(|_| ())
}

/// The size of an image [`ext4_image_sized`] made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ext4Size {
    pub bytes: u64,
    pub inodes: u64,
}

/// [`ext4_image`], saying how large the image is and how many inodes it has.
pub fn ext4_image_sized(dir: &Path, out: &Path, free_mib: u64) -> Result<Ext4Size> {
    let (used, entries) = tree_size(dir)?;
    let size = (used + used / 4 + (free_mib << 20) + (8 << 20)).max(16 << 20);
    let inodes = entries + entries / 4 + (size - used) / 16384 + 64;
    // A new inode, never the old one's: a VMM may still hold an image of that name open, and
    // its guest writing into the new image while mkfs and debugfs read it must not be possible.
    match std::fs::remove_file(out) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(e).with_context(|| format!("replacing {}", out.display()))
        }
        _ => {}
    }
    let file = std::fs::File::options()
        .write(true)
        .create_new(true)
        .open(out)
        .with_context(|| format!("creating {}", out.display()))?;
    file.set_len(size)?;
    drop(file);
    let result = Command::new("mkfs.ext4")
        .args([
            "-q",
            "-F",
            "-L",
            "cocoon-rootfs",
            "-E",
            "root_owner=0:0",
            "-N",
            &inodes.to_string(),
            "-d",
        ])
        .arg(dir)
        .arg(out)
        .output();
    let failure = match result {
        Ok(o) if o.status.success() => {
            return Ok(Ext4Size {
                bytes: size,
                inodes: inode_count(out)?,
            })
        }
        Ok(o) => String::from_utf8_lossy(&o.stderr).trim().to_string(),
        Err(e) => format!("{e} (apt-get install e2fsprogs)"),
    };
    let _ = std::fs::remove_file(out);
    bail!(
        "mkfs.ext4 -d {} {}: {failure}",
        dir.display(),
        out.display()
    )
}

/// The inode count of the ext4 image `image` just made (mke2fs rounds `-N` up to whole inode
/// table blocks per group): `s_inodes_count`, the first field of the superblock at byte 1024.
/// Read from an image this host made, before any guest had it.
fn inode_count(image: &Path) -> Result<u64> {
    use std::io::{Read, Seek, SeekFrom};
    let mut superblock = [0u8; 60];
    let mut file = std::fs::File::open(image)?;
    file.seek(SeekFrom::Start(1024))?;
    file.read_exact(&mut superblock)?;
    if superblock[56..58] != [0x53, 0xef] {
        bail!(
            "{} is not an ext4 image (no superblock magic)",
            image.display()
        );
    }
    Ok(u64::from(u32::from_le_bytes(
        superblock[..4].try_into().expect("4 bytes"),
    )))
}

/// Paths of everything under `dir`, relative to it, as `/a/b`.
fn tree_paths(dir: &Path, prefix: &str, out: &mut Vec<String>) -> Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let entry = entry?;
        let path = format!("{prefix}/{}", entry.file_name().to_string_lossy());
        if entry.path().symlink_metadata()?.is_dir() {
            tree_paths(&entry.path(), &path, out)?;
        }
        out.push(path);
    }
    Ok(())
}

/// Makes every file of `image` (built from `dir` by `ext4_image`) owned by root, as an image
/// built by root is: `mkfs.ext4 -d` copies the builder's uid, so an image a user builds would
/// otherwise show that user's files in the container. Uses debugfs (no mount, no root).
pub fn own_by_root(dir: &Path, image: &Path) -> Result<()> {
    let mut paths = Vec::new();
    tree_paths(dir, "", &mut paths)?;
    let mut commands = String::new();
    for path in paths.iter().filter(|p| !p.contains('"')) {
        commands.push_str(&format!("sif \"{path}\" uid 0\nsif \"{path}\" gid 0\n"));
    }
    let script = image.with_extension("debugfs");
    std::fs::write(&script, commands)?;
    let result = debugfs(image, &["-w".as_ref(), "-f".as_ref(), script.as_os_str()]);
    let _ = std::fs::remove_file(&script);
    result.with_context(|| format!("making {}'s files root's", image.display()))
}

/// Runs `debugfs ARGS IMAGE`. debugfs reports most failures on stderr with exit status 0, so
/// any stderr line beyond its banner is an error.
pub fn debugfs(image: &Path, args: &[&std::ffi::OsStr]) -> Result<()> {
    let out = Command::new("debugfs")
        .args(args)
        .arg(image)
        .output()
        .context("running debugfs (apt-get install e2fsprogs)")?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    let complaint = stderr
        .lines()
        .find(|l| !l.starts_with("debugfs ") && !l.trim().is_empty());
    if !out.status.success() || complaint.is_some() {
        bail!(
            "debugfs on {}: {}",
            image.display(),
            complaint.unwrap_or("failed")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Scratch(tempfile::TempDir);
    impl Scratch {
        fn new(tag: &str) -> Self {
            Self(
                tempfile::Builder::new()
                    .prefix(&format!("cocoon-rootfs-{tag}-"))
                    .tempdir()
                    .unwrap(),
            )
        }
        fn join(&self, p: &str) -> std::path::PathBuf {
            self.0.path().join(p)
        }
    }

    fn debugfs(image: &Path, request: &str) -> String {
        let out = Command::new("debugfs")
            .args(["-R", request])
            .arg(image)
            .output()
            .expect("debugfs (e2fsprogs) is installed by make deps");
        String::from_utf8_lossy(&out.stdout).to_string()
    }

    #[test]
    fn sized_images_report_what_mke2fs_made() {
        let s = Scratch::new("sized");
        let tree = s.join("tree");
        std::fs::create_dir_all(tree.join("d")).unwrap();
        std::fs::write(tree.join("d/f"), "x").unwrap();
        let image = s.join("sized.ext4");
        let size = ext4_image_sized(&tree, &image, 300).unwrap();
        assert_eq!(size.bytes, std::fs::metadata(&image).unwrap().len());
        let out = Command::new("dumpe2fs")
            .arg("-h")
            .arg(&image)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let reported: u64 = text
            .lines()
            .find_map(|l| l.strip_prefix("Inode count:"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert_eq!(size.inodes, reported, "{text}");
    }

    #[test]
    fn default_image_as_ext4() {
        let busybox = Path::new("/bin/busybox");
        if !busybox.exists() {
            let _ = std::io::Write::write_all(
                &mut std::io::stderr(),
                b"SKIPPED default_image_as_ext4: /bin/busybox missing (make deps installs busybox-static)\n",
            );
            return;
        }
        let s = Scratch::new("default");
        let tree = s.join("tree");
        busybox_rootfs(&tree, busybox).unwrap();
        assert_eq!(
            std::fs::read_link(tree.join("bin/sh")).unwrap(),
            Path::new("busybox")
        );
        let image = s.join("rootfs.ext4");
        ext4_image(&tree, &image, 8).unwrap();
        assert!(debugfs(&image, "cat /etc/passwd").contains("root:x:0:0:root:/root:/bin/sh"));
        let sh = debugfs(&image, "stat /bin/sh");
        assert!(
            sh.contains("Type: symlink") && sh.contains("busybox"),
            "{sh}"
        );
        let tmp = debugfs(&image, "stat /tmp");
        assert!(tmp.contains("Mode:  01777"), "{tmp}");
        let owner = debugfs(&image, "stat /bin/busybox");
        assert!(
            owner.contains("User:     0") && owner.contains("Group:     0"),
            "{owner}"
        );

        // The tree must be empty to be laid out again.
        let err = busybox_rootfs(&tree, busybox).unwrap_err();
        assert!(err.to_string().contains("not empty"), "{err}");
    }

    #[test]
    fn refuses_a_dynamic_busybox_and_reports_mkfs_errors() {
        let s = Scratch::new("errors");
        let err = busybox_rootfs(&s.join("t"), Path::new("/bin/sh")).unwrap_err();
        assert!(err.to_string().contains("busybox-static"), "{err}");
        let err = ext4_image(&s.join("missing-dir"), &s.join("x.img"), 0).unwrap_err();
        assert!(format!("{err:#}").contains("missing-dir"), "{err:#}");
        assert!(
            !s.join("x.img").exists(),
            "no half-made image is left behind"
        );
    }

    #[test]
    fn own_by_root_makes_every_file_roots() {
        let s = Scratch::new("owners");
        let tree = s.join("tree");
        std::fs::create_dir_all(tree.join("dir")).unwrap();
        std::fs::write(tree.join("dir/file"), "x").unwrap();
        // As root (CI), give the file another owner; as a user, it is the user's already.
        let _ = std::os::unix::fs::chown(tree.join("dir/file"), Some(1234), Some(1234));
        let image = s.join("img.ext4");
        ext4_image(&tree, &image, 0).unwrap();
        own_by_root(&tree, &image).unwrap();
        let out = Command::new("debugfs")
            .args(["-R", "stat /dir/file"])
            .arg(&image)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("User:     0   Group:     0"), "{text}");
    }
}
