//! Unpacking `docker save` archives: the outer tar, manifest.json, the image config, and each
//! layer applied in order with overlay whiteouts (`.wh.NAME` removes NAME, `.wh..wh..opq` empties
//! the directory of what lower layers put there).

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Component, Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use super::progress::{Counting, Progress};

/// What the image says about running it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageConfig {
    pub env: Vec<String>,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub workdir: Option<String>,
    /// The image's user, resolved against its /etc/passwd and /etc/group.
    pub user: Option<(u32, u32)>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ManifestEntry {
    config: String,
    layers: Vec<String>,
}

#[derive(Deserialize, Default)]
struct ConfigFile {
    #[serde(default)]
    config: Option<RunConfig>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct RunConfig {
    env: Option<Vec<String>>,
    entrypoint: Option<Vec<String>>,
    cmd: Option<Vec<String>>,
    working_dir: Option<String>,
    user: Option<String>,
}

const WHITEOUT: &str = ".wh.";
const OPAQUE: &str = ".wh..wh..opq";

/// `root/relative`, refusing `..`, absolute parts and paths that pass through a symlink (a layer
/// must not reach outside the tree through one).
fn inside(root: &Path, relative: &Path) -> Option<PathBuf> {
    let mut path = root.to_path_buf();
    for component in relative.components() {
        match component {
            Component::Normal(part) => {
                if path != root && path.symlink_metadata().is_ok_and(|m| m.is_symlink()) {
                    return None;
                }
                path.push(part);
            }
            Component::CurDir => {}
            _ => return None,
        }
    }
    Some(path)
}

fn remove_any(path: &Path) -> std::io::Result<()> {
    match path.symlink_metadata() {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(_) => Ok(()),
    }
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Applies one layer tar (plain or gzipped) onto `root`.
fn apply_layer(layer: &Path, root: &Path, label: String) -> Result<()> {
    let size = std::fs::metadata(layer)?.len();
    let mut file = BufReader::new(File::open(layer)?);
    let head = std::io::BufRead::fill_buf(&mut file)?.to_vec();
    let counted = Counting {
        inner: file,
        progress: Progress::new(label, size),
    };
    let reader: Box<dyn Read> = if head.starts_with(&[0x1f, 0x8b]) {
        Box::new(flate2::read::GzDecoder::new(counted))
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        bail!("{} is zstd-compressed, which cocoon cannot unpack yet: save the image with gzip or uncompressed layers", layer.display());
    } else {
        Box::new(counted)
    };
    let mut archive = tar::Archive::new(reader);
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(is_root());
    archive.set_unpack_xattrs(false);
    archive.set_overwrite(true);
    let mut skipped_devices = 0;
    for entry in archive.entries()? {
        let mut entry = entry?;
        let path = entry.path()?.into_owned();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if let Some(hidden) = name.strip_prefix(WHITEOUT) {
            let parent = path.parent().unwrap_or(Path::new(""));
            let Some(dir) = inside(root, parent) else {
                bail!(
                    "layer {}: whiteout {} leaves the image",
                    layer.display(),
                    path.display()
                );
            };
            if name == OPAQUE {
                if let Ok(children) = std::fs::read_dir(&dir) {
                    for child in children.flatten() {
                        remove_any(&child.path())?;
                    }
                }
            } else {
                remove_any(&dir.join(hidden))?;
            }
            continue;
        }
        let Some(target) = inside(root, &path) else {
            bail!(
                "layer {}: entry {} leaves the image",
                layer.display(),
                path.display()
            );
        };
        let kind = entry.header().entry_type();
        if let Ok(existing) = target.symlink_metadata() {
            if !(existing.is_dir() && kind.is_dir()) {
                remove_any(&target)?;
            }
        }
        if (kind.is_character_special() || kind.is_block_special()) && !is_root() {
            skipped_devices += 1;
            continue;
        }
        entry
            .unpack_in(root)
            .with_context(|| format!("unpacking {} from {}", path.display(), layer.display()))?;
    }
    // The rest (tar padding, the gzip trailer, which checks the data) is read too.
    std::io::copy(&mut archive.into_inner(), &mut std::io::sink())
        .with_context(|| format!("reading the end of {}", layer.display()))?;
    if skipped_devices > 0 {
        eprintln!("cocoon: skipped {skipped_devices} device nodes of {} (only root can make them; the container gets its own /dev)", layer.display());
    }
    Ok(())
}

/// `name` or a number, looked up in the image's `file` (passwd or group format).
fn lookup(root: &Path, file: &str, name: &str) -> Result<u32> {
    if let Ok(id) = name.parse() {
        return Ok(id);
    }
    let text = std::fs::read_to_string(root.join("etc").join(file)).unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let fields: Vec<&str> = l.split(':').collect();
            (fields.len() > 2 && fields[0] == name).then(|| fields[2].parse().ok())?
        })
        .next()
        .with_context(|| format!("the image's user '{name}' is not in its /etc/{file}"))
}

/// The primary group of `uid` in the image's /etc/passwd (0 when it has none).
fn primary_group(root: &Path, uid: u32) -> u32 {
    let text = std::fs::read_to_string(root.join("etc/passwd")).unwrap_or_default();
    text.lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() > 3 && f[2].parse() == Ok(uid)).then(|| f[3].parse().ok())?
        })
        .unwrap_or(0)
}

fn resolve_user(root: &Path, user: &str) -> Result<Option<(u32, u32)>> {
    if user.is_empty() {
        return Ok(None);
    }
    let (u, g) = match user.split_once(':') {
        Some((u, g)) => (lookup(root, "passwd", u)?, Some(lookup(root, "group", g)?)),
        None => (lookup(root, "passwd", user)?, None),
    };
    Ok(Some((u, g.unwrap_or_else(|| primary_group(root, u)))))
}

/// Unpacks the archive at `path` into `tree`, using `scratch` for its parts.
pub fn unpack(path: &Path, scratch: &Path, tree: &Path) -> Result<ImageConfig> {
    let parts = scratch.join("archive");
    std::fs::create_dir_all(&parts)?;
    let size = std::fs::metadata(path)?.len();
    let counted = Counting {
        inner: File::open(path)?,
        progress: Progress::new(format!("reading {}", path.display()), size),
    };
    tar::Archive::new(counted)
        .unpack(&parts)
        .context("not a tar archive (cocoon takes `docker save` archives)")?;
    let manifest_path = parts.join("manifest.json");
    let manifest: Vec<ManifestEntry> = serde_json::from_slice(
        &std::fs::read(&manifest_path)
            .context("the archive has no manifest.json (cocoon takes `docker save` archives)")?,
    )
    .context("parsing manifest.json")?;
    let [image] = manifest.as_slice() else {
        bail!(
            "the archive holds {} images; cocoon runs archives of one image",
            manifest.len()
        );
    };
    let part = |name: &str| {
        inside(&parts, Path::new(name))
            .with_context(|| format!("manifest.json names {name}, outside the archive"))
    };
    let config: ConfigFile = serde_json::from_slice(
        &std::fs::read(part(&image.config)?)
            .with_context(|| format!("reading the image config {}", image.config))?,
    )
    .context("parsing the image config")?;
    std::fs::create_dir_all(tree)?;
    let count = image.layers.len();
    for (i, layer) in image.layers.iter().enumerate() {
        apply_layer(
            &part(layer)?,
            tree,
            format!("unpacking layer {}/{count}", i + 1),
        )?;
    }
    let run = config.config.unwrap_or_default();
    Ok(ImageConfig {
        env: run.env.unwrap_or_default(),
        entrypoint: run.entrypoint.unwrap_or_default(),
        cmd: run.cmd.unwrap_or_default(),
        workdir: run.working_dir.filter(|w| !w.is_empty()),
        user: resolve_user(tree, run.user.as_deref().unwrap_or(""))?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tar built in memory from (path, contents) pairs; `None` contents make a directory.
    fn tar_of(entries: &[(&str, Option<&str>)]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for (path, contents) in entries {
            let mut header = tar::Header::new_gnu();
            header.set_uid(0);
            header.set_gid(0);
            header.set_mtime(0);
            match contents {
                Some(data) => {
                    header.set_entry_type(tar::EntryType::Regular);
                    header.set_size(data.len() as u64);
                    header.set_mode(0o644);
                    builder
                        .append_data(&mut header, path, data.as_bytes())
                        .unwrap();
                }
                None => {
                    header.set_entry_type(tar::EntryType::Directory);
                    header.set_size(0);
                    header.set_mode(0o755);
                    builder.append_data(&mut header, path, &[][..]).unwrap();
                }
            }
        }
        builder.into_inner().unwrap()
    }

    #[test]
    fn layers_apply_in_order_with_whiteouts() {
        let tmp = tempfile::tempdir().unwrap();
        let lower = tar_of(&[
            ("etc/", None),
            (
                "etc/passwd",
                Some("root:x:0:0::/:/bin/sh\napp:x:1000:1001::/:/bin/sh\n"),
            ),
            ("etc/gone", Some("x")),
            ("data/", None),
            ("data/old", Some("x")),
        ]);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(
            &mut gz,
            &tar_of(&[
                ("etc/.wh.gone", Some("")),
                ("data/", None),
                ("data/.wh..wh..opq", Some("")),
                ("data/new", Some("y")),
            ]),
        )
        .unwrap();
        let upper = gz.finish().unwrap();
        let config = r#"{"config":{"Env":["A=1"],"Cmd":["sh"],"Entrypoint":null,"WorkingDir":"/data","User":"app"}}"#;
        let manifest = r#"[{"Config":"cfg.json","RepoTags":["t:1"],"Layers":["l1/layer.tar","l2/layer.tar"]}]"#;
        let outer = tmp.path().join("image.tar");
        let mut builder = tar::Builder::new(File::create(&outer).unwrap());
        for (name, data) in [
            ("manifest.json", manifest.as_bytes()),
            ("cfg.json", config.as_bytes()),
            ("l1/layer.tar", &lower[..]),
            ("l2/layer.tar", &upper[..]),
        ] {
            let mut header = tar::Header::new_gnu();
            header.set_uid(0);
            header.set_gid(0);
            header.set_size(data.len() as u64);
            header.set_mode(0o644);
            builder.append_data(&mut header, name, data).unwrap();
        }
        builder.finish().unwrap();
        drop(builder);

        let tree = tmp.path().join("tree");
        let got = unpack(&outer, tmp.path(), &tree).unwrap();
        assert_eq!(got.env, vec!["A=1"]);
        assert_eq!(got.cmd, vec!["sh"]);
        assert_eq!(got.workdir.as_deref(), Some("/data"));
        assert_eq!(got.user, Some((1000, 1001)));
        assert!(tree.join("etc/passwd").is_file());
        assert!(!tree.join("etc/gone").exists(), "whiteout");
        assert!(!tree.join("data/old").exists(), "opaque directory");
        assert!(tree.join("data/new").is_file());
    }

    #[test]
    fn paths_through_symlinks_or_dotdot_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/", tmp.path().join("up")).unwrap();
        assert!(inside(tmp.path(), Path::new("up/etc")).is_none());
        assert!(inside(tmp.path(), Path::new("../x")).is_none());
        assert!(inside(tmp.path(), Path::new("/abs")).is_none());
        assert_eq!(
            inside(tmp.path(), Path::new("./a/b")),
            Some(tmp.path().join("a/b"))
        );
    }

    #[test]
    fn a_file_that_is_not_an_archive_is_refused_clearly() {
        let tmp = tempfile::tempdir().unwrap();
        let bogus = tmp.path().join("x.tar");
        std::fs::write(&bogus, "not a tar at all, just some text").unwrap();
        let err = unpack(&bogus, tmp.path(), &tmp.path().join("t"))
            .err()
            .unwrap();
        assert!(format!("{err:#}").contains("docker save"), "{err:#}");
    }
}
