//! Anti-spoofing: what a guest may send. A frame must come from the guest's own MAC; IPv4 and
//! ARP from its own address, where the host assigned one; nothing may go to the link-local
//! metadata range (169.254.0.0/16) unless allowed; and VLAN-tagged frames, which would carry
//! whatever they like past these checks, never go out.
//!
//! Written by hand: the checks read a few fixed offsets of the Ethernet, ARP and IPv4 headers,
//! and a packet-parsing crate would parse far more of a hostile frame than this needs.

use std::fmt;
use std::net::Ipv4Addr;

const ETH_HEADER_LEN: usize = 14;
const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_ARP: u16 = 0x0806;
/// 802.1Q, 802.1ad and the old QinQ tag.
const ETHERTYPES_VLAN: [u16; 3] = [0x8100, 0x88a8, 0x9100];
const IPV4_MIN_HEADER_LEN: usize = 20;
const ARP_IPV4_LEN: usize = 28;

/// Why a frame was dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Dropped {
    /// Shorter than the headers it claims.
    Runt,
    SourceMac,
    SourceIpv4,
    ArpSender,
    Vlan,
    Metadata,
}

impl fmt::Display for Dropped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Runt => "shorter than its headers",
            Self::SourceMac => "from another MAC address",
            Self::SourceIpv4 => "from another IPv4 address",
            Self::ArpSender => "an ARP packet for another sender",
            Self::Vlan => "VLAN-tagged",
            Self::Metadata => "to the metadata range 169.254.0.0/16",
        })
    }
}

/// The guest's identity and what it may reach.
#[derive(Clone, Debug)]
pub struct Filter {
    pub mac: [u8; 6],
    pub ipv4: Option<Ipv4Addr>,
    pub allow_metadata: bool,
}

fn ipv4_at(frame: &[u8], at: usize) -> Ipv4Addr {
    Ipv4Addr::new(frame[at], frame[at + 1], frame[at + 2], frame[at + 3])
}

fn is_metadata(address: Ipv4Addr) -> bool {
    address.octets()[..2] == [169, 254]
}

impl Filter {
    /// Checks one Ethernet frame (no virtio-net header) the guest sent.
    pub fn check(&self, frame: &[u8]) -> Result<(), Dropped> {
        if frame.len() < ETH_HEADER_LEN {
            return Err(Dropped::Runt);
        }
        if frame[6..12] != self.mac {
            return Err(Dropped::SourceMac);
        }
        let ethertype = u16::from_be_bytes([frame[12], frame[13]]);
        let payload = ETH_HEADER_LEN;
        match ethertype {
            t if ETHERTYPES_VLAN.contains(&t) => Err(Dropped::Vlan),
            ETHERTYPE_IPV4 => {
                if frame.len() < payload + IPV4_MIN_HEADER_LEN {
                    return Err(Dropped::Runt);
                }
                let source = ipv4_at(frame, payload + 12);
                if self.ipv4.is_some_and(|own| own != source) {
                    return Err(Dropped::SourceIpv4);
                }
                if !self.allow_metadata && is_metadata(ipv4_at(frame, payload + 16)) {
                    return Err(Dropped::Metadata);
                }
                Ok(())
            }
            ETHERTYPE_ARP => {
                if frame.len() < payload + ARP_IPV4_LEN {
                    return Err(Dropped::Runt);
                }
                if frame[payload + 8..payload + 14] != self.mac {
                    return Err(Dropped::ArpSender);
                }
                // A sender address of 0.0.0.0 is an address probe (RFC 5227), which claims
                // nothing.
                let sender = ipv4_at(frame, payload + 14);
                if self
                    .ipv4
                    .is_some_and(|own| own != sender && !sender.is_unspecified())
                {
                    return Err(Dropped::ArpSender);
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GUEST_MAC: [u8; 6] = [2, 0, 0, 0, 0, 9];
    const GUEST_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);

    fn filter() -> Filter {
        Filter {
            mac: GUEST_MAC,
            ipv4: Some(GUEST_IP),
            allow_metadata: false,
        }
    }

    fn ethernet(source: [u8; 6], ethertype: u16, payload: &[u8]) -> Vec<u8> {
        let mut frame = vec![0xff; 6];
        frame.extend_from_slice(&source);
        frame.extend_from_slice(&ethertype.to_be_bytes());
        frame.extend_from_slice(payload);
        frame
    }

    fn ipv4(source: Ipv4Addr, destination: Ipv4Addr) -> Vec<u8> {
        let mut header = vec![0x45, 0, 0, 20, 0, 0, 0, 0, 64, 17, 0, 0];
        header.extend_from_slice(&source.octets());
        header.extend_from_slice(&destination.octets());
        header
    }

    fn arp(sender_mac: [u8; 6], sender_ip: Ipv4Addr) -> Vec<u8> {
        let mut packet = vec![0, 1, 8, 0, 6, 4, 0, 1];
        packet.extend_from_slice(&sender_mac);
        packet.extend_from_slice(&sender_ip.octets());
        packet.extend_from_slice(&[0; 6]);
        packet.extend_from_slice(&[10, 0, 0, 1]);
        packet
    }

    #[test]
    fn the_guests_own_frames_pass() {
        let f = filter();
        let to_peer = ipv4(GUEST_IP, Ipv4Addr::new(10, 0, 0, 1));
        assert_eq!(
            f.check(&ethernet(GUEST_MAC, ETHERTYPE_IPV4, &to_peer)),
            Ok(())
        );
        let probe = arp(GUEST_MAC, Ipv4Addr::UNSPECIFIED);
        assert_eq!(f.check(&ethernet(GUEST_MAC, ETHERTYPE_ARP, &probe)), Ok(()));
        assert_eq!(
            f.check(&ethernet(
                GUEST_MAC,
                ETHERTYPE_ARP,
                &arp(GUEST_MAC, GUEST_IP)
            )),
            Ok(())
        );
        assert_eq!(f.check(&ethernet(GUEST_MAC, 0x86dd, &[0; 40])), Ok(()));
    }

    #[test]
    fn spoofed_tagged_short_and_metadata_frames_are_dropped() {
        let f = filter();
        let other_mac = [2, 0, 0, 0, 0, 10];
        let other_ip = Ipv4Addr::new(10, 0, 0, 3);
        let peer = Ipv4Addr::new(10, 0, 0, 1);
        let cases = [
            (
                ethernet(other_mac, ETHERTYPE_IPV4, &ipv4(GUEST_IP, peer)),
                Dropped::SourceMac,
            ),
            (
                ethernet(GUEST_MAC, ETHERTYPE_IPV4, &ipv4(other_ip, peer)),
                Dropped::SourceIpv4,
            ),
            (
                ethernet(
                    GUEST_MAC,
                    ETHERTYPE_IPV4,
                    &ipv4(GUEST_IP, Ipv4Addr::new(169, 254, 169, 254)),
                ),
                Dropped::Metadata,
            ),
            (
                ethernet(GUEST_MAC, ETHERTYPE_ARP, &arp(other_mac, GUEST_IP)),
                Dropped::ArpSender,
            ),
            (
                ethernet(GUEST_MAC, ETHERTYPE_ARP, &arp(GUEST_MAC, other_ip)),
                Dropped::ArpSender,
            ),
            (ethernet(GUEST_MAC, 0x8100, &[0; 60]), Dropped::Vlan),
            (
                ethernet(GUEST_MAC, ETHERTYPE_IPV4, &[0x45; 10]),
                Dropped::Runt,
            ),
            (ethernet(GUEST_MAC, ETHERTYPE_ARP, &[0; 20]), Dropped::Runt),
            (GUEST_MAC.to_vec(), Dropped::Runt),
        ];
        for (frame, why) in cases {
            assert_eq!(f.check(&frame), Err(why), "{why}");
        }
    }

    #[test]
    fn metadata_may_be_allowed_and_an_unassigned_address_is_not_checked() {
        let f = Filter {
            ipv4: None,
            allow_metadata: true,
            ..filter()
        };
        let metadata = ipv4(
            Ipv4Addr::new(192, 168, 1, 5),
            Ipv4Addr::new(169, 254, 169, 254),
        );
        assert_eq!(
            f.check(&ethernet(GUEST_MAC, ETHERTYPE_IPV4, &metadata)),
            Ok(())
        );
    }
}
