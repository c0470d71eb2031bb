//! One container's `passt`: started before its VM on one end of a socketpair (the VMM gets the
//! other, as the stream backend of its virtio-net device), in the foreground as our child, its
//! log in the container's directory. It ends by itself when the VMM's end closes, and is stopped
//! with the session in any case.

use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use cocoon_protocol::net_config::MacAddress;
use cocoon_protocol::vm_config::{NetBackendConfig, NetConfig};
use cocoon_sandbox::VmNet;

use super::{Network, GATEWAY, GUEST_ADDRESS, GUEST_MAC, GUEST_PREFIX_LEN, MTU};

/// passt's socket, as it sees it.
const PASST_FD: i32 = 3;
const PASST: &str = "passt";
/// passt's side of the link (locally administered, unicast).
const PASST_MAC: MacAddress = MacAddress([0x9a, 0x55, 0x9a, 0x55, 0x9a, 0x55]);

pub struct Passt {
    child: Option<Child>,
    /// The VMM's end until it is handed over: kept here, passt would not see the VMM go.
    vmm_end: Option<OwnedFd>,
    log: PathBuf,
}

/// The program on PATH, or None.
fn on_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

/// Whether the host has an IPv4 default route: passt takes its template interface from it, and
/// without one (a host with no uplink) is told to use loopback, so published ports still work.
fn has_default_route() -> bool {
    std::fs::read_to_string("/proc/net/route")
        .map(|table| {
            table
                .lines()
                .skip(1)
                .any(|line| line.split_whitespace().nth(1) == Some("00000000"))
        })
        .unwrap_or(false)
}

/// passt on PATH, if it is installed.
pub fn passt_program() -> Option<PathBuf> {
    on_path(PASST)
}

impl Passt {
    pub fn start(network: &Network, log: &Path) -> Result<Self> {
        let Some(program) = on_path(PASST) else {
            bail!("--network default needs passt, which is not installed: install Debian's 'passt' package (apt-get install passt), or run with --network none");
        };
        for port in &network.ports {
            port.check_free()?;
        }
        let (ours, theirs) = UnixStream::pair().context("creating passt's socketpair")?;
        let log_file = File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let mut cmd = Command::new(program);
        cmd.args(["--foreground", "--quiet", "--ipv4-only", "--stderr"])
            .args(["--fd", &PASST_FD.to_string()])
            .args(["--address", &GUEST_ADDRESS.to_string()])
            .args(["--netmask", &GUEST_PREFIX_LEN.to_string()])
            .args(["--gateway", &GATEWAY.to_string()])
            .args(["--mtu", &MTU.to_string()])
            // Its own MAC: passt takes its template interface's otherwise, which loopback lacks.
            .args(["--mac-addr", &PASST_MAC.to_string()])
            .arg("--no-map-gw");
        if nix::unistd::Uid::effective().is_root() {
            // What passt drops to anyway, by number: a host without /etc/passwd has no "nobody".
            cmd.args(["--runas", "65534:65534"]);
        }
        if !has_default_route() {
            cmd.args(["--interface", "lo"]);
        }
        for port in &network.ports {
            cmd.args([port.passt_flag(), &port.passt_spec()]);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log_file));
        let fds = [(theirs.as_raw_fd(), PASST_FD)];
        // SAFETY: move_descriptors makes only async-signal-safe calls (fcntl, dup2).
        unsafe {
            cmd.pre_exec(move || cocoon_common::inherit::move_descriptors(&fds));
        }
        let child = cmd.spawn().context("starting passt")?;
        drop(theirs);
        Ok(Self {
            child: Some(child),
            vmm_end: Some(OwnedFd::from(ours)),
            log: log.to_path_buf(),
        })
    }

    /// The VM's network device, its frames going to passt; the VMM is then the only holder of
    /// its end.
    pub fn take_vm_net(&mut self) -> Result<VmNet> {
        let fd = self
            .vmm_end
            .take()
            .context("passt's socket went to a VM already")?;
        let mut config = NetConfig::new(NetBackendConfig::StreamFd(-1));
        config.mac = Some(GUEST_MAC);
        config.mtu = MTU;
        config.ipv4 = Some(GUEST_ADDRESS);
        Ok(VmNet {
            config,
            fd: Some(Arc::new(fd)),
        })
    }

    /// Fails, with what passt said, if it has exited (a port it could not bind, a bad option).
    pub fn check_running(&mut self) -> Result<()> {
        let Some(child) = self.child.as_mut() else {
            bail!("passt was stopped");
        };
        if let Some(status) = child.try_wait().context("waiting for passt")? {
            let said = std::fs::read_to_string(&self.log).unwrap_or_default();
            // Its last line, past its notes about syslog, which it cannot reach here.
            let said = said
                .lines()
                .rfind(|l| !l.trim().is_empty() && !l.contains("syslog"))
                .unwrap_or("nothing");
            bail!("passt exited ({status}) saying: {said}");
        }
        Ok(())
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Passt {
    fn drop(&mut self) {
        self.stop();
    }
}
