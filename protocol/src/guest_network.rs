//! The guest's network as the host asks the agent to set it up (modelled on Kata's
//! UpdateInterface / UpdateRoutes / AddARPNeighbors): an interface found by its MAC (the one the
//! host gave the virtio-net device), renamed, addressed and brought up; routes, link routes before
//! gateway routes; static neighbours. IPv4 only: the guest kernel has no IPv6.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::net_config::MacAddress;

/// An IPv4 address with its prefix length, written `10.0.2.100/24`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Ipv4Cidr {
    pub address: Ipv4Addr,
    pub prefix_len: u8,
}

impl Ipv4Cidr {
    pub fn new(address: Ipv4Addr, prefix_len: u8) -> Result<Self, String> {
        if prefix_len > 32 {
            return Err(format!(
                "prefix length {prefix_len} of {address}: an IPv4 prefix is 0 to 32 bits"
            ));
        }
        Ok(Self {
            address,
            prefix_len,
        })
    }

    /// The network's first address (the host bits cleared).
    pub fn network(&self) -> Ipv4Addr {
        let mask = u32::MAX
            .checked_shl(32 - u32::from(self.prefix_len))
            .unwrap_or(0);
        Ipv4Addr::from(u32::from(self.address) & mask)
    }

    /// Whether `address` is in this network.
    pub fn contains(&self, address: Ipv4Addr) -> bool {
        Self {
            address,
            prefix_len: self.prefix_len,
        }
        .network()
            == self.network()
    }
}

impl FromStr for Ipv4Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (address, prefix) = s.split_once('/').ok_or_else(|| {
            format!("'{s}': write an IPv4 address and its prefix, like 10.0.2.100/24")
        })?;
        let address: Ipv4Addr = address
            .parse()
            .map_err(|_| format!("'{s}': '{address}' is not an IPv4 address"))?;
        let prefix_len: u8 = prefix
            .parse()
            .map_err(|_| format!("'{s}': '{prefix}' is not a prefix length"))?;
        Self::new(address, prefix_len)
    }
}

impl TryFrom<String> for Ipv4Cidr {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<Ipv4Cidr> for String {
    fn from(cidr: Ipv4Cidr) -> String {
        cidr.to_string()
    }
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.address, self.prefix_len)
    }
}

/// One of the guest's interfaces: the device with `mac`, renamed `name`, with `addresses` and
/// `mtu`, brought up.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    pub mac: MacAddress,
    /// The name it gets in the guest ("eth0"; at most 15 bytes).
    pub name: String,
    pub addresses: Vec<Ipv4Cidr>,
    pub mtu: u16,
}

/// A route in the guest's main table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    /// None: the default route.
    pub destination: Option<Ipv4Cidr>,
    /// None: a link route (the destination is on `device`'s link).
    pub gateway: Option<Ipv4Addr>,
    /// The interface's name in the guest.
    pub device: String,
    #[serde(default)]
    pub source: Option<Ipv4Addr>,
    #[serde(default)]
    pub mtu: Option<u32>,
}

/// A permanent neighbour entry (ARP).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Neighbour {
    pub address: Ipv4Addr,
    pub mac: MacAddress,
    pub device: String,
}

/// The guest's /etc/resolv.conf, which every container gets.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsConfig {
    pub servers: Vec<String>,
    #[serde(default)]
    pub search: Vec<String>,
    #[serde(default)]
    pub options: Vec<String>,
}

impl DnsConfig {
    /// resolv.conf's text: `nameserver`, `search` and `options` lines.
    pub fn resolv_conf(&self) -> String {
        let mut text: String = self
            .servers
            .iter()
            .map(|s| format!("nameserver {s}\n"))
            .collect();
        if !self.search.is_empty() {
            text.push_str(&format!("search {}\n", self.search.join(" ")));
        }
        if !self.options.is_empty() {
            text.push_str(&format!("options {}\n", self.options.join(" ")));
        }
        text
    }
}

/// One /etc/hosts line: an address and the names it answers to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostEntry {
    pub address: std::net::IpAddr,
    pub names: Vec<String>,
}

/// Why a host name cannot go into /etc/hosts.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("'{0}' is not a host name for /etc/hosts: use letters, digits, '-', '_' and '.' only (1 to 253 bytes)")]
pub struct BadHostName(pub String);

/// The guest's /etc/hosts: the loopback names first, as Docker writes them, then `entries` in
/// order. A name that could break the file's lines (space, '#', a newline...) is refused.
pub fn hosts_file(entries: &[HostEntry]) -> Result<String, BadHostName> {
    let mut text =
        String::from("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n");
    for entry in entries {
        for name in &entry.names {
            let fits = !name.is_empty()
                && name.len() <= 253
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
            if !fits {
                return Err(BadHostName(name.clone()));
            }
        }
        if !entry.names.is_empty() {
            text.push_str(&format!("{}\t{}\n", entry.address, entry.names.join(" ")));
        }
    }
    Ok(text)
}

/// Routes in the order the kernel accepts them: each route's gateway must be reachable when it is
/// added, so link routes go first.
pub fn in_adding_order(routes: &[Route]) -> Vec<Route> {
    let mut sorted = routes.to_vec();
    sorted.sort_by_key(|r| r.gateway.is_some());
    sorted
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs_parse_print_and_contain() {
        let cidr: Ipv4Cidr = "10.0.2.100/24".parse().unwrap();
        assert_eq!(cidr.to_string(), "10.0.2.100/24");
        assert_eq!(cidr.network(), Ipv4Addr::new(10, 0, 2, 0));
        assert!(cidr.contains(Ipv4Addr::new(10, 0, 2, 2)));
        assert!(!cidr.contains(Ipv4Addr::new(10, 0, 3, 2)));
        let all: Ipv4Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(Ipv4Addr::new(192, 168, 1, 1)));
        for bad in ["10.0.2.100", "10.0.2.100/33", "10.0.2/24", "x/8"] {
            assert!(bad.parse::<Ipv4Cidr>().is_err(), "{bad}");
        }
        let json = serde_json::to_string(&cidr).unwrap();
        assert_eq!(json, "\"10.0.2.100/24\"");
        assert!(serde_json::from_str::<Ipv4Cidr>("\"1.2.3.4/40\"").is_err());
    }

    #[test]
    fn hosts_files_have_loopback_then_entries_and_refuse_names_that_break_lines() {
        let entry = |address: &str, names: &[&str]| HostEntry {
            address: address.parse().unwrap(),
            names: names.iter().map(|n| n.to_string()).collect(),
        };
        assert_eq!(
            hosts_file(&[
                entry("10.0.2.100", &["box"]),
                entry("192.0.2.7", &["db", "db.local"])
            ]),
            Ok(
                "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n\
                10.0.2.100\tbox\n192.0.2.7\tdb db.local\n"
                    .to_string()
            )
        );
        for bad in [
            "",
            "two words",
            "evil\n0.0.0.0 bank",
            "x#y",
            &"a".repeat(254),
        ] {
            assert_eq!(
                hosts_file(&[entry("10.0.0.1", &[bad])]),
                Err(BadHostName(bad.to_string())),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn link_routes_go_before_gateway_routes() {
        let route = |gateway: Option<Ipv4Addr>, destination: Option<&str>| Route {
            destination: destination.map(|d| d.parse().unwrap()),
            gateway,
            device: "eth0".into(),
            source: None,
            mtu: None,
        };
        let gw = Some(Ipv4Addr::new(10, 1, 0, 1));
        let routes = [
            route(gw, None),
            route(None, Some("10.1.0.0/16")),
            route(gw, Some("10.9.0.0/16")),
        ];
        let sorted = in_adding_order(&routes);
        assert_eq!(sorted[0], routes[1]);
        assert_eq!(&sorted[1..], &[routes[0].clone(), routes[2].clone()]);
    }

    #[test]
    fn resolv_conf_has_servers_search_and_options() {
        let dns = DnsConfig {
            servers: vec!["10.0.2.3".into(), "1.1.1.1".into()],
            search: vec!["svc.cluster.local".into(), "cluster.local".into()],
            options: vec!["ndots:5".into()],
        };
        assert_eq!(
            dns.resolv_conf(),
            "nameserver 10.0.2.3\nnameserver 1.1.1.1\nsearch svc.cluster.local cluster.local\noptions ndots:5\n"
        );
    }
}
