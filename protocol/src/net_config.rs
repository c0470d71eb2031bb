//! A VM's network interface (virtio-net) in its configuration: which host backend carries its
//! frames, the guest's MAC, MTU and (for anti-spoofing) IPv4 address, whether the link-local
//! metadata range is reachable, and optional rate limits. The `--net` flag syntax and the JSON
//! `nets` entries are both this type.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The MTU a guest gets when none is given (Ethernet's).
pub const DEFAULT_MTU: u16 = 1500;
/// Smallest MTU IPv4 allows (RFC 791), largest a virtio-net frame can carry here.
pub const MIN_MTU: u16 = 68;
pub const MAX_MTU: u16 = 65520;

/// Where the device's frames go on the host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum NetBackendConfig {
    /// A tap interface the VMM opens by name (it must exist, or the VMM may create it).
    Tap(String),
    /// A tap file descriptor the VMM inherited, already attached to an interface.
    TapFd(i32),
    /// A connected stream socket the VMM inherited, carrying qemu's stream netdev framing
    /// (4-byte big-endian length, then the Ethernet frame): what `passt --fd` speaks.
    StreamFd(i32),
}

/// An Ethernet address, written `02:00:00:00:00:01`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct MacAddress(pub [u8; 6]);

impl MacAddress {
    /// A multicast address (lowest bit of the first byte) cannot be an interface's.
    pub fn is_multicast(&self) -> bool {
        self.0[0] & 1 == 1
    }
}

impl FromStr for MacAddress {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad =
            || format!("invalid MAC address '{s}': use six hex bytes, like 02:00:00:00:00:01");
        let mut bytes = [0u8; 6];
        let mut parts = s.split(':');
        for byte in &mut bytes {
            let part = parts.next().filter(|p| p.len() == 2).ok_or_else(bad)?;
            *byte = u8::from_str_radix(part, 16).map_err(|_| bad())?;
        }
        if parts.next().is_some() {
            return Err(bad());
        }
        let mac = Self(bytes);
        if mac.is_multicast() {
            return Err(format!(
                "MAC address '{s}' is a multicast address: an interface needs a unicast one (first byte even, like 02)"
            ));
        }
        Ok(mac)
    }
}

impl TryFrom<String> for MacAddress {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl fmt::Display for MacAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl From<MacAddress> for String {
    fn from(m: MacAddress) -> String {
        m.to_string()
    }
}

/// A token bucket: at most `bytes_per_sec` bytes and `packets_per_sec` frames a second (either
/// may be 0, meaning unlimited), with bursts of up to one second's worth.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    #[serde(default)]
    pub bytes_per_sec: u64,
    #[serde(default)]
    pub packets_per_sec: u64,
}

impl RateLimit {
    pub fn is_unlimited(&self) -> bool {
        self.bytes_per_sec == 0 && self.packets_per_sec == 0
    }
}

fn default_mtu() -> u16 {
    DEFAULT_MTU
}

/// One virtio-net device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetConfig {
    pub backend: NetBackendConfig,
    /// The guest's MAC; a random locally administered one if none is given. Frames the guest
    /// sends from any other are dropped.
    #[serde(default)]
    pub mac: Option<MacAddress>,
    #[serde(default = "default_mtu")]
    pub mtu: u16,
    /// The guest's IPv4 address, if the host assigned one: IPv4 and ARP frames the guest sends
    /// from any other are dropped.
    #[serde(default)]
    pub ipv4: Option<Ipv4Addr>,
    /// Let the guest reach 169.254.0.0/16 (cloud metadata services live there; frames to it are
    /// dropped otherwise).
    #[serde(default)]
    pub allow_metadata: bool,
    /// Guest to host.
    #[serde(default)]
    pub tx_rate: RateLimit,
    /// Host to guest.
    #[serde(default)]
    pub rx_rate: RateLimit,
}

impl NetConfig {
    pub fn new(backend: NetBackendConfig) -> Self {
        Self {
            backend,
            mac: None,
            mtu: DEFAULT_MTU,
            ipv4: None,
            allow_metadata: false,
            tx_rate: RateLimit::default(),
            rx_rate: RateLimit::default(),
        }
    }
}

/// The `--net` syntax, for messages.
pub const NET_FLAG_SYNTAX: &str = "tap=NAME|fd=N|stream-fd=N[,mac=MAC][,mtu=N][,ip=IPV4][,allow-metadata][,tx-bps=N][,tx-pps=N][,rx-bps=N][,rx-pps=N]";

impl FromStr for NetConfig {
    type Err = String;

    /// See [`NET_FLAG_SYNTAX`]; the backend comes first.
    fn from_str(s: &str) -> Result<Self, String> {
        let usage = |what: &str| format!("invalid net '{s}': {what} (use {NET_FLAG_SYNTAX})");
        let fd = |n: &str| {
            n.parse::<i32>()
                .ok()
                .filter(|fd| *fd > 2)
                .ok_or_else(|| usage("a descriptor is a number above 2"))
        };
        let number = |n: &str| n.parse::<u64>().map_err(|_| usage("rates are numbers"));
        let mut parts = s.split(',');
        let backend = match parts.next().and_then(|p| p.split_once('=')) {
            Some(("tap", name)) if !name.is_empty() => NetBackendConfig::Tap(name.into()),
            Some(("fd", n)) => NetBackendConfig::TapFd(fd(n)?),
            Some(("stream-fd", n)) => NetBackendConfig::StreamFd(fd(n)?),
            _ => return Err(usage("the backend comes first")),
        };
        let mut net = Self::new(backend);
        for part in parts {
            match part.split_once('=') {
                Some(("mac", mac)) => net.mac = Some(mac.parse()?),
                Some(("mtu", mtu)) => {
                    net.mtu = mtu.parse().map_err(|_| usage("the MTU is a number"))?
                }
                Some(("ip", ip)) => {
                    net.ipv4 = Some(ip.parse().map_err(|_| usage("ip= takes an IPv4 address"))?)
                }
                Some(("tx-bps", n)) => net.tx_rate.bytes_per_sec = number(n)?,
                Some(("tx-pps", n)) => net.tx_rate.packets_per_sec = number(n)?,
                Some(("rx-bps", n)) => net.rx_rate.bytes_per_sec = number(n)?,
                Some(("rx-pps", n)) => net.rx_rate.packets_per_sec = number(n)?,
                None if part == "allow-metadata" => net.allow_metadata = true,
                _ => return Err(usage(&format!("unknown option '{part}'"))),
            }
        }
        Ok(net)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_addresses_parse_print_and_refuse_multicast() {
        let mac: MacAddress = "02:ab:00:00:0F:01".parse().unwrap();
        assert_eq!(mac.0, [2, 0xab, 0, 0, 0xf, 1]);
        assert_eq!(mac.to_string(), "02:ab:00:00:0f:01");
        for bad in [
            "02:ab:00:00:0f",
            "02:ab:00:00:0f:01:02",
            "2:ab:00:00:0f:01",
            "zz:00:00:00:00:00",
        ] {
            let err = bad.parse::<MacAddress>().unwrap_err();
            assert!(err.contains("six hex bytes"), "{err}");
        }
        let err = "01:00:5e:00:00:01".parse::<MacAddress>().unwrap_err();
        assert!(err.contains("multicast"), "{err}");
    }

    #[test]
    fn net_flag_syntax() {
        let net: NetConfig = "tap=cocoon0,mac=02:00:00:00:00:07,mtu=9000,ip=10.0.0.2,allow-metadata,tx-bps=1000,rx-pps=10"
            .parse()
            .unwrap();
        assert_eq!(net.backend, NetBackendConfig::Tap("cocoon0".into()));
        assert_eq!(net.mac, Some(MacAddress([2, 0, 0, 0, 0, 7])));
        assert_eq!(net.mtu, 9000);
        assert_eq!(net.ipv4, Some(Ipv4Addr::new(10, 0, 0, 2)));
        assert!(net.allow_metadata);
        assert_eq!(net.tx_rate.bytes_per_sec, 1000);
        assert_eq!(net.rx_rate.packets_per_sec, 10);
        assert_eq!(
            "stream-fd=5".parse::<NetConfig>().unwrap(),
            NetConfig::new(NetBackendConfig::StreamFd(5))
        );
        assert_eq!(
            "fd=7".parse::<NetConfig>().unwrap().backend,
            NetBackendConfig::TapFd(7)
        );
        for bad in [
            "mac=02:00:00:00:00:01",
            "tap=",
            "fd=1",
            "fd=x",
            "tap=t,speed=5",
            "tap=t,mtu=big",
            "tap=t,ip=::1",
        ] {
            let err = bad.parse::<NetConfig>().unwrap_err();
            assert!(err.contains("tap=NAME|fd=N|stream-fd=N"), "{bad}: {err}");
        }
    }

    #[test]
    fn net_json_round_trip() {
        let json = r#"{"backend":{"stream_fd":4},"mac":"02:00:00:00:00:09","ipv4":"10.1.2.3","tx_rate":{"bytes_per_sec":5}}"#;
        let net: NetConfig = serde_json::from_str(json).unwrap();
        assert_eq!(net.backend, NetBackendConfig::StreamFd(4));
        assert_eq!(net.mtu, DEFAULT_MTU);
        assert_eq!(net.tx_rate.bytes_per_sec, 5);
        let back: NetConfig = serde_json::from_str(&serde_json::to_string(&net).unwrap()).unwrap();
        assert_eq!(back, net);
    }
}
