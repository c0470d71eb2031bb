//! `cocoon run --network` and `-p`: a container's network. `default` gives the microVM one
//! virtio-net device whose frames go to a `passt` process (Debian's `passt`, as Podman uses it
//! rootless) on a socketpair, for root and rootless alike: the guest gets a fixed address
//! behind passt's NAT, the host's DNS servers, and the published ports; with `--no-map-gw` the
//! guest cannot reach the host's own loopback services. `none` leaves it only loopback.

mod dns;
mod passt;
mod ports;

use std::net::{IpAddr, Ipv4Addr};

use anyhow::{bail, Result};
use cocoon_protocol::guest_network::{
    hosts_file, DnsConfig, HostEntry, Interface, Ipv4Cidr, Route,
};
use cocoon_protocol::net_config::MacAddress;
use cocoon_protocol::Operation;
use serde::{Deserialize, Serialize};

pub use passt::{passt_program, Passt};
pub use ports::{parse_ports, PublishedPort};

/// The guest's side of passt's network (slirp's addresses, as Podman and Docker's rootless
/// modes use).
pub const GUEST_ADDRESS: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 100);
pub const GUEST_PREFIX_LEN: u8 = 24;
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);
/// Locally administered, unicast.
pub const GUEST_MAC: MacAddress = MacAddress([0x02, 0x63, 0x6f, 0x63, 0x6f, 0x6e]);
/// passt's own default, the largest an Ethernet-framed IPv4 packet may be there.
pub const MTU: u16 = 65520;
pub const GUEST_INTERFACE: &str = "eth0";

/// What `--network` says.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NetworkMode {
    /// passt: outbound connections and published ports.
    #[default]
    Default,
    /// Loopback only.
    None,
}

impl NetworkMode {
    pub fn parse(text: &str) -> Result<Self> {
        match text {
            "default" | "passt" => Ok(Self::Default),
            "none" => Ok(Self::None),
            other => bail!(
                "--network '{other}' is not a network cocoon knows: use 'default' (passt: outbound and -p ports) or 'none' (loopback only)"
            ),
        }
    }
}

/// The network a container asked for, checked.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Network {
    pub mode: NetworkMode,
    pub ports: Vec<PublishedPort>,
    /// `--add-host` lines, in order.
    #[serde(default)]
    pub extra_hosts: Vec<HostEntry>,
}

impl Network {
    pub fn from_flags(network: &str, publish: &[String], add_host: &[String]) -> Result<Self> {
        let mode = NetworkMode::parse(network)?;
        let ports = parse_ports(publish)?;
        if mode == NetworkMode::None && !ports.is_empty() {
            bail!("-p needs a network: --network none has only loopback (drop -p, or use --network default)");
        }
        let extra_hosts = add_host
            .iter()
            .map(|h| parse_host_entry(h))
            .collect::<Result<_>>()?;
        Ok(Self {
            mode,
            ports,
            extra_hosts,
        })
    }

    /// The container's /etc/hosts lines after loopback's: its own name on its address (when it
    /// has one), then `--add-host`'s, as Docker writes them.
    pub fn hosts(&self, hostname: &str) -> Vec<HostEntry> {
        let own = (self.mode == NetworkMode::Default && !hostname.is_empty()).then(|| HostEntry {
            address: IpAddr::V4(GUEST_ADDRESS),
            names: vec![hostname.to_string()],
        });
        own.into_iter()
            .chain(self.extra_hosts.iter().cloned())
            .collect()
    }

    /// `cocoon ps`'s PORTS column: `127.0.0.1:8080->80/tcp, ...`.
    pub fn ports_column(&self) -> String {
        self.ports
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// `--add-host HOST:IP` (IPv6 too: the first ':' ends the name), checked as /etc/hosts takes it.
fn parse_host_entry(text: &str) -> Result<HostEntry> {
    let usage = "use HOST:IP, like db:192.0.2.7";
    let Some((name, address)) = text.split_once(':') else {
        bail!("--add-host '{text}': {usage}");
    };
    if address == "host-gateway" {
        bail!("--add-host '{text}': cocoon has no host-gateway: the guest cannot reach the host's own services (passt runs with --no-map-gw); give an address");
    }
    let address: IpAddr = address
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .map_err(|e| {
            anyhow::anyhow!("--add-host '{text}': '{address}' is not an IP address ({e}): {usage}")
        })?;
    let entry = HostEntry {
        address,
        names: vec![name.to_string()],
    };
    hosts_file(std::slice::from_ref(&entry))
        .map_err(|e| anyhow::anyhow!("--add-host '{text}': {e}"))?;
    Ok(entry)
}

/// The guest's side of passt's network, as the agent sets it up.
pub fn guest_setup() -> [Operation; 2] {
    let interface = Interface {
        mac: GUEST_MAC,
        name: GUEST_INTERFACE.into(),
        addresses: vec![Ipv4Cidr {
            address: GUEST_ADDRESS,
            prefix_len: GUEST_PREFIX_LEN,
        }],
        mtu: MTU,
    };
    let default_route = Route {
        destination: None,
        gateway: Some(GATEWAY),
        device: GUEST_INTERFACE.into(),
        source: None,
        mtu: None,
    };
    [
        Operation::UpdateInterface { interface },
        Operation::UpdateRoutes {
            routes: vec![default_route],
        },
    ]
}

/// The guest's DNS configuration: the host's, as Docker picks it.
pub fn guest_dns() -> DnsConfig {
    dns::host_dns()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_and_ports_are_checked_together() {
        assert_eq!(NetworkMode::parse("default").unwrap(), NetworkMode::Default);
        assert_eq!(NetworkMode::parse("none").unwrap(), NetworkMode::None);
        let e = NetworkMode::parse("host").unwrap_err().to_string();
        assert!(e.contains("use 'default'"), "{e}");
        let e = Network::from_flags("none", &["8080:80".into()], &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("--network none has only loopback"), "{e}");
        let network = Network::from_flags(
            "default",
            &["127.0.0.1:18080:80".into(), "53:53/udp".into()],
            &[],
        )
        .unwrap();
        assert_eq!(
            network.ports_column(),
            "127.0.0.1:18080->80/tcp, 0.0.0.0:53->53/udp"
        );
    }

    #[test]
    fn hosts_are_the_containers_own_name_then_add_host_lines() {
        let network = Network::from_flags(
            "default",
            &[],
            &["db:192.0.2.7".into(), "v6:2001:db8::1".into()],
        )
        .unwrap();
        let lines: Vec<String> = network
            .hosts("box")
            .iter()
            .map(|h| format!("{} {}", h.address, h.names.join(" ")))
            .collect();
        assert_eq!(lines, ["10.0.2.100 box", "192.0.2.7 db", "2001:db8::1 v6"]);
        let none = Network::from_flags("none", &[], &["db:192.0.2.7".into()]).unwrap();
        assert_eq!(
            none.hosts("box").len(),
            1,
            "no address of its own: only --add-host's"
        );
        for (bad, says) in [
            ("nocolon", "use HOST:IP"),
            ("db:999.1.1.1", "is not an IP address"),
            ("two words:10.0.0.1", "is not a host name"),
            ("gw:host-gateway", "no host-gateway"),
        ] {
            let e = Network::from_flags("default", &[], &[bad.into()])
                .unwrap_err()
                .to_string();
            assert!(
                e.starts_with(&format!("--add-host '{bad}'")) && e.contains(says),
                "{e}"
            );
        }
    }
}
