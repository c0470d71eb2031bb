//! The plumbing against this machine's kernel: a namespace of a holder thread's own stands for
//! the pod's, with a veth pair (`cni-a` the pod's end, with CNI-like address, MTU and default
//! route, `cni-b` the peer). Frames written to the tap come out at the peer, frames the peer sends
//! come out of the tap, and removing leaves no ingress qdisc. Root only; skipped, saying so, where
//! the namespace, veth or tun device cannot be had.

use std::io::{Read, Write};
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::*;

const POD_MAC: &str = "02:00:00:00:00:5a";
const ETHERTYPE: u16 = 0x88b5; // IEEE local experimental

fn run(args: &[&str]) -> Result<String, String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A network namespace held by a thread until the sender is dropped: its path.
fn pod_namespace() -> Option<(PathBuf, mpsc::Sender<()>)> {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("skipped: needs root to make a network namespace");
        return None;
    }
    let (ready_tx, ready) = mpsc::channel();
    let (done, done_rx) = mpsc::channel::<()>();
    std::thread::spawn(move || {
        let made = nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(|e| format!("unshare(CLONE_NEWNET): {e}"))
            .and_then(|()| {
                for step in [
                    &format!("ip link add cni-a address {POD_MAC} mtu 1400 type veth peer name cni-b mtu 1400")[..],
                    "ip addr add 10.88.0.5/16 dev cni-a",
                    "ip link set cni-a up",
                    "ip link set cni-b up",
                    "ip route add default via 10.88.0.1 dev cni-a",
                ] {
                    run(&step.split(' ').collect::<Vec<_>>())?;
                }
                Ok(())
            });
        let path = made.map(|()| {
            PathBuf::from(format!(
                "/proc/{}/task/{}/ns/net",
                std::process::id(),
                nix::unistd::gettid()
            ))
        });
        let _ = ready_tx.send(path);
        let _ = done_rx.recv();
    });
    match ready.recv() {
        Ok(Ok(path)) => Some((path, done)),
        Ok(Err(e)) => {
            eprintln!("skipped: cannot make the pod's namespace and veth: {e}");
            None
        }
        Err(_) => None,
    }
}

/// A packet socket on `interface` (in the calling thread's namespace) for our ethertype.
fn packet_socket(interface: &str) -> OwnedFd {
    let name = std::ffi::CString::new(interface).unwrap();
    // SAFETY: if_nametoindex reads the NUL-terminated name, which lives across the call.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    assert_ne!(index, 0, "{interface}");
    // SAFETY: socket(2) with constant arguments; the result is checked and owned at once.
    let fd = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            i32::from(ETHERTYPE.to_be()),
        )
    };
    assert!(fd >= 0, "{}", std::io::Error::last_os_error());
    // SAFETY: `fd` was just created and nothing else owns it.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_ll is plain data; zeroes are valid, and it lives across bind.
    let mut at: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    at.sll_family = libc::AF_PACKET as u16;
    at.sll_protocol = ETHERTYPE.to_be();
    at.sll_ifindex = index as i32;
    // SAFETY: bind with the address above and its size.
    let bound = unsafe {
        libc::bind(
            socket.as_raw_fd(),
            std::ptr::addr_of!(at).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    assert_eq!(bound, 0, "{}", std::io::Error::last_os_error());
    socket
}

fn frame(payload: &[u8]) -> Vec<u8> {
    let mut frame = vec![0xff; 6];
    frame.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x77]);
    frame.extend_from_slice(&ETHERTYPE.to_be_bytes());
    frame.extend_from_slice(payload);
    frame.resize(60, 0);
    frame
}

/// Reads from `read` until a frame with `payload` comes, for up to 2 s.
fn wait_for(mut read: impl FnMut(&mut [u8]) -> std::io::Result<usize>, payload: &[u8]) -> bool {
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut buf = [0u8; 2048];
    while Instant::now() < deadline {
        match read(&mut buf) {
            Ok(n) if buf[..n].windows(payload.len()).any(|w| w == payload) => return true,
            Ok(_) => {}
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
    false
}

#[test]
fn the_pods_veth_and_the_tap_are_joined_both_ways_and_come_apart() {
    let Some((netns, _hold)) = pod_namespace() else {
        return;
    };
    let plumbed = match PodTap::plumb(&netns) {
        Err(PodNetworkError::Tap(e)) => {
            eprintln!("skipped: no tap here: {e}");
            return;
        }
        other => other.unwrap().expect("the veth has an address"),
    };
    let pod = &plumbed.pod;
    assert_eq!(pod.veth, "cni-a");
    assert_eq!(pod.interface.mac.to_string(), POD_MAC);
    assert_eq!(pod.interface.mtu, 1400);
    assert_eq!(pod.interface.name, "eth0");
    assert_eq!(pod.interface.addresses, ["10.88.0.5/16".parse().unwrap()]);
    assert_eq!(
        pod.routes,
        [Route {
            destination: None,
            gateway: Some(Ipv4Addr::new(10, 88, 0, 1)),
            device: "eth0".into(),
            source: None,
            mtu: None,
        }]
    );
    let ns = netns.to_string_lossy().into_owned();
    let in_ns = |cmd: &str| {
        let net = format!("--net={ns}");
        let mut args = vec!["nsenter", net.as_str()];
        args.extend(cmd.split(' '));
        run(&args).unwrap()
    };
    let filters = in_ns("tc filter show dev cni-a ingress");
    assert!(
        filters.contains("u32") && filters.contains("mirred"),
        "{filters}"
    );
    assert!(
        filters.contains("Redirect to device tap0_cocoon"),
        "{filters}"
    );
    let tap_link = in_ns("ip -o link show tap0_cocoon");
    assert!(
        tap_link.contains("mtu 1400") && tap_link.contains(",UP"),
        "{tap_link}"
    );

    // The guest's side (the VMM would do this): 12-byte headers.
    let tap_fd = plumbed.tap.as_raw_fd();
    cocoon_net::tap::set_vnet_header_size(tap_fd, 12).unwrap();
    let peer = in_netns(&netns, || Ok(packet_socket("cni-b"))).unwrap();
    let mut from_guest = vec![0u8; 12];
    from_guest.extend(frame(b"from-the-guest"));
    (&plumbed.tap).write_all(&from_guest).unwrap();
    let peer_read = |buf: &mut [u8]| {
        // SAFETY: recv into the buffer, within its length.
        let n = unsafe { libc::recv(peer.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    };
    assert!(wait_for(peer_read, b"from-the-guest"), "tap -> veth");
    let to_guest = frame(b"to-the-guest");
    // SAFETY: send the frame, within its length, on the bound packet socket.
    let sent = unsafe {
        libc::send(
            peer.as_raw_fd(),
            to_guest.as_ptr().cast(),
            to_guest.len(),
            0,
        )
    };
    assert_eq!(
        sent,
        to_guest.len() as isize,
        "{}",
        std::io::Error::last_os_error()
    );
    let tap_read = |buf: &mut [u8]| (&plumbed.tap).read(buf);
    assert!(wait_for(tap_read, b"to-the-guest"), "veth -> tap");

    plumbed.remove().unwrap();
    let qdiscs = in_ns("tc qdisc show dev cni-a");
    assert!(!qdiscs.contains("ingress"), "{qdiscs}");
    let links = in_ns("ip -o link show");
    assert!(
        !links.contains("tap0_cocoon"),
        "the tap went with its descriptor: {links}"
    );
}

#[test]
fn a_namespace_that_does_not_exist_is_one_clear_error() {
    let e = PodTap::plumb(std::path::Path::new("/proc/self/ns/no-such-netns"))
        .err()
        .expect("an error");
    let text = e.to_string();
    assert!(
        text.contains("no-such-netns") && text.contains("give an existing namespace"),
        "{text}"
    );
}
