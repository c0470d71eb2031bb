//! `UpdateInterface`: the guest interface with the MAC the host gave its virtio-net device gets
//! the name, MTU and IPv4 addresses the host asks for (the ones it had before are removed), and is
//! brought up.

use std::net::IpAddr;

use cocoon_net::core::{NLM_F_CREATE, NLM_F_REPLACE};
use cocoon_net::route::address::{AddressAttribute, AddressMessage, AddressScope};
use cocoon_net::route::link::{LinkAttribute, LinkFlags, LinkMessage};
use cocoon_net::route::{AddressFamily, RouteNetlinkMessage};
use cocoon_protocol::guest_network::Interface;
use cocoon_protocol::ErrorKind;

use crate::errors::{error, internal, AgentResult};
use cocoon_net::RouteSocket;

/// The kernel's limit on an interface name (IFNAMSIZ less the terminating NUL).
const MAX_NAME_LEN: usize = 15;

/// The index of the link whose hardware address is `mac`.
pub(super) fn link_by_mac(socket: &mut RouteSocket, mac: [u8; 6]) -> AgentResult<u32> {
    socket
        .link_index(|a| matches!(a, LinkAttribute::Address(a) if a[..] == mac[..]))
        .map_err(|e| internal("listing the guest's interfaces", e))?
        .ok_or_else(|| {
            error(
                ErrorKind::NotFound,
                format!(
                    "the guest has no interface with MAC {}: give the VM a network device with that MAC",
                    cocoon_protocol::net_config::MacAddress(mac)
                ),
            )
        })
}

/// The index of the link called `name`.
pub(super) fn link_by_name(socket: &mut RouteSocket, name: &str) -> AgentResult<u32> {
    socket
        .link_index(|a| matches!(a, LinkAttribute::IfName(n) if n == name))
        .map_err(|e| internal("listing the guest's interfaces", e))?
        .ok_or_else(|| {
            error(
                ErrorKind::NotFound,
                format!("the guest has no interface '{name}'"),
            )
        })
}

fn set_link(
    socket: &mut RouteSocket,
    index: u32,
    up: bool,
    attributes: Vec<LinkAttribute>,
) -> std::io::Result<()> {
    let mut link = LinkMessage::default();
    link.header.index = index;
    link.header.change_mask = LinkFlags::Up;
    if up {
        link.header.flags = LinkFlags::Up;
    }
    link.attributes = attributes;
    socket.request(RouteNetlinkMessage::SetLink(link), 0)
}

fn check(interface: &Interface) -> AgentResult<()> {
    let name = &interface.name;
    if name.is_empty()
        || name.len() > MAX_NAME_LEN
        || name.contains(['/', ' ', ':'])
        || name == "."
        || name == ".."
    {
        return Err(error(
            ErrorKind::InvalidArgument,
            format!("interface name '{name}': use 1 to {MAX_NAME_LEN} bytes without '/', ':' or spaces, like eth0"),
        ));
    }
    if interface.mtu < cocoon_protocol::net_config::MIN_MTU {
        return Err(error(
            ErrorKind::InvalidArgument,
            format!(
                "MTU {} of {name}: IPv4 needs at least {}",
                interface.mtu,
                cocoon_protocol::net_config::MIN_MTU
            ),
        ));
    }
    Ok(())
}

pub fn update_interface(interface: &Interface) -> AgentResult<()> {
    check(interface)?;
    let name = &interface.name;
    let fails = |what: &str| {
        let what = format!("{what} of {name} ({})", interface.mac);
        move |e: std::io::Error| internal(&what, e)
    };
    let mut socket = RouteSocket::open().map_err(|e| internal("opening rtnetlink", e))?;
    let index = link_by_mac(&mut socket, interface.mac.0)?;
    // A link is renamed only while down.
    set_link(
        &mut socket,
        index,
        false,
        vec![
            LinkAttribute::IfName(name.clone()),
            LinkAttribute::Mtu(u32::from(interface.mtu)),
        ],
    )
    .map_err(fails("setting the name and MTU"))?;
    let addresses = socket
        .dump(RouteNetlinkMessage::GetAddress(AddressMessage::default()))
        .map_err(fails("listing the addresses"))?;
    for old in addresses {
        if let RouteNetlinkMessage::NewAddress(old) = old {
            if old.header.index == index && old.header.family == AddressFamily::Inet {
                socket
                    .request(RouteNetlinkMessage::DelAddress(old), 0)
                    .map_err(fails("removing an earlier address"))?;
            }
        }
    }
    for cidr in &interface.addresses {
        let mut address = AddressMessage::default();
        address.header.family = AddressFamily::Inet;
        address.header.prefix_len = cidr.prefix_len;
        address.header.scope = AddressScope::Universe;
        address.header.index = index;
        let ip = IpAddr::V4(cidr.address);
        address.attributes = vec![AddressAttribute::Local(ip), AddressAttribute::Address(ip)];
        if cidr.prefix_len < 31 {
            let broadcast = u32::from(cidr.network()) | (u32::MAX >> cidr.prefix_len);
            address
                .attributes
                .push(AddressAttribute::Broadcast(broadcast.into()));
        }
        socket
            .request(
                RouteNetlinkMessage::NewAddress(address),
                NLM_F_CREATE | NLM_F_REPLACE,
            )
            .map_err(fails(&format!("adding address {cidr}")))?;
    }
    set_link(&mut socket, index, true, Vec::new()).map_err(fails("bringing up"))?;
    let addresses: Vec<_> = interface.addresses.iter().map(|c| c.address).collect();
    if let Err(e) = super::announce::announce(index, interface.mac.0, &addresses) {
        // The link works without it; a peer learns the MAC when the guest first speaks.
        tracing::warn!("announcing {name}'s addresses (gratuitous ARP): {e}");
    }
    Ok(())
}
