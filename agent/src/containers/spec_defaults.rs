//! What the agent checks and fills in of what the host sends before anything is created: plain
//! container and exec ids, the secure defaults where a spec is silent, and bind sources relative
//! to the bundle made absolute without leaving it.

use std::fs;
use std::path::{Path, PathBuf};

use cocoon_protocol::defaults::default_capabilities;
use cocoon_protocol::ErrorKind;
use oci_spec::runtime::{LinuxNamespaceType, Mount, Spec};

use crate::errors::{error, AgentResult};

/// Container and exec ids become paths and cgroup names: keep them plain.
pub(super) fn check_id(what: &str, id: &str) -> AgentResult<()> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        && !id.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(error(
            ErrorKind::InvalidArgument,
            format!("{what} '{id}' is invalid: use 1-64 letters, digits, '-', '_' or '.'"),
        ))
    }
}

/// Fills in what the spec leaves out, the secure way: no new privileges, Docker's default
/// capabilities, a cgroup under /cocoon. The root is always the mounted block device.
pub fn apply_defaults(spec: &mut Spec, container_id: &str, cgroup_parent: &str) -> AgentResult<()> {
    let mut root = spec.root().clone().unwrap_or_default();
    root.set_path(PathBuf::from("rootfs"));
    spec.set_root(Some(root));
    let mut process = spec.process().clone().ok_or_else(|| {
        error(
            ErrorKind::InvalidArgument,
            "the spec has no process: say what to run in process.args",
        )
    })?;
    if process.args().as_ref().is_none_or(|a| a.is_empty()) {
        return Err(error(
            ErrorKind::InvalidArgument,
            "the spec's process.args is empty: say what to run",
        ));
    }
    if process.no_new_privileges().is_none() {
        process.set_no_new_privileges(Some(true));
    }
    if process.capabilities().is_none() {
        process.set_capabilities(Some(default_capabilities()));
    }
    spec.set_process(Some(process));
    let mut linux = spec.linux().clone().unwrap_or_default();
    if let Some(namespaces) = linux.namespaces().clone() {
        // Every container shares the VM's network: the VM is the pod's network boundary, and a
        // path there is the host's, meaningless in the guest.
        linux.set_namespaces(Some(
            namespaces
                .into_iter()
                .filter(|n| n.typ() != LinuxNamespaceType::Network)
                .collect(),
        ));
    }
    if linux.cgroups_path().is_none() {
        linux.set_cgroups_path(Some(PathBuf::from(format!(
            "{cgroup_parent}/{container_id}"
        ))));
    }
    spec.set_linux(Some(linux));
    Ok(())
}

/// Binds the sandbox's `/etc/NAME` (written in `etc` from what the host gave: resolv.conf,
/// hosts) read-only into a container whose spec does not mount its own, when its root (mounted
/// at `rootfs`) has the file or room to make it: an image without it gets an empty one to mount
/// on, as Docker makes; a read-only root without one goes without (said in the log).
pub(super) fn bind_etc_file(spec: &mut Spec, etc: &Path, name: &str, rootfs: &Path) {
    let destination = Path::new("/etc").join(name);
    let mut mounts = spec.mounts().clone().unwrap_or_default();
    if mounts.iter().any(|m| m.destination() == &destination) {
        return;
    }
    if let Err(e) = etc_mount_point(rootfs, name) {
        tracing::info!("no {} in this container: {e}", destination.display());
        return;
    }
    let mut bind = Mount::default();
    bind.set_destination(destination)
        .set_typ(Some("bind".into()))
        .set_source(Some(etc.join(name)))
        .set_options(Some(vec![
            "rbind".into(),
            "ro".into(),
            "nosuid".into(),
            "nodev".into(),
        ]));
    mounts.push(bind);
    spec.set_mounts(Some(mounts));
}

/// /etc/NAME in the container's root, made empty when missing: `/etc` must be a directory of the
/// image's own (no symlink out), and nothing is followed to make the file.
fn etc_mount_point(rootfs: &Path, name: &str) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let etc = rootfs.join("etc");
    if !fs::symlink_metadata(&etc)?.is_dir() {
        return Err(std::io::Error::other("/etc is not a directory"));
    }
    let file = etc.join(name);
    if fs::symlink_metadata(&file).is_ok() {
        return Ok(());
    }
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW)
        .mode(0o644)
        .open(&file)
        .map(drop)
}

/// Makes the spec's relative bind sources absolute: OCI takes them as relative to the bundle. The
/// host binds a path of the container's own root over itself (`rootfs/srv` onto `/srv`, with `ro`)
/// to make a copied host directory read-only; such a source must stay inside the bundle and name
/// no symlink on its way, or an image's link could bind the guest's own files into the container.
pub(super) fn resolve_bind_sources(spec: &mut Spec, bundle: &Path) -> AgentResult<()> {
    let Some(mut mounts) = spec.mounts().clone() else {
        return Ok(());
    };
    for m in &mut mounts {
        let is_bind = cocoon_protocol::mounts::is_bind(m);
        let Some(source) = m.source().clone().filter(|s| is_bind && s.is_relative()) else {
            continue;
        };
        let refuse = |why: &str| {
            error(
                ErrorKind::InvalidArgument,
                format!(
                    "the bind source {} (relative to the bundle) {why}",
                    source.display()
                ),
            )
        };
        let mut path = bundle.to_path_buf();
        for part in source.components() {
            let part = match part {
                std::path::Component::Normal(part) => part,
                std::path::Component::CurDir => continue,
                _ => return Err(refuse("must be a plain path inside the bundle")),
            };
            path.push(part);
            match fs::symlink_metadata(&path) {
                Ok(meta) if meta.file_type().is_symlink() => {
                    return Err(refuse("passes through a symlink"))
                }
                Ok(_) => {}
                Err(e) => return Err(refuse(&format!("cannot be found: {e}"))),
            }
        }
        m.set_source(Some(path));
    }
    spec.set_mounts(Some(mounts));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::containers::cgroup::cgroup_dir;
    use cocoon_protocol::defaults::DEFAULT_CAPABILITIES;
    use oci_spec::runtime::Capability;

    #[test]
    fn ids_are_plain_names() {
        assert!(check_id("id", "web-1_a.b").is_ok());
        for bad in ["", "../x", "a/b", ".hidden", &"x".repeat(65), "sp ace"] {
            assert_eq!(
                check_id("id", bad).unwrap_err().kind,
                ErrorKind::InvalidArgument
            );
        }
    }

    #[test]
    fn silent_specs_get_secure_defaults() {
        let mut spec = Spec::default();
        let mut process = spec.process().clone().unwrap();
        process.set_capabilities(None).set_no_new_privileges(None);
        spec.set_process(Some(process));
        apply_defaults(&mut spec, "c1", "/cocoon").unwrap();
        let process = spec.process().as_ref().unwrap();
        assert_eq!(process.no_new_privileges(), Some(true));
        let caps = process.capabilities().as_ref().unwrap();
        assert_eq!(
            caps.bounding().as_ref().unwrap().len(),
            DEFAULT_CAPABILITIES.len()
        );
        assert!(caps.ambient().as_ref().unwrap().is_empty());
        assert!(!caps
            .effective()
            .as_ref()
            .unwrap()
            .contains(&Capability::SysAdmin));
        assert_eq!(spec.root().as_ref().unwrap().path(), Path::new("rootfs"));
        assert_eq!(
            cgroup_dir(&spec),
            Path::new("/sys/fs/cgroup/cocoon/c1").to_path_buf()
        );
    }

    #[test]
    fn a_spec_without_a_command_is_refused() {
        let mut spec = Spec::default();
        spec.set_process(None);
        assert_eq!(
            apply_defaults(&mut spec, "c", "/cocoon").unwrap_err().kind,
            ErrorKind::InvalidArgument
        );
        let mut spec = Spec::default();
        let mut process = spec.process().clone().unwrap();
        process.set_args(Some(vec![]));
        spec.set_process(Some(process));
        assert_eq!(
            apply_defaults(&mut spec, "c", "/cocoon").unwrap_err().kind,
            ErrorKind::InvalidArgument
        );
    }

    fn bind(source: &str) -> oci_spec::runtime::Mount {
        let mut m = oci_spec::runtime::Mount::default();
        m.set_destination("/srv".into())
            .set_typ(Some("bind".into()))
            .set_source(Some(source.into()))
            .set_options(Some(vec!["rbind".into(), "ro".into()]));
        m
    }

    fn spec_with(mounts: Vec<oci_spec::runtime::Mount>) -> Spec {
        let mut spec = Spec::default();
        spec.set_mounts(Some(mounts));
        spec
    }

    #[test]
    fn relative_bind_sources_resolve_inside_the_bundle() {
        let bundle = tempfile::tempdir().unwrap();
        fs::create_dir_all(bundle.path().join("rootfs/srv")).unwrap();
        let mut spec = spec_with(vec![bind("rootfs/srv"), bind("/abs/kept")]);
        resolve_bind_sources(&mut spec, bundle.path()).unwrap();
        let sources: Vec<_> = spec
            .mounts()
            .iter()
            .flatten()
            .map(|m| m.source().clone().unwrap())
            .collect();
        assert_eq!(
            sources,
            [bundle.path().join("rootfs/srv"), PathBuf::from("/abs/kept")]
        );
    }

    #[test]
    fn relative_bind_sources_may_not_leave_the_bundle() {
        let bundle = tempfile::tempdir().unwrap();
        fs::create_dir_all(bundle.path().join("rootfs")).unwrap();
        std::os::unix::fs::symlink("/", bundle.path().join("rootfs/srv")).unwrap();
        for source in [
            "rootfs/../../etc",
            "rootfs/srv",
            "rootfs/srv/x",
            "rootfs/missing",
        ] {
            let mut spec = spec_with(vec![bind(source)]);
            let e = resolve_bind_sources(&mut spec, bundle.path()).unwrap_err();
            assert_eq!(e.kind, ErrorKind::InvalidArgument, "{source}: {e:?}");
        }
    }
}
