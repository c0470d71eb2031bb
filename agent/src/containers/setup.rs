//! The sandbox itself, before any container: its hostname, DNS servers and mounts
//! (`CreateSandbox`), and which of those mounts are writable volumes the host may ask back.

use std::fs;
use std::path::PathBuf;

use cocoon_common::lock;
use cocoon_protocol::guest_network::DnsConfig;
use cocoon_protocol::{ErrorKind, Reply, SandboxMount};
use nix::mount::{mount, MsFlags};

use super::Sandbox;
use crate::errors::{error, internal, AgentResult};

/// The guest's resolv.conf, which containers get bound in when the host gave DNS servers.
pub(super) const GUEST_RESOLV_CONF: &str = "/etc/resolv.conf";

impl Sandbox {
    pub fn create_sandbox(
        &self,
        hostname: &str,
        dns: &DnsConfig,
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
        if !dns.servers.is_empty() {
            let _ = fs::create_dir_all("/etc");
            fs::write(GUEST_RESOLV_CONF, dns.resolv_conf())
                .map_err(|e| internal("writing /etc/resolv.conf", e))?;
            *lock(&self.resolv_conf) = true;
        }
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
