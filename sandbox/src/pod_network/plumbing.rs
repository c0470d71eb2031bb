//! Inside the pod's namespace: what CNI gave the pod (its interface, addresses and routes), and
//! the tap that takes the interface's place for the guest.

use std::fs::File;
use std::net::IpAddr;

use cocoon_net::route::address::{AddressAttribute, AddressMessage};
use cocoon_net::route::link::{LinkAttribute, LinkFlags, LinkLayerType, LinkMessage};
use cocoon_net::route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol,
};
use cocoon_net::route::{AddressFamily, RouteNetlinkMessage};
use cocoon_net::RouteSocket;
use cocoon_protocol::guest_network::{Interface, Ipv4Cidr, Route};
use cocoon_protocol::net_config::{MacAddress, DEFAULT_MTU};

use super::tc::redirect;
use super::{PodInterface, PodNetworkError, GUEST_INTERFACE, TAP_NAME};

fn netlink(what: &str) -> impl FnOnce(std::io::Error) -> PodNetworkError + '_ {
    move |source| PodNetworkError::Netlink {
        what: what.to_string(),
        source,
    }
}

fn name_of(link: &LinkMessage) -> Option<&str> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(name) => Some(name.as_str()),
        _ => None,
    })
}

/// The IPv4 addresses of link `index`.
fn addresses_of(socket: &mut RouteSocket, index: u32) -> Result<Vec<Ipv4Cidr>, PodNetworkError> {
    let all = socket
        .dump(RouteNetlinkMessage::GetAddress(AddressMessage::default()))
        .map_err(netlink("listing addresses"))?;
    Ok(all
        .into_iter()
        .filter_map(|m| match m {
            RouteNetlinkMessage::NewAddress(a)
                if a.header.index == index && a.header.family == AddressFamily::Inet =>
            {
                let prefix_len = a.header.prefix_len;
                a.attributes.into_iter().find_map(|attr| match attr {
                    AddressAttribute::Local(IpAddr::V4(address))
                    | AddressAttribute::Address(IpAddr::V4(address)) => Some(Ipv4Cidr {
                        address,
                        prefix_len,
                    }),
                    _ => None,
                })
            }
            _ => None,
        })
        .collect())
}

/// Routes of the main table through link `index`, as the guest gets them: those the kernel made
/// for the addresses themselves are left out (the guest's kernel makes its own).
fn routes_of(socket: &mut RouteSocket, index: u32) -> Result<Vec<Route>, PodNetworkError> {
    let mut request = RouteMessage::default();
    request.header.address_family = AddressFamily::Inet;
    let all = socket
        .dump(RouteNetlinkMessage::GetRoute(request))
        .map_err(netlink("listing routes"))?;
    let mut routes = Vec::new();
    for message in all {
        let RouteNetlinkMessage::NewRoute(route) = message else {
            continue;
        };
        if route.header.table != RouteHeader::RT_TABLE_MAIN
            || route.header.protocol == RouteProtocol::Kernel
            || !route.attributes.contains(&RouteAttribute::Oif(index))
        {
            continue;
        }
        let mut destination = None;
        let mut gateway = None;
        let mut source = None;
        for attribute in &route.attributes {
            match attribute {
                RouteAttribute::Destination(RouteAddress::Inet(a)) => {
                    destination = Some(Ipv4Cidr {
                        address: *a,
                        prefix_len: route.header.destination_prefix_length,
                    })
                }
                RouteAttribute::Gateway(RouteAddress::Inet(a)) => gateway = Some(*a),
                RouteAttribute::PrefSource(RouteAddress::Inet(a)) => source = Some(*a),
                _ => {}
            }
        }
        routes.push(Route {
            destination,
            gateway,
            device: GUEST_INTERFACE.into(),
            source,
            mtu: None,
        });
    }
    Ok(routes)
}

/// The pod's interface: the first Ethernet link with an IPv4 address (CNI's veth, usually
/// eth0). None when the namespace has no such link.
pub fn find_pod_interface() -> Result<Option<PodInterface>, PodNetworkError> {
    let mut socket = RouteSocket::open().map_err(netlink("opening rtnetlink"))?;
    let links = socket.links().map_err(netlink("listing interfaces"))?;
    for link in links {
        if link.header.link_layer_type != LinkLayerType::Ether {
            continue;
        }
        let index = link.header.index;
        let addresses = addresses_of(&mut socket, index)?;
        if addresses.is_empty() {
            continue;
        }
        let mac = link.attributes.iter().find_map(|a| match a {
            LinkAttribute::Address(bytes) => <[u8; 6]>::try_from(bytes.as_slice()).ok(),
            _ => None,
        });
        let Some(mac) = mac else { continue };
        let mtu = link
            .attributes
            .iter()
            .find_map(|a| match a {
                LinkAttribute::Mtu(mtu) => u16::try_from(*mtu).ok(),
                _ => None,
            })
            .unwrap_or(DEFAULT_MTU);
        let routes = routes_of(&mut socket, index)?;
        return Ok(Some(PodInterface {
            veth: name_of(&link).unwrap_or_default().to_string(),
            veth_index: index,
            interface: Interface {
                mac: MacAddress(mac),
                name: GUEST_INTERFACE.into(),
                addresses,
                mtu,
            },
            routes,
        }));
    }
    Ok(None)
}

/// Makes the tap (the veth's MTU, up) and redirects veth ↔ tap.
pub fn join_tap(pod: &PodInterface) -> Result<File, PodNetworkError> {
    let tap = cocoon_net::tap::open_tap(TAP_NAME)?;
    let mut socket = RouteSocket::open().map_err(netlink("opening rtnetlink"))?;
    let tap_index = socket
        .link_index(|a| matches!(a, LinkAttribute::IfName(n) if n == TAP_NAME))
        .map_err(netlink("listing interfaces"))?
        .ok_or_else(|| PodNetworkError::Netlink {
            what: format!("finding {TAP_NAME}"),
            source: std::io::Error::from_raw_os_error(libc::ENODEV),
        })?;
    let mut link = LinkMessage::default();
    link.header.index = tap_index;
    link.header.flags = LinkFlags::Up;
    link.header.change_mask = LinkFlags::Up;
    link.attributes = vec![LinkAttribute::Mtu(u32::from(pod.interface.mtu))];
    socket
        .request(RouteNetlinkMessage::SetLink(link), 0)
        .map_err(netlink("setting the tap's MTU and bringing it up"))?;
    redirect(&mut socket, pod.veth_index, tap_index)?;
    if let Err(e) = redirect(&mut socket, tap_index, pod.veth_index) {
        let _ = super::tc::remove_ingress(pod.veth_index);
        return Err(e);
    }
    Ok(tap)
}
