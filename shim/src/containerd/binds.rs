//! Host files and directories a container's spec bind-mounts (CRI's `/etc/hosts`,
//! `/etc/resolv.conf`, `/etc/hostname`; Kubernetes volumes; `ctr run --mount`) cannot be mounted
//! across the VM boundary: they are copied into the container's writable disk at their destination
//! when it is made, so the container sees them as they were at create (writes stay inside the VM).
//! A root on an image's layers takes files and directories (placed in the writable layer's tree
//! before its filesystem is made); a root copied whole takes files (written into its disk with
//! debugfs).

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use oci_spec::runtime::Mount;

/// Larger files are not copied (these are configuration files, not data).
const MAX_FILE_BYTES: u64 = 1 << 20;
/// Larger directory trees are not copied (configuration, secrets, small volumes).
const MAX_DIR_BYTES: u64 = 64 << 20;

/// A host file or directory to place in the root.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileBind {
    pub source: PathBuf,
    pub destination: String,
    pub directory: bool,
}

/// True for a bind the spec makes read-only (`ro` among its options).
pub fn is_read_only(mount: &Mount) -> bool {
    mount.options().iter().flatten().any(|o| o == "ro")
}

/// The mount that keeps a read-only bind read-only once its source is a copy in the root: the
/// guest binds the copy over itself with `ro` (the source is relative to the container's bundle
/// in the guest, where the root is mounted at `rootfs`).
pub fn read_only_over_copy(bind: &FileBind) -> Mount {
    let mut mount = Mount::default();
    mount
        .set_destination(PathBuf::from(&bind.destination))
        .set_typ(Some("bind".into()))
        .set_source(Some(PathBuf::from(format!("rootfs{}", bind.destination))))
        .set_options(Some(vec!["rbind".into(), "ro".into()]));
    mount
}

/// Bytes of the regular files under `dir`; an error for what cannot be copied (devices,
/// sockets, FIFOs).
fn tree_bytes(dir: &Path) -> Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        let meta = path.symlink_metadata()?;
        let kind = meta.file_type();
        if kind.is_dir() {
            total += tree_bytes(&path)?;
        } else if kind.is_file() {
            total += meta.len();
        } else if !kind.is_symlink() {
            bail!(
                "{} is a device, socket or FIFO: a directory bound into the microVM is copied, and those cannot be",
                path.display()
            );
        }
    }
    Ok(total)
}

/// The host file or directory `mount` binds in, if it is one this module can copy; why not
/// otherwise.
fn file_bind(mount: &Mount) -> Result<Option<FileBind>> {
    if !cocoon_protocol::mounts::is_bind(mount) {
        return Ok(None);
    }
    let Some(source) = mount.source() else {
        return Ok(None);
    };
    let destination = mount.destination().to_string_lossy().to_string();
    if !destination.starts_with('/')
        || destination.contains(['"', '\n', '\\'])
        || destination.split('/').any(|c| c == "..")
    {
        bail!("the bind destination {destination:?} is not a plain absolute path");
    }
    let meta = std::fs::metadata(source)
        .with_context(|| format!("the bind source {}", source.display()))?;
    let (bytes, limit) = if meta.is_dir() {
        (tree_bytes(source)?, MAX_DIR_BYTES)
    } else if meta.is_file() {
        (meta.len(), MAX_FILE_BYTES)
    } else {
        return Ok(None);
    };
    if bytes > limit {
        bail!(
            "the bind source {} holds {bytes} bytes; host {} over {limit} bytes are not copied into the microVM",
            source.display(),
            if meta.is_dir() { "directories" } else { "files" }
        );
    }
    Ok(Some(FileBind {
        source: source.clone(),
        destination,
        directory: meta.is_dir(),
    }))
}

/// The host files and directories among `mounts` (the spec's mounts the guest cannot make by
/// itself).
pub fn file_binds(mounts: &[Mount]) -> Result<Vec<FileBind>> {
    let mut binds = Vec::new();
    for mount in mounts {
        if let Some(bind) = file_bind(mount)? {
            binds.push(bind);
        }
    }
    Ok(binds)
}

/// Copies the tree at `from` to `to` (made), keeping modes, owners and symlinks.
fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    copy_owner_and_mode(from, to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        let kind = src.symlink_metadata()?.file_type();
        if kind.is_dir() {
            copy_tree(&src, &dst)?;
        } else if kind.is_symlink() {
            let _ = std::fs::remove_file(&dst);
            std::os::unix::fs::symlink(std::fs::read_link(&src)?, &dst)?;
            let meta = src.symlink_metadata()?;
            std::os::unix::fs::lchown(&dst, Some(meta.uid()), Some(meta.gid()))?;
        } else {
            std::fs::copy(&src, &dst)?;
            copy_owner_and_mode(&src, &dst)?;
        }
    }
    Ok(())
}

fn copy_owner_and_mode(from: &Path, to: &Path) -> Result<()> {
    let meta = from.metadata()?;
    std::os::unix::fs::chown(to, Some(meta.uid()), Some(meta.gid()))?;
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(meta.mode() & 0o7777))?;
    Ok(())
}

/// Marks `dir` opaque for overlayfs: the image's files at that path stay hidden, as under a
/// bind mount.
fn make_opaque(dir: &Path) -> Result<()> {
    let path = CString::new(dir.as_os_str().as_bytes())?;
    // SAFETY: lsetxattr(2) with NUL-terminated name and path and a 1-byte value that outlive the
    // call.
    let set = unsafe {
        libc::lsetxattr(
            path.as_ptr(),
            c"trusted.overlay.opaque".as_ptr(),
            b"y".as_ptr().cast(),
            1,
            0,
        )
    };
    if set != 0 {
        bail!(
            "marking {} opaque for overlayfs: {}",
            dir.display(),
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

/// Places `binds` in `tree`, the tree a writable layer is made from (its `/` is the container's),
/// before its filesystem is made. Directories made on the way take the mode and owner the image's
/// `layers` (top first) give them, so `/tmp` stays 1777; a bound directory hides what the image has
/// at its place.
pub fn place_in_tree(tree: &Path, binds: &[FileBind], layers: &[PathBuf]) -> Result<()> {
    for bind in binds {
        let relative = Path::new(bind.destination.trim_start_matches('/'));
        let mut so_far = PathBuf::new();
        for component in relative.parent().into_iter().flat_map(Path::components) {
            so_far.push(component);
            let here = tree.join(&so_far);
            if here.exists() {
                continue;
            }
            std::fs::create_dir(&here)?;
            if let Some(image_dir) = layers
                .iter()
                .map(|l| l.join(&so_far))
                .find(|p| p.symlink_metadata().is_ok_and(|m| m.is_dir()))
            {
                copy_owner_and_mode(&image_dir, &here)?;
            }
        }
        let target = tree.join(relative);
        if bind.directory {
            copy_tree(&bind.source, &target)
                .with_context(|| format!("copying {}", bind.source.display()))?;
            make_opaque(&target)?;
        } else {
            std::fs::copy(&bind.source, &target)
                .with_context(|| format!("copying {}", bind.source.display()))?;
        }
    }
    Ok(())
}

/// Copies `binds` into the ext4 image `image` (not mounted), replacing what is at each
/// destination and making missing parent directories; `scratch` holds the copies meanwhile.
pub fn copy_into(image: &Path, binds: &[FileBind], scratch: &Path) -> Result<()> {
    if binds.is_empty() {
        return Ok(());
    }
    let mut script = String::new();
    for (i, bind) in binds.iter().enumerate() {
        // A copy with a name debugfs can take, read once: what is checked is what was written.
        let staged = scratch.join(format!("bind-{i}"));
        std::fs::copy(&bind.source, &staged)
            .with_context(|| format!("copying {}", bind.source.display()))?;
        let mut parent = String::new();
        let components: Vec<&str> = bind
            .destination
            .split('/')
            .filter(|c| !c.is_empty() && *c != ".")
            .collect();
        for dir in &components[..components.len().saturating_sub(1)] {
            parent.push('/');
            parent.push_str(dir);
            // Fails harmlessly where the directory exists.
            script.push_str(&format!("mkdir \"{parent}\"\n"));
        }
        // Fails harmlessly where nothing is there yet.
        script.push_str(&format!("rm \"{}\"\n", bind.destination));
        script.push_str(&format!(
            "write \"{}\" \"{}\"\n",
            staged.display(),
            bind.destination
        ));
    }
    let script_path = scratch.join("binds.debugfs");
    std::fs::write(&script_path, script)?;
    // Expected complaints (existing directories, absent files) go to stderr; the result is
    // checked file by file below.
    let ran = std::process::Command::new("debugfs")
        .arg("-w")
        .arg("-f")
        .arg(&script_path)
        .arg(image)
        .output()
        .context("running debugfs (apt-get install e2fsprogs)")?;
    if !ran.status.success() {
        bail!(
            "debugfs on {}: {}",
            image.display(),
            String::from_utf8_lossy(&ran.stderr).trim()
        );
    }
    for (i, bind) in binds.iter().enumerate() {
        let staged = scratch.join(format!("bind-{i}"));
        let expected = std::fs::read(&staged)?;
        let placed = std::process::Command::new("debugfs")
            .arg("-R")
            .arg(format!("cat \"{}\"", bind.destination))
            .arg(image)
            .output()
            .context("running debugfs")?;
        let _ = std::fs::remove_file(&staged);
        if placed.stdout != expected {
            bail!(
                "cannot place {} at {} in the container's root (is a directory or a dangling link there?)",
                bind.source.display(),
                bind.destination
            );
        }
    }
    let _ = std::fs::remove_file(&script_path);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::MountBuilder;

    fn bind(source: &Path, destination: &str) -> Mount {
        MountBuilder::default()
            .destination(destination)
            .typ("bind")
            .source(source)
            .options(vec!["rbind".to_string(), "ro".to_string()])
            .build()
            .unwrap()
    }

    #[test]
    fn only_small_host_files_at_plain_paths_are_copied() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("hosts");
        std::fs::write(&file, "127.0.0.1 localhost\n").unwrap();
        let found = file_bind(&bind(&file, "/etc/hosts")).unwrap().unwrap();
        assert_eq!(
            (found.destination.as_str(), found.directory),
            ("/etc/hosts", false)
        );
        // A directory is copied as a tree; a proc mount is not a bind at all.
        let tree = file_bind(&bind(dir.path(), "/data")).unwrap().unwrap();
        assert!(tree.directory);
        let proc = MountBuilder::default()
            .destination("/proc")
            .typ("proc")
            .source("proc")
            .build()
            .unwrap();
        assert!(file_bind(&proc).unwrap().is_none());
        assert!(file_bind(&bind(&file, "/etc/../../x")).is_err());
        assert!(file_bind(&bind(&file, "relative")).is_err());
        let big = dir.path().join("big");
        std::fs::write(&big, vec![0u8; (MAX_FILE_BYTES + 1) as usize]).unwrap();
        let err = file_bind(&bind(&big, "/big")).unwrap_err().to_string();
        assert!(err.contains("not copied"), "{err}");
        let with_fifo = dir.path().join("with-fifo");
        std::fs::create_dir_all(&with_fifo).unwrap();
        nix::unistd::mkfifo(&with_fifo.join("p"), nix::sys::stat::Mode::S_IRWXU).unwrap();
        let err = file_bind(&bind(&with_fifo, "/v")).unwrap_err().to_string();
        assert!(err.contains("device, socket or FIFO"), "{err}");
        assert!(file_bind(&bind(&dir.path().join("absent"), "/x")).is_err());
    }

    #[test]
    fn files_land_in_the_image_over_old_ones_and_in_new_directories() {
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("tree");
        std::fs::create_dir_all(tree.join("etc")).unwrap();
        std::fs::write(tree.join("etc/hosts"), "old\n").unwrap();
        std::fs::create_dir_all(tree.join("srv/taken")).unwrap();
        let image = dir.path().join("root.ext4");
        if let Err(e) = cocoon_guest_image::rootfs::ext4_image(&tree, &image, 1) {
            eprintln!("SKIPPED: no mkfs.ext4 here: {e:#}");
            return;
        }
        let hosts = dir.path().join("hosts");
        std::fs::write(&hosts, "10.0.0.1 cocoon\n").unwrap();
        let note = dir.path().join("note");
        std::fs::write(&note, "a note\n").unwrap();
        let binds = [
            FileBind {
                source: hosts.clone(),
                destination: "/etc/hosts".into(),
                directory: false,
            },
            FileBind {
                source: note,
                destination: "/opt/cocoon/note".into(),
                directory: false,
            },
        ];
        let scratch = dir.path().join("scratch");
        std::fs::create_dir_all(&scratch).unwrap();
        copy_into(&image, &binds, &scratch).unwrap();
        let cat = |path: &str| {
            let out = std::process::Command::new("debugfs")
                .arg("-R")
                .arg(format!("cat {path}"))
                .arg(&image)
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        assert_eq!(cat("/etc/hosts"), "10.0.0.1 cocoon\n");
        assert_eq!(cat("/opt/cocoon/note"), "a note\n");
        // A directory at the destination is not replaced: a clear error.
        let onto_dir = [FileBind {
            source: hosts,
            destination: "/srv/taken".into(),
            directory: false,
        }];
        let err = copy_into(&image, &onto_dir, &scratch)
            .unwrap_err()
            .to_string();
        assert!(err.contains("cannot place"), "{err}");
    }

    #[test]
    fn binds_are_placed_in_a_writable_tree_with_the_images_directories() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("SKIPPED: owners and overlayfs's trusted xattr need root");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let layer = dir.path().join("layer");
        std::fs::create_dir_all(layer.join("tmp")).unwrap();
        std::fs::set_permissions(layer.join("tmp"), std::fs::Permissions::from_mode(0o1777))
            .unwrap();
        let volume = dir.path().join("volume");
        std::fs::create_dir_all(volume.join("sub")).unwrap();
        std::fs::write(volume.join("sub/key"), "secret").unwrap();
        std::os::unix::fs::symlink("sub/key", volume.join("link")).unwrap();
        std::os::unix::fs::chown(volume.join("sub/key"), Some(1000), Some(1000)).unwrap();
        let note = dir.path().join("note");
        std::fs::write(&note, "n").unwrap();
        let tree = dir.path().join("tree");
        std::fs::create_dir_all(&tree).unwrap();
        let binds = [
            FileBind {
                source: note,
                destination: "/tmp/cocoon/note".into(),
                directory: false,
            },
            FileBind {
                source: volume,
                destination: "/etc/config".into(),
                directory: true,
            },
        ];
        place_in_tree(&tree, &binds, &[layer]).unwrap();
        let mode = |p: &str| tree.join(p).metadata().unwrap().mode() & 0o7777;
        assert_eq!(mode("tmp"), 0o1777, "as the image has it");
        assert_eq!(mode("tmp/cocoon"), 0o755);
        assert_eq!(
            std::fs::read_to_string(tree.join("tmp/cocoon/note")).unwrap(),
            "n"
        );
        assert_eq!(
            std::fs::read_to_string(tree.join("etc/config/link")).unwrap(),
            "secret"
        );
        assert_eq!(
            tree.join("etc/config/sub/key").metadata().unwrap().uid(),
            1000
        );
        let mut opaque = [0u8; 4];
        let path = CString::new(tree.join("etc/config").as_os_str().as_bytes()).unwrap();
        // SAFETY: lgetxattr(2) into a 4-byte buffer we own, with NUL-terminated strings.
        let len = unsafe {
            libc::lgetxattr(
                path.as_ptr(),
                c"trusted.overlay.opaque".as_ptr(),
                opaque.as_mut_ptr().cast(),
                opaque.len(),
            )
        };
        assert_eq!(
            (len, opaque[0]),
            (1, b'y'),
            "the image's /etc/config stays hidden"
        );
    }
}
