//! The guest's DNS servers, picked from the host's as Docker does: the host's resolv.conf without
//! loopback servers (the guest cannot reach them; systemd-resolved's 127.0.0.53 stands for the
//! servers in /run/systemd/resolve/resolv.conf, which are used instead), Google's public servers
//! when nothing is left; its search domains and options kept. IPv4 servers only: the guest has no
//! IPv6.

use std::net::Ipv4Addr;

use cocoon_protocol::guest_network::DnsConfig;

const HOST_RESOLV_CONF: &str = "/etc/resolv.conf";
const RESOLVED_UPSTREAM: &str = "/run/systemd/resolve/resolv.conf";
/// Docker's fallback.
const FALLBACK_SERVERS: [&str; 2] = ["8.8.8.8", "8.8.4.4"];

/// What a resolv.conf says, loopback servers left out.
fn parse(text: &str) -> (DnsConfig, bool) {
    let mut dns = DnsConfig::default();
    let mut had_loopback = false;
    for line in text.lines() {
        let mut words = line.split_whitespace();
        match words.next() {
            Some("nameserver") => match words.next().map(str::parse::<Ipv4Addr>) {
                Some(Ok(ip)) if ip.is_loopback() => had_loopback = true,
                Some(Ok(ip)) => dns.servers.push(ip.to_string()),
                _ => {}
            },
            Some("search") | Some("domain") => dns.search = words.map(String::from).collect(),
            Some("options") => dns.options.extend(words.map(String::from)),
            _ => {}
        }
    }
    (dns, had_loopback)
}

fn pick(host: &str, upstream: Option<&str>) -> DnsConfig {
    let (mut dns, had_loopback) = parse(host);
    if dns.servers.is_empty() && had_loopback {
        if let Some(upstream) = upstream {
            dns.servers = parse(upstream).0.servers;
        }
    }
    if dns.servers.is_empty() {
        dns.servers = FALLBACK_SERVERS.iter().map(|s| s.to_string()).collect();
    }
    dns
}

pub fn host_dns() -> DnsConfig {
    let host = std::fs::read_to_string(HOST_RESOLV_CONF).unwrap_or_default();
    let upstream = std::fs::read_to_string(RESOLVED_UPSTREAM).ok();
    pick(&host, upstream.as_deref())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn servers_are_picked_as_docker_does() {
        let dns = pick("nameserver 192.0.2.53\nnameserver 127.0.0.1\nsearch a.example b.example\noptions ndots:2\n", None);
        assert_eq!(dns.servers, ["192.0.2.53"]);
        assert_eq!(dns.search, ["a.example", "b.example"]);
        assert_eq!(dns.options, ["ndots:2"]);
        // systemd-resolved's stub: its upstream servers instead.
        let dns = pick(
            "nameserver 127.0.0.53\noptions edns0\n",
            Some("nameserver 198.51.100.1\n"),
        );
        assert_eq!(dns.servers, ["198.51.100.1"]);
        assert_eq!(dns.options, ["edns0"]);
        // Nothing usable: Docker's fallback. IPv6 servers are not the guest's.
        let dns = pick("nameserver ::1\nnameserver fd00::1\n", None);
        assert_eq!(dns.servers, FALLBACK_SERVERS);
    }
}
