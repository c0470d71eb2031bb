//! Host files a container's spec bind-mounts (CRI's `/etc/hosts`, `/etc/resolv.conf`,
//! `/etc/hostname`; `ctr run --mount` of a file) cannot be mounted across the VM boundary: they
//! are copied into the container's root disk at their destination when it is made, so the
//! container sees them as they were at create (writes stay inside the VM). Host directories do not
//! reach the guest yet; they are left out with a warning.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use oci_spec::runtime::Mount;

/// Larger files are not copied (these are configuration files, not data).
const MAX_FILE_BYTES: u64 = 1 << 20;

/// A host file to place in the root disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileBind {
    pub source: PathBuf,
    pub destination: String,
}

fn is_bind(mount: &Mount) -> bool {
    mount.typ().as_deref() == Some("bind")
        || mount
            .options()
            .iter()
            .flatten()
            .any(|o| o == "bind" || o == "rbind")
}

/// The host file `mount` binds in, if it is one this module can copy; why not otherwise.
pub fn file_bind(mount: &Mount) -> Result<Option<FileBind>> {
    if !is_bind(mount) {
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
    if !meta.is_file() {
        return Ok(None);
    }
    if meta.len() > MAX_FILE_BYTES {
        bail!(
            "the bind source {} is {} bytes; host files over {MAX_FILE_BYTES} bytes are not copied into the microVM",
            source.display(),
            meta.len()
        );
    }
    Ok(Some(FileBind {
        source: source.clone(),
        destination,
    }))
}

/// The host files among `mounts` (the spec's mounts the guest cannot make by itself).
pub fn file_binds(mounts: &[Mount]) -> Result<Vec<FileBind>> {
    let mut binds = Vec::new();
    for mount in mounts {
        if let Some(bind) = file_bind(mount)? {
            binds.push(bind);
        }
    }
    Ok(binds)
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
        assert_eq!(found.destination, "/etc/hosts");
        // A directory is not a file bind; a proc mount is not a bind at all.
        assert!(file_bind(&bind(dir.path(), "/data")).unwrap().is_none());
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
            },
            FileBind {
                source: note,
                destination: "/opt/cocoon/note".into(),
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
        }];
        let err = copy_into(&image, &onto_dir, &scratch)
            .unwrap_err()
            .to_string();
        assert!(err.contains("cannot place"), "{err}");
    }
}
