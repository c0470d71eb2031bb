//! `-p [IP:]HOSTPORT:CONTAINERPORT[/tcp|/udp]`, as Docker writes it, for passt's `-t`/`-u`.

use std::fmt;
use std::net::Ipv4Addr;

use anyhow::{anyhow, bail, Result};
use serde::{Deserialize, Serialize};

const MAX_PORTS: usize = 64;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    Tcp,
    Udp,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishedPort {
    /// None: every host address.
    pub host_ip: Option<Ipv4Addr>,
    pub host_port: u16,
    pub container_port: u16,
    pub protocol: Protocol,
}

impl PublishedPort {
    pub fn parse(text: &str) -> Result<Self> {
        let bad = |why: &str| {
            anyhow!(
                "-p '{text}': {why}: use [IP:]HOSTPORT:CONTAINERPORT[/udp], like 127.0.0.1:8080:80"
            )
        };
        let (ports, protocol) = match text.rsplit_once('/') {
            Some((ports, "tcp")) => (ports, Protocol::Tcp),
            Some((ports, "udp")) => (ports, Protocol::Udp),
            Some(_) => return Err(bad("the protocol is tcp or udp")),
            None => (text, Protocol::Tcp),
        };
        let parts: Vec<&str> = ports.split(':').collect();
        let (host_ip, host_port, container_port) = match parts[..] {
            [host, container] => (None, host, container),
            [ip, host, container] => {
                let ip: Ipv4Addr = ip
                    .parse()
                    .map_err(|_| bad(&format!("'{ip}' is not an IPv4 address")))?;
                (Some(ip), host, container)
            }
            _ => return Err(bad("give a host port and a container port")),
        };
        let port = |p: &str| -> Result<u16> {
            match p.parse::<u16>() {
                Ok(0) | Err(_) => Err(bad(&format!("'{p}' is not a port (1-65535)"))),
                Ok(port) => Ok(port),
            }
        };
        Ok(Self {
            host_ip,
            host_port: port(host_port)?,
            container_port: port(container_port)?,
            protocol,
        })
    }

    /// passt's `-t`/`-u` value: `[ADDR/]HOSTPORT:GUESTPORT`.
    pub fn passt_spec(&self) -> String {
        let address = self.host_ip.map(|ip| format!("{ip}/")).unwrap_or_default();
        format!("{address}{}:{}", self.host_port, self.container_port)
    }

    pub fn passt_flag(&self) -> &'static str {
        match self.protocol {
            Protocol::Tcp => "-t",
            Protocol::Udp => "-u",
        }
    }

    /// Fails, naming the port, when something on the host holds it already (passt would only say
    /// so in its log after the VM booted).
    pub fn check_free(&self) -> Result<()> {
        let ip = self.host_ip.unwrap_or(Ipv4Addr::UNSPECIFIED);
        let taken = match self.protocol {
            Protocol::Tcp => std::net::TcpListener::bind((ip, self.host_port)).err(),
            Protocol::Udp => std::net::UdpSocket::bind((ip, self.host_port)).err(),
        };
        match taken {
            None => Ok(()),
            Some(e) => bail!(
                "-p {self}: host port {} cannot be bound ({e}): choose a free one",
                self.host_port
            ),
        }
    }
}

impl fmt::Display for PublishedPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ip = self.host_ip.unwrap_or(Ipv4Addr::UNSPECIFIED);
        let protocol = match self.protocol {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        };
        write!(
            f,
            "{ip}:{}->{}/{protocol}",
            self.host_port, self.container_port
        )
    }
}

/// Every `-p`, checked; a host port given twice is refused.
pub fn parse_ports(specs: &[String]) -> Result<Vec<PublishedPort>> {
    if specs.len() > MAX_PORTS {
        bail!("at most {MAX_PORTS} -p ports per container");
    }
    let ports: Vec<PublishedPort> = specs
        .iter()
        .map(|s| PublishedPort::parse(s))
        .collect::<Result<_>>()?;
    for (i, port) in ports.iter().enumerate() {
        if ports[..i]
            .iter()
            .any(|p| p.host_port == port.host_port && p.protocol == port.protocol)
        {
            bail!("-p {port}: host port {} is published twice", port.host_port);
        }
    }
    Ok(ports)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dockers_syntax_parses_into_passts() {
        let p = PublishedPort::parse("127.0.0.1:18080:80").unwrap();
        assert_eq!(p.passt_flag(), "-t");
        assert_eq!(p.passt_spec(), "127.0.0.1/18080:80");
        let p = PublishedPort::parse("5353:53/udp").unwrap();
        assert_eq!(
            (p.passt_flag(), p.passt_spec()),
            ("-u", "5353:53".to_string())
        );
        assert_eq!(p.to_string(), "0.0.0.0:5353->53/udp");
        for bad in [
            "80",
            "x:80",
            "0:80",
            "80:70000",
            "1.2.3:80:80",
            "80:80/sctp",
            "a:b:c:d",
        ] {
            let e = PublishedPort::parse(bad).unwrap_err().to_string();
            assert!(e.contains("use [IP:]HOSTPORT:CONTAINERPORT"), "{bad}: {e}");
        }
        let e = parse_ports(&["8080:80".into(), "8080:81".into()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("published twice"), "{e}");
        parse_ports(&["8080:80".into(), "8080:80/udp".into()]).unwrap();
    }

    #[test]
    fn a_taken_port_is_refused() {
        let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = held.local_addr().unwrap().port();
        let p = PublishedPort::parse(&format!("127.0.0.1:{port}:80")).unwrap();
        let e = p.check_free().unwrap_err().to_string();
        assert!(e.contains("cannot be bound"), "{e}");
        drop(held);
        p.check_free().unwrap();
    }
}
