//! A blocking rtnetlink socket, for the agent (the guest's interfaces, routes, neighbours) and the
//! host side (a pod's tap and its tc redirects). One request at a time,
//! acknowledged or answered in full before the next. The message types are `netlink-packet-route`'s; the socket is `netlink-sys`'s (the crates
//! `rtnetlink` is built on — its async API would bring tokio into the agent for a handful of
//! requests made once per sandbox).

use std::io;

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

pub struct RouteSocket {
    socket: Socket,
    sequence: u32,
}

impl RouteSocket {
    pub fn open() -> io::Result<Self> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        Ok(Self {
            socket,
            sequence: 0,
        })
    }

    fn send(&mut self, message: RouteNetlinkMessage, flags: u16) -> io::Result<u32> {
        self.sequence = self.sequence.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | flags;
        header.sequence_number = self.sequence;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(message));
        packet.finalize();
        let mut buf = vec![0; packet.buffer_len()];
        packet.serialize(&mut buf);
        self.socket.send(&buf, 0)?;
        Ok(self.sequence)
    }

    /// Reads answers to request `sequence` until `done` says the request is over; `each` gets every
    /// message it carried.
    fn answers(
        &mut self,
        sequence: u32,
        mut each: impl FnMut(RouteNetlinkMessage),
    ) -> io::Result<()> {
        loop {
            let (datagram, _) = self.socket.recv_from_full()?;
            let mut at = 0;
            while at < datagram.len() {
                let packet = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&datagram[at..])
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
                let len = packet.header.length as usize;
                if len == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "a netlink message of length 0",
                    ));
                }
                at += len;
                if packet.header.sequence_number != sequence {
                    continue;
                }
                match packet.payload {
                    NetlinkPayload::Done(_) => return Ok(()),
                    NetlinkPayload::Error(e) if e.code.is_none() => return Ok(()),
                    NetlinkPayload::Error(e) => return Err(e.to_io()),
                    NetlinkPayload::InnerMessage(message) => each(message),
                    _ => {}
                }
            }
        }
    }

    /// Sends `message` with `flags` (NLM_F_CREATE, NLM_F_REPLACE...) and waits for its ack.
    pub fn request(&mut self, message: RouteNetlinkMessage, flags: u16) -> io::Result<()> {
        let sequence = self.send(message, flags | NLM_F_ACK)?;
        self.answers(sequence, |_| {})
    }

    /// Every link, with its attributes.
    pub fn links(&mut self) -> io::Result<Vec<netlink_packet_route::link::LinkMessage>> {
        let request = RouteNetlinkMessage::GetLink(Default::default());
        Ok(self
            .dump(request)?
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewLink(link) => Some(link),
                _ => None,
            })
            .collect())
    }

    /// The index of the first link one of whose attributes `matches` (its name, its address).
    pub fn link_index(
        &mut self,
        matches: impl Fn(&netlink_packet_route::link::LinkAttribute) -> bool,
    ) -> io::Result<Option<u32>> {
        Ok(self
            .links()?
            .into_iter()
            .find(|link| link.attributes.iter().any(&matches))
            .map(|link| link.header.index))
    }

    /// Every object a dump request (`RTM_GET*`) lists.
    pub fn dump(&mut self, message: RouteNetlinkMessage) -> io::Result<Vec<RouteNetlinkMessage>> {
        let sequence = self.send(message, NLM_F_DUMP)?;
        let mut all = Vec::new();
        self.answers(sequence, |m| all.push(m))?;
        Ok(all)
    }
}
