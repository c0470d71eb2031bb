//! `AddNeighbours`: permanent ARP entries (a CNI result's gateway, as Kata's AddARPNeighbors).

use cocoon_net::core::{NLM_F_CREATE, NLM_F_REPLACE};
use cocoon_net::route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState,
};
use cocoon_net::route::route::RouteType;
use cocoon_net::route::{AddressFamily, RouteNetlinkMessage};
use cocoon_protocol::guest_network::Neighbour;

use super::interface::link_by_name;
use crate::errors::{internal, AgentResult};
use cocoon_net::RouteSocket;

pub fn add_neighbours(neighbours: &[Neighbour]) -> AgentResult<()> {
    let mut socket = RouteSocket::open().map_err(|e| internal("opening rtnetlink", e))?;
    for neighbour in neighbours {
        let index = link_by_name(&mut socket, &neighbour.device)?;
        let mut message = NeighbourMessage::default();
        message.header.family = AddressFamily::Inet;
        message.header.ifindex = index;
        message.header.state = NeighbourState::Permanent;
        message.header.kind = RouteType::Unicast;
        message.attributes = vec![
            NeighbourAttribute::Destination(NeighbourAddress::Inet(neighbour.address)),
            NeighbourAttribute::LinkLayerAddress(neighbour.mac.0.to_vec()),
        ];
        socket
            .request(
                RouteNetlinkMessage::NewNeighbour(message),
                NLM_F_CREATE | NLM_F_REPLACE,
            )
            .map_err(|e| {
                internal(
                    &format!(
                        "adding neighbour {} ({}) on {}",
                        neighbour.address, neighbour.mac, neighbour.device
                    ),
                    e,
                )
            })?;
    }
    Ok(())
}
