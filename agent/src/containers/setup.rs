//! The sandbox itself, before any container: its hostname, DNS servers, /etc/hosts and mounts
//! (`CreateSandbox`), and which of those mounts are writable volumes the host may ask back.

use std::fs;
use std::path::PathBuf;

use cocoon_common::lock;
use cocoon_protocol::guest_network::{hosts_file, DnsConfig, HostEntry};
use cocoon_protocol::{ErrorKind, Reply, SandboxMount};
use nix::mount::{mount, MsFlags};

use super::Sandbox;
use crate::errors::{error, internal, AgentResult};

/// The sandbox's resolv.conf in the layout's `etc`, which containers get bound in when the host
/// gave DNS servers.
const RESOLV_CONF: &str = "resolv.conf";
/// The sandbox's hosts file in the layout's `etc`, which every container gets bound in.
const HOSTS: &str = "hosts";

impl Sandbox {
    pub fn create_sandbox(
        &self,
        hostname: &str,
        dns: &DnsConfig,
        hosts: &[HostEntry],
        mounts: &[SandboxMount],
    ) -> AgentResult<Reply> {
        let mut created = lock(&self.created);
        if *created {
            return Err(error(
                ErrorKind::AlreadyExists,
                "the sandbox is already set up",
            ));
        }
        if !hostname.is_empty() {
            nix::unistd::sethostname(hostname).map_err(|e| {
                error(
                    ErrorKind::InvalidArgument,
                    format!("hostname '{hostname}': {e}"),
                )
            })?;
        }
        let hosts =
            hosts_file(hosts).map_err(|e| error(ErrorKind::InvalidArgument, e.to_string()))?;
        let etc = &self.layout.etc;
        let _ = fs::create_dir_all(etc);
        let mut etc_files = vec![HOSTS];
        fs::write(etc.join(HOSTS), hosts).map_err(|e| internal("writing /etc/hosts", e))?;
        if !dns.servers.is_empty() {
            fs::write(etc.join(RESOLV_CONF), dns.resolv_conf())
                .map_err(|e| internal("writing /etc/resolv.conf", e))?;
            etc_files.push(RESOLV_CONF);
        }
        *lock(&self.etc_files) = etc_files;
        for m in mounts {
            let _ = fs::create_dir_all(&m.target);
            let mut flags = MsFlags::empty();
            let mut data = Vec::new();
            for option in &m.options {
                match option.as_str() {
                    "ro" => flags |= MsFlags::MS_RDONLY,
                    "nosuid" => flags |= MsFlags::MS_NOSUID,
                    "nodev" => flags |= MsFlags::MS_NODEV,
                    "noexec" => flags |= MsFlags::MS_NOEXEC,
                    other => data.push(other),
                }
            }
            let data = data.join(",");
            mount(
                Some(m.source.as_str()),
                m.target.as_str(),
                Some(m.fstype.as_str()),
                flags,
                (!data.is_empty()).then_some(data.as_str()),
            )
            .map_err(|e| {
                error(
                    ErrorKind::InvalidArgument,
                    format!("mounting {} on {}: {e}", m.source, m.target),
                )
            })?;
            if !flags.contains(MsFlags::MS_RDONLY) {
                lock(&self.writable_mounts).push(m.target.clone());
            }
        }
        *created = true;
        Ok(Reply::Done)
    }

    /// `target` if it is one of the sandbox's writable mounts (only those may be exported).
    pub fn writable_mount(&self, target: &str) -> AgentResult<PathBuf> {
        if lock(&self.writable_mounts).iter().any(|m| m == target) {
            Ok(PathBuf::from(target))
        } else {
            Err(error(
                ErrorKind::InvalidArgument,
                format!("'{target}' is not a writable mount of this sandbox: only those can be exported"),
            ))
        }
    }
}
