//! The OCI spec and root as the guest runs them: containerd's spec rewritten for the microVM (no
//! host namespaces, cgroup path, hooks or host mounts; host binds as copies), and the root disks
//! made from the rootfs containerd mounted.

use std::path::Path;

use anyhow::Result;
use containerd_shim::api;
use oci_spec::runtime::Spec;

use super::binds;
use super::rootfs::{self, RootDisks, RootMount};

/// Mount types that exist inside the guest by themselves; others name host paths.
const GUEST_MOUNT_TYPES: &[&str] = &[
    "proc", "sysfs", "tmpfs", "devpts", "mqueue", "cgroup", "cgroup2",
];

/// True for mounts the guest makes by itself (proc, tmpfs, ...); others name host paths.
fn made_in_guest(mount: &oci_spec::runtime::Mount) -> bool {
    mount
        .typ()
        .as_deref()
        .is_some_and(|t| GUEST_MOUNT_TYPES.contains(&t))
}

/// The spec as the guest can run it: no host namespaces, cgroup path, hooks or host mounts (bound
/// host files and directories are copied into the root's writable disk instead — `copied` says
/// which were — read-only ones bound over themselves read-only), rootfs at the
/// bundle's `rootfs`. A pod member keeps the namespaces it joins (`/proc/PID/ns/...` of the
/// sandbox container, whose PID containerd knows as the guest's), all but the network.
pub fn guest_spec(mut spec: Spec, pod_member: bool, copied: &[binds::FileBind]) -> Spec {
    if let Some(mut linux) = spec.linux().clone() {
        cocoon_sandbox::spec::keep_guest_namespaces(&mut linux, pod_member);
        linux.set_cgroups_path(None);
        spec.set_linux(Some(linux));
    }
    spec.set_hooks(None);
    if let Some(mounts) = spec.mounts().clone() {
        let mut kept: Vec<oci_spec::runtime::Mount> = Vec::with_capacity(mounts.len());
        for m in mounts {
            if made_in_guest(&m) {
                kept.push(m);
                continue;
            }
            let destination = m.destination();
            let Some(bind) = copied
                .iter()
                .rfind(|b| Path::new(&b.destination) == destination.as_path())
            else {
                tracing::warn!(
                    "not mounting {} into the container: of host mounts, only binds of files (and, on an image's layers, directories) reach the microVM, as copies",
                    destination.display()
                );
                continue;
            };
            if !binds::is_read_only(&m) {
                continue; // the copy in the root's writable disk is all it takes
            }
            // The copy is bound over itself read-only, unless a mount made before it (a tmpfs
            // on /run, /dev, ...) hides it: then there is nothing to bind, as nothing to see.
            match kept
                .iter()
                .find(|k| made_in_guest(k) && destination.starts_with(k.destination()))
            {
                Some(hider) => tracing::warn!(
                    "not mounting {} into the container: the {} mount at {} hides it",
                    destination.display(),
                    hider.typ().as_deref().unwrap_or("guest"),
                    hider.destination().display()
                ),
                None => kept.push(binds::read_only_over_copy(bind)),
            }
        }
        spec.set_mounts(Some(kept));
    }
    if let Some(mut root) = spec.root().clone() {
        root.set_path("rootfs".into());
        spec.set_root(Some(root));
    }
    spec
}

/// The container's root disks in `dir` (its layer disk in `layer_cache`): the rootfs containerd
/// mounted for it, with the host files it bind-mounts copied into its writable disk.
pub fn make_root(
    req: &api::CreateTaskRequest,
    spec: &Spec,
    dir: &Path,
    layer_cache: &Path,
) -> Result<(RootDisks, Vec<binds::FileBind>)> {
    let mounts: Vec<RootMount> = req
        .rootfs
        .iter()
        .map(|m| RootMount {
            fstype: m.type_.clone(),
            source: m.source.clone(),
            options: m.options.clone(),
        })
        .collect();
    let host_mounts: Vec<_> = spec
        .mounts()
        .iter()
        .flatten()
        .filter(|m| !made_in_guest(m))
        .cloned()
        .collect();
    let host_binds = binds::file_binds(&host_mounts)?;
    rootfs::prepare(
        &mounts,
        Path::new(&req.bundle),
        dir,
        layer_cache,
        &host_binds,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    use oci_spec::runtime::{LinuxBuilder, LinuxNamespaceBuilder, LinuxNamespaceType, SpecBuilder};

    fn spec_joining_a_pod() -> Spec {
        let ns = |typ, path: Option<&str>| {
            let mut b = LinuxNamespaceBuilder::default().typ(typ);
            if let Some(p) = path {
                b = b.path(p);
            }
            b.build().unwrap()
        };
        SpecBuilder::default()
            .linux(
                LinuxBuilder::default()
                    .namespaces(vec![
                        ns(LinuxNamespaceType::Pid, None),
                        ns(LinuxNamespaceType::Ipc, Some("/proc/42/ns/ipc")),
                        ns(LinuxNamespaceType::Network, Some("/var/run/netns/cni-1")),
                        ns(LinuxNamespaceType::Mount, None),
                    ])
                    .cgroups_path("/k8s.io/abc")
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap()
    }

    fn namespaces(spec: &Spec) -> Vec<(LinuxNamespaceType, bool)> {
        spec.linux()
            .as_ref()
            .unwrap()
            .namespaces()
            .iter()
            .flatten()
            .map(|n| (n.typ(), n.path().is_some()))
            .collect()
    }

    #[test]
    fn pod_members_join_the_sandbox_namespaces_but_never_the_hosts_network() {
        let member = guest_spec(spec_joining_a_pod(), true, &[]);
        assert_eq!(
            namespaces(&member),
            [
                (LinuxNamespaceType::Pid, false),
                (LinuxNamespaceType::Ipc, true),
                (LinuxNamespaceType::Mount, false)
            ]
        );
        assert_eq!(member.linux().as_ref().unwrap().cgroups_path(), &None);
        assert_eq!(member.root().as_ref().unwrap().path(), Path::new("rootfs"));
        // A container of its own VM has no sandbox to join: host namespace paths go.
        let alone = guest_spec(spec_joining_a_pod(), false, &[]);
        assert_eq!(
            namespaces(&alone),
            [
                (LinuxNamespaceType::Pid, false),
                (LinuxNamespaceType::Mount, false)
            ]
        );
    }

    #[test]
    fn host_binds_become_copies_and_read_only_ones_stay_read_only() {
        let mount = |destination: &str, typ: &str, source: &str, options: &[&str]| {
            let mut m = oci_spec::runtime::Mount::default();
            m.set_destination(destination.into())
                .set_typ(Some(typ.into()))
                .set_source(Some(source.into()))
                .set_options(Some(options.iter().map(|o| o.to_string()).collect()));
            m
        };
        let copy = |destination: &str, directory: bool| binds::FileBind {
            source: "/host".into(),
            destination: destination.into(),
            directory,
        };
        let mut spec = Spec::default();
        spec.set_mounts(Some(vec![
            mount("/proc", "proc", "proc", &[]),
            mount("/srv", "bind", "/host/vol", &["rbind", "ro"]),
            mount("/etc/hosts", "bind", "/host/hosts", &["rbind", "rw"]),
            mount("/run", "tmpfs", "tmpfs", &[]),
            // Copied, but under the /run tmpfs made before it: nothing to bind.
            mount("/run/secret", "bind", "/host/secret", &["rbind", "ro"]),
            // Under another read-only copy: bound too, as runc nests binds.
            mount("/srv/sub", "bind", "/host/sub", &["rbind", "ro"]),
            // Not copied (a directory, on a root copied whole): no bind of a missing copy.
            mount("/opt/dir", "bind", "/host/dir", &["rbind", "ro"]),
            mount("/dev/kvm", "bind", "/dev/kvm", &["rbind"]),
        ]));
        let copied = [
            copy("/srv", true),
            copy("/srv/sub", true),
            copy("/etc/hosts", false),
            copy("/run/secret", false),
        ];
        let guest = guest_spec(spec, false, &copied);
        let mounts: Vec<_> = guest
            .mounts()
            .iter()
            .flatten()
            .map(|m| {
                (
                    m.destination().to_string_lossy().to_string(),
                    m.source().clone().unwrap_or_default(),
                    m.options().clone().unwrap_or_default().join(","),
                )
            })
            .collect();
        assert_eq!(
            mounts,
            [
                ("/proc".to_string(), PathBuf::from("proc"), String::new()),
                (
                    "/srv".to_string(),
                    PathBuf::from("rootfs/srv"),
                    "rbind,ro".to_string()
                ),
                ("/run".to_string(), PathBuf::from("tmpfs"), String::new()),
                (
                    "/srv/sub".to_string(),
                    PathBuf::from("rootfs/srv/sub"),
                    "rbind,ro".to_string()
                ),
            ]
        );
    }
}
