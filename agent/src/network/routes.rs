//! `UpdateRoutes`: routes in the guest's main table, link routes before gateway routes (a gateway
//! must be reachable when its route is added). A route that exists already is replaced.

use cocoon_net::core::{NLM_F_CREATE, NLM_F_REPLACE};
use cocoon_net::route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteMetric, RouteProtocol,
    RouteScope, RouteType,
};
use cocoon_net::route::{AddressFamily, RouteNetlinkMessage};
use cocoon_protocol::guest_network::{in_adding_order, Route};

use super::interface::link_by_name;
use crate::errors::{internal, AgentResult};
use cocoon_net::RouteSocket;

fn message(route: &Route, index: u32) -> RouteMessage {
    let mut message = RouteMessage::default();
    message.header.address_family = AddressFamily::Inet;
    message.header.table = RouteHeader::RT_TABLE_MAIN;
    message.header.protocol = RouteProtocol::Boot;
    message.header.kind = RouteType::Unicast;
    message.header.scope = if route.gateway.is_some() {
        RouteScope::Universe
    } else {
        RouteScope::Link
    };
    let mut attributes = vec![RouteAttribute::Oif(index)];
    if let Some(destination) = route.destination {
        message.header.destination_prefix_length = destination.prefix_len;
        attributes.push(RouteAttribute::Destination(RouteAddress::Inet(
            destination.network(),
        )));
    }
    if let Some(gateway) = route.gateway {
        attributes.push(RouteAttribute::Gateway(RouteAddress::Inet(gateway)));
    }
    if let Some(source) = route.source {
        attributes.push(RouteAttribute::PrefSource(RouteAddress::Inet(source)));
    }
    if let Some(mtu) = route.mtu {
        attributes.push(RouteAttribute::Metrics(vec![RouteMetric::Mtu(mtu)]));
    }
    message.attributes = attributes;
    message
}

fn describe(route: &Route) -> String {
    let destination = route
        .destination
        .map_or_else(|| "default".to_string(), |d| d.to_string());
    match route.gateway {
        Some(gateway) => format!("{destination} via {gateway} dev {}", route.device),
        None => format!("{destination} dev {}", route.device),
    }
}

pub fn update_routes(routes: &[Route]) -> AgentResult<()> {
    let mut socket = RouteSocket::open().map_err(|e| internal("opening rtnetlink", e))?;
    for route in in_adding_order(routes) {
        let index = link_by_name(&mut socket, &route.device)?;
        socket
            .request(
                RouteNetlinkMessage::NewRoute(message(&route, index)),
                NLM_F_CREATE | NLM_F_REPLACE,
            )
            .map_err(|e| internal(&format!("adding route {}", describe(&route)), e))?;
    }
    Ok(())
}
