//! The traffic-control half: an ingress qdisc on an interface, and on it a u32 filter matching
//! every frame with a mirred action redirecting it to another interface's egress (what
//! `tc filter add dev A parent ffff: protocol all u32 match u8 0 0 action mirred egress redirect
//! dev B` sets up).

use cocoon_net::core::{NLM_F_CREATE, NLM_F_EXCL};
use cocoon_net::route::tc::{
    TcAction, TcActionAttribute, TcActionGeneric, TcActionMirrorOption, TcActionOption,
    TcActionType, TcAttribute, TcFilterU32Option, TcHandle, TcMessage, TcMirror,
    TcMirrorActionType, TcOption, TcU32Key, TcU32Selector, TcU32SelectorFlags,
};
use cocoon_net::route::RouteNetlinkMessage;
use cocoon_net::RouteSocket;

use super::PodNetworkError;

/// `ffff:`, the ingress qdisc's handle.
const INGRESS_HANDLE: TcHandle = TcHandle {
    major: 0xffff,
    minor: 0,
};
/// ETH_P_ALL in network byte order, as a filter's protocol.
const ALL_PROTOCOLS: u32 = (libc::ETH_P_ALL as u16).to_be() as u32;
const PRIORITY: u32 = 1;

fn netlink(what: String) -> impl FnOnce(std::io::Error) -> PodNetworkError {
    move |source| PodNetworkError::Netlink { what, source }
}

fn ingress_qdisc(index: u32) -> TcMessage {
    let mut qdisc = TcMessage::with_index(index as i32);
    qdisc.header.parent = TcHandle::INGRESS;
    qdisc.header.handle = INGRESS_HANDLE;
    qdisc.attributes = vec![TcAttribute::Kind("ingress".into())];
    qdisc
}

/// Redirects every frame arriving on `from` to `to`'s egress.
pub fn redirect(socket: &mut RouteSocket, from: u32, to: u32) -> Result<(), PodNetworkError> {
    socket
        .request(
            RouteNetlinkMessage::NewQueueDiscipline(ingress_qdisc(from)),
            NLM_F_CREATE | NLM_F_EXCL,
        )
        .map_err(netlink(format!(
            "adding an ingress qdisc to interface {from}"
        )))?;
    let mut selector = TcU32Selector::default();
    selector.flags = TcU32SelectorFlags::Terminal;
    selector.nkeys = 1;
    selector.keys = vec![TcU32Key::default()];
    let mut generic = TcActionGeneric::default();
    generic.action = TcActionType::Stolen;
    let mut mirror = TcMirror::default();
    mirror.generic = generic;
    mirror.eaction = TcMirrorActionType::EgressRedir;
    mirror.ifindex = to;
    let mut action = TcAction::default();
    action.tab = 1;
    action.attributes = vec![
        TcActionAttribute::Kind("mirred".into()),
        TcActionAttribute::Options(vec![TcActionOption::Mirror(TcActionMirrorOption::Parms(
            mirror,
        ))]),
    ];
    let mut filter = TcMessage::with_index(from as i32);
    filter.header.parent = INGRESS_HANDLE;
    filter.header.info = (PRIORITY << 16) | ALL_PROTOCOLS;
    filter.attributes = vec![
        TcAttribute::Kind("u32".into()),
        TcAttribute::Options(vec![
            TcOption::U32(TcFilterU32Option::Selector(selector)),
            TcOption::U32(TcFilterU32Option::Action(vec![action])),
        ]),
    ];
    socket
        .request(
            RouteNetlinkMessage::NewTrafficFilter(filter),
            NLM_F_CREATE | NLM_F_EXCL,
        )
        .map_err(netlink(format!(
            "adding a redirect filter from interface {from} to {to}"
        )))
}

/// Removes `index`'s ingress qdisc and its filters.
pub fn remove_ingress(index: u32) -> Result<(), PodNetworkError> {
    let mut socket = RouteSocket::open().map_err(netlink("opening rtnetlink".into()))?;
    socket
        .request(
            RouteNetlinkMessage::DelQueueDiscipline(ingress_qdisc(index)),
            0,
        )
        .map_err(netlink(format!(
            "removing the ingress qdisc of interface {index}"
        )))
}
