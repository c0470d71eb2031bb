//! A gratuitous ARP for each address an interface got (as `arping -U` sends): whoever is on the
//! link learns the guest's MAC at once. passt needs it to reach the guest at all — until it has
//! seen a frame from the guest it sends to the broadcast address, and Linux drops TCP that comes
//! as link-layer broadcast, so a published port would hang until the guest spoke first.
//! Written by hand: one 42-byte frame on a packet socket, which no netlink crate sends.

use std::io;
use std::net::Ipv4Addr;

const ETH_P_ARP: u16 = 0x0806;
const FRAME_LEN: usize = 42;

/// An ARP request from `mac` asking for `address` itself, to the broadcast address.
fn gratuitous_arp(mac: [u8; 6], address: Ipv4Addr) -> [u8; FRAME_LEN] {
    let mut frame = [0u8; FRAME_LEN];
    frame[0..6].fill(0xff);
    frame[6..12].copy_from_slice(&mac);
    frame[12..14].copy_from_slice(&ETH_P_ARP.to_be_bytes());
    // Ethernet, IPv4, 6-byte and 4-byte addresses, a request.
    frame[14..22].copy_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    frame[22..28].copy_from_slice(&mac);
    frame[28..32].copy_from_slice(&address.octets());
    // Target hardware address zero, target protocol address ours.
    frame[38..42].copy_from_slice(&address.octets());
    frame
}

pub(super) fn announce(index: u32, mac: [u8; 6], addresses: &[Ipv4Addr]) -> io::Result<()> {
    // SAFETY: socket(2) with constant arguments; the result is checked and owned below.
    let fd = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            i32::from(ETH_P_ARP.to_be()),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just created and nothing else owns it.
    let socket = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    // SAFETY: sockaddr_ll is plain data; all-zero is a valid value, filled in below.
    let mut to: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    to.sll_family = libc::AF_PACKET as u16;
    to.sll_protocol = ETH_P_ARP.to_be();
    to.sll_ifindex = index as i32;
    to.sll_halen = 6;
    to.sll_addr[..6].fill(0xff);
    for address in addresses {
        let frame = gratuitous_arp(mac, *address);
        // SAFETY: the frame and the address outlive the call; their lengths are theirs.
        let sent = unsafe {
            libc::sendto(
                std::os::fd::AsRawFd::as_raw_fd(&socket),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                std::ptr::addr_of!(to).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_announcement_asks_for_its_own_address() {
        let mac = [2, 0, 0, 0, 0, 0x2a];
        let frame = gratuitous_arp(mac, Ipv4Addr::new(10, 0, 2, 100));
        assert_eq!(&frame[..6], &[0xff; 6]);
        assert_eq!(&frame[6..12], &mac);
        assert_eq!(&frame[12..14], &[8, 6]);
        assert_eq!(&frame[20..22], &[0, 1], "a request");
        assert_eq!(&frame[22..28], &mac);
        assert_eq!(&frame[28..32], &[10, 0, 2, 100]);
        assert_eq!(&frame[32..38], &[0; 6]);
        assert_eq!(&frame[38..42], &[10, 0, 2, 100]);
    }
}
