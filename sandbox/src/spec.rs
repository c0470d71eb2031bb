//! OCI runtime specs for containers in a cocoon guest, with the defaults a Docker user expects:
//! pid, ipc, uts and mount namespaces (the network is the VM's own), the usual /proc, /dev,
//! /dev/pts, /dev/shm, /dev/mqueue and /sys mounts, masked and read-only kernel paths, Docker's
//! default capabilities, no new privileges.

use cocoon_protocol::defaults::default_capabilities;
use oci_spec::runtime::{Linux, LinuxNamespaceType, Mount, Process, Spec, User};

pub const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// What a process runs as and with.
#[derive(Clone, Debug, Default)]
pub struct ProcessOptions {
    pub args: Vec<String>,
    /// `KEY=VALUE`, added to PATH and TERM.
    pub env: Vec<String>,
    pub cwd: Option<String>,
    pub uid: u32,
    pub gid: u32,
    pub terminal: bool,
}

/// A process with cocoon's defaults.
pub fn process(options: &ProcessOptions) -> Process {
    let mut process = Process::default();
    // Defaults the caller's own values replace (the first of two entries wins in most libcs).
    let given = |key: &str| options.env.iter().any(|e| e.starts_with(key));
    let mut env = Vec::new();
    if !given("PATH=") {
        env.push(DEFAULT_PATH.to_string());
    }
    if options.terminal && !given("TERM=") {
        env.push("TERM=xterm".into());
    }
    env.extend(options.env.iter().cloned());
    let mut user = User::default();
    user.set_uid(options.uid).set_gid(options.gid);
    process
        .set_args(Some(options.args.clone()))
        .set_env(Some(env))
        .set_cwd(options.cwd.clone().unwrap_or_else(|| "/".into()).into())
        .set_user(user)
        .set_terminal(Some(options.terminal))
        .set_no_new_privileges(Some(true))
        .set_capabilities(Some(default_capabilities()));
    process
}

/// A container spec: `options`' process, the defaults above, a read-only or writable root, and a
/// tmpfs on /tmp.
pub fn container_spec(options: &ProcessOptions, hostname: &str, read_only_root: bool) -> Spec {
    let mut spec = Spec::default();
    spec.set_process(Some(process(options)));
    spec.set_hostname(Some(hostname.to_string()));
    let mut root = spec.root().clone().unwrap_or_default();
    root.set_path("rootfs".into())
        .set_readonly(Some(read_only_root));
    spec.set_root(Some(root));
    let mut mounts = spec.mounts().clone().unwrap_or_default();
    let mut tmp = Mount::default();
    tmp.set_destination("/tmp".into())
        .set_typ(Some("tmpfs".into()))
        .set_source(Some("tmpfs".into()))
        .set_options(Some(vec![
            "nosuid".into(),
            "nodev".into(),
            "mode=1777".into(),
        ]));
    mounts.push(tmp);
    spec.set_mounts(Some(mounts));
    if let Some(mut linux) = spec.linux().clone() {
        keep_guest_namespaces(&mut linux, true);
        spec.set_linux(Some(linux));
    }
    spec
}

/// Drops the namespaces a container in a microVM must not have: the network namespace (the VM is
/// the network boundary, and its network is the agent's), and, unless `keep_joined`, every
/// namespace to join by path (a host path means nothing in the guest; a pod member's paths name
/// its sandbox container's namespaces, which the agent resolves).
pub fn keep_guest_namespaces(linux: &mut Linux, keep_joined: bool) {
    if let Some(namespaces) = linux.namespaces().clone() {
        linux.set_namespaces(Some(
            namespaces
                .into_iter()
                .filter(|n| n.typ() != LinuxNamespaceType::Network)
                .filter(|n| keep_joined || n.path().is_none())
                .collect(),
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_dockers() {
        let spec = container_spec(
            &ProcessOptions {
                args: vec!["true".into()],
                env: vec!["A=b".into()],
                ..Default::default()
            },
            "box",
            true,
        );
        let p = spec.process().as_ref().unwrap();
        assert_eq!(p.no_new_privileges(), Some(true));
        assert!(p.env().as_ref().unwrap().contains(&"A=b".to_string()));
        let caps = p.capabilities().as_ref().unwrap();
        assert_eq!(caps.bounding().as_ref().unwrap().len(), 14);
        let ns = spec
            .linux()
            .as_ref()
            .unwrap()
            .namespaces()
            .as_ref()
            .unwrap();
        assert!(ns.iter().all(|n| n.typ() != LinuxNamespaceType::Network));
        assert!(ns.iter().any(|n| n.typ() == LinuxNamespaceType::Pid));
        assert_eq!(spec.root().as_ref().unwrap().readonly(), Some(true));
        assert!(spec
            .mounts()
            .as_ref()
            .unwrap()
            .iter()
            .any(|m| m.destination() == std::path::Path::new("/tmp")));
        assert!(!spec
            .linux()
            .as_ref()
            .unwrap()
            .masked_paths()
            .as_ref()
            .unwrap()
            .is_empty());
    }
}
