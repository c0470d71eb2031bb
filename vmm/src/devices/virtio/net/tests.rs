//! virtio-net against mock queues and a real stream socket (the end passt would hold): frames
//! both ways, merged receive buffers, anti-spoofing, hostile chains, a backend that stalls or
//! goes away, and the rate limit.

use std::io::{ErrorKind, Read, Write};
use std::net::Ipv4Addr;
use std::os::unix::net::UnixStream;
use std::sync::Arc;

use cocoon_protocol::vm_config::{MacAddress, NetBackendConfig, NetConfig, RateLimit, MAX_MTU};
use virtio_queue::desc::{split::Descriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::Queue;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::device::Net;
use super::state::*;
use super::stream::Stream;
use super::NetHandler;
use crate::devices::virtio::{Interrupt, VirtioDevice, VIRTIO_F_VERSION_1};

const WRITE: u16 = 2;
const NEXT: u16 = 1;
const QSIZE: u16 = 32;
const RX_AT: u64 = 0x1_0000;
const TX_AT: u64 = 0x2_0000;
/// RX buffer of descriptor i at RX_BUFS + i * SLOT; TX frame of descriptor i at TX_BUFS + i * SLOT.
const RX_BUFS: u64 = 0x10_0000;
const TX_BUFS: u64 = 0x40_0000;
const SLOT: u64 = 0x1_0000;
const GUEST_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0x42];
const GUEST_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
const PEER_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);

fn mem() -> GuestMemoryMmap {
    GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x80_0000)]).unwrap()
}

fn raw(addr: u64, len: u32, flags: u16, next: u16) -> RawDescriptor {
    RawDescriptor::from(Descriptor::new(addr, len, flags, next))
}

/// An IPv4/UDP-looking Ethernet frame of `len` bytes from `mac` and `source`.
fn ipv4_frame(mac: [u8; 6], source: Ipv4Addr, destination: Ipv4Addr, len: usize) -> Vec<u8> {
    let mut frame = vec![0x02, 0, 0, 0, 0, 1];
    frame.extend_from_slice(&mac);
    frame.extend_from_slice(&[0x08, 0x00, 0x45, 0, 0, 0, 0, 0, 0, 0, 64, 17, 0, 0]);
    frame.extend_from_slice(&source.octets());
    frame.extend_from_slice(&destination.octets());
    let mut filler = 0u8;
    frame.resize_with(len.max(frame.len()), || {
        filler = filler.wrapping_add(7);
        filler
    });
    frame
}

fn guest_frame(len: usize) -> Vec<u8> {
    ipv4_frame(GUEST_MAC, GUEST_IP, PEER_IP, len)
}

struct Fixture<'a> {
    mem: &'a GuestMemoryMmap,
    rx: MockSplitQueue<'a, GuestMemoryMmap>,
    tx: MockSplitQueue<'a, GuestMemoryMmap>,
    rx_added: u16,
    rx_seen: u16,
    tx_added: u16,
    handler: NetHandler,
    device: Net,
    /// The backend's other end: what passt would hold.
    host: UnixStream,
    /// Bytes of a frame the host end has read only part of.
    host_partial: Vec<u8>,
    irq: EventFd,
}

fn config() -> NetConfig {
    let mut config = NetConfig::new(NetBackendConfig::StreamFd(-1));
    config.mac = Some(MacAddress(GUEST_MAC));
    config.ipv4 = Some(GUEST_IP);
    config.mtu = MAX_MTU;
    config
}

impl<'a> Fixture<'a> {
    fn new(mem: &'a GuestMemoryMmap, features: u64) -> Self {
        Self::with(mem, features, config())
    }

    fn with(mem: &'a GuestMemoryMmap, features: u64, config: NetConfig) -> Self {
        let (device_end, host) = UnixStream::pair().unwrap();
        host.set_nonblocking(true).unwrap();
        let backend = Box::new(Stream::new(device_end).unwrap());
        let (mut device, builder) = Net::with_backend(0, &config, backend).unwrap();
        let events = (0..2)
            .map(|_| EventFd::new(libc::EFD_NONBLOCK).unwrap())
            .collect();
        let handler = builder.build(events);
        let rx = MockSplitQueue::create(mem, GuestAddress(RX_AT), QSIZE);
        let tx = MockSplitQueue::create(mem, GuestAddress(TX_AT), QSIZE);
        let queues: Vec<Queue> = vec![rx.create_queue().unwrap(), tx.create_queue().unwrap()];
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        device
            .activate(
                mem.clone(),
                VIRTIO_F_VERSION_1 | features,
                queues,
                vec![],
                Arc::new(Interrupt::new(irq.try_clone().unwrap())),
            )
            .unwrap();
        Self {
            mem,
            rx,
            tx,
            rx_added: 0,
            rx_seen: 0,
            tx_added: 0,
            handler,
            device,
            host,
            host_partial: Vec::new(),
            irq,
        }
    }

    /// Gives the device one receive buffer of `len` bytes (as one chain of one descriptor).
    fn add_rx(&mut self, len: u32) {
        let d = self.rx_added % QSIZE;
        let at = RX_BUFS + u64::from(d) * SLOT;
        self.rx
            .add_desc_chains(&[raw(at, len, WRITE, 0)], d)
            .unwrap();
        self.rx_added += 1;
    }

    /// Queues `header` and `frame` on TX, in one descriptor.
    fn send_with(&mut self, header: [u8; NET_HDR_LEN], frame: &[u8]) {
        let d = self.tx_added % QSIZE;
        let at = TX_BUFS + u64::from(d) * SLOT;
        self.mem.write_slice(&header, GuestAddress(at)).unwrap();
        self.mem
            .write_slice(frame, GuestAddress(at + NET_HDR_LEN as u64))
            .unwrap();
        let len = (NET_HDR_LEN + frame.len()) as u32;
        self.tx.add_desc_chains(&[raw(at, len, 0, 0)], d).unwrap();
        self.tx_added += 1;
    }

    fn send(&mut self, frame: &[u8]) {
        self.send_with([0; NET_HDR_LEN], frame);
    }

    /// Queues a chain of raw descriptors on TX, as a hostile driver might.
    fn send_chain(&mut self, descriptors: &[RawDescriptor]) {
        let d = self.tx_added % QSIZE;
        self.tx.add_desc_chains(descriptors, d).unwrap();
        self.tx_added += descriptors.len() as u16;
    }

    /// Used RX entries since the last call: (descriptor id, length).
    fn received(&mut self) -> Vec<(u16, u32)> {
        let used = self.rx.used().idx().load();
        let mut out = Vec::new();
        while self.rx_seen != used {
            let elem = self
                .rx
                .used()
                .ring()
                .ref_at(usize::from(self.rx_seen % QSIZE))
                .unwrap()
                .load();
            out.push((elem.id() as u16, elem.len()));
            self.rx_seen += 1;
        }
        out
    }

    fn rx_bytes(&self, id: u16, len: u32) -> Vec<u8> {
        let mut bytes = vec![0u8; len as usize];
        self.mem
            .read_slice(&mut bytes, GuestAddress(RX_BUFS + u64::from(id) * SLOT))
            .unwrap();
        bytes
    }

    fn tx_used(&self) -> u16 {
        self.tx.used().idx().load()
    }

    /// Frames the backend sent to its peer by now, unframed.
    fn host_frames(&mut self) -> Vec<Vec<u8>> {
        let mut bytes = std::mem::take(&mut self.host_partial);
        let mut buf = [0u8; 65536];
        loop {
            match self.host.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => bytes.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => panic!("{e}"),
            }
        }
        let mut frames = Vec::new();
        let mut at = 0;
        while at + 4 <= bytes.len() {
            let len = u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
            if at + 4 + len > bytes.len() {
                break;
            }
            frames.push(bytes[at + 4..at + 4 + len].to_vec());
            at += 4 + len;
        }
        // A frame the socket holds only part of yet: the rest comes with the next read.
        self.host_partial = bytes.split_off(at);
        frames
    }

    fn host_sends(&mut self, frame: &[u8]) {
        self.host.set_nonblocking(false).unwrap();
        self.host
            .write_all(&(frame.len() as u32).to_be_bytes())
            .unwrap();
        self.host.write_all(frame).unwrap();
        self.host.set_nonblocking(true).unwrap();
        // What the backend's edge-triggered event would say.
        self.handler.mark_backend_readable();
        self.handler.serve();
    }

    fn status(&self) -> u16 {
        let mut status = [0u8; 2];
        self.device.read_config(6, &mut status);
        u16::from_le_bytes(status)
    }
}

#[test]
fn the_guests_frames_reach_the_stream_in_its_framing() {
    let m = mem();
    let mut f = Fixture::new(&m, 0);
    let frames = [guest_frame(60), guest_frame(1514), guest_frame(9000)];
    for frame in &frames {
        f.send(frame);
    }
    f.handler.serve();
    assert_eq!(f.tx_used(), 3);
    assert!(f.irq.read().is_ok(), "the used TX buffers were signalled");
    assert_eq!(f.host_frames(), frames);
}

#[test]
fn stream_frames_reach_the_guest_over_merged_buffers() {
    let m = mem();
    let mut f = Fixture::new(&m, F_MRG_RXBUF);
    for _ in 0..4 {
        f.add_rx(1536);
    }
    let small = ipv4_frame([2, 0, 0, 0, 0, 1], PEER_IP, GUEST_IP, 100);
    let large = ipv4_frame([2, 0, 0, 0, 0, 1], PEER_IP, GUEST_IP, 3000);
    f.host_sends(&small);
    f.host_sends(&large);
    f.handler.serve();
    let used = f.received();
    assert_eq!(used, [(0, 112), (1, 1536), (2, 1476)]);
    let first = f.rx_bytes(0, 112);
    assert_eq!(
        &first[..NUM_BUFFERS_OFFSET],
        &[0; NUM_BUFFERS_OFFSET],
        "no offload flags"
    );
    assert_eq!(u16::from_le_bytes([first[10], first[11]]), 1);
    assert_eq!(&first[NET_HDR_LEN..], &small[..]);
    let head = f.rx_bytes(1, 1536);
    assert_eq!(u16::from_le_bytes([head[10], head[11]]), 2, "num_buffers");
    let mut merged = head[NET_HDR_LEN..].to_vec();
    merged.extend_from_slice(&f.rx_bytes(2, 1476));
    assert_eq!(merged, large);
    assert!(f.irq.read().is_ok());
}

#[test]
fn a_frame_waits_for_receive_buffers_and_is_not_lost() {
    let m = mem();
    let mut f = Fixture::new(&m, F_MRG_RXBUF);
    let frame = ipv4_frame([2, 0, 0, 0, 0, 1], PEER_IP, GUEST_IP, 3000);
    f.host_sends(&frame);
    f.add_rx(1536);
    f.handler.serve();
    assert!(
        f.received().is_empty(),
        "one buffer is not room enough; nothing is taken"
    );
    f.add_rx(1536);
    f.handler.serve();
    assert_eq!(f.received(), [(0, 1536), (1, 1476)]);
}

#[test]
fn without_merged_buffers_a_frame_too_big_for_the_buffer_is_dropped_and_the_buffer_kept() {
    let m = mem();
    let mut f = Fixture::new(&m, 0);
    f.add_rx(1536);
    f.host_sends(&ipv4_frame([2, 0, 0, 0, 0, 1], PEER_IP, GUEST_IP, 3000));
    let fits = ipv4_frame([2, 0, 0, 0, 0, 1], PEER_IP, GUEST_IP, 1000);
    f.host_sends(&fits);
    f.handler.serve();
    assert_eq!(f.received(), [(0, 1012)]);
    assert_eq!(&f.rx_bytes(0, 1012)[NET_HDR_LEN..], &fits[..]);
    assert_eq!(f.handler.drops.malformed, 1);
}

#[test]
fn spoofed_and_metadata_frames_are_dropped_and_counted() {
    let m = mem();
    let mut f = Fixture::new(&m, 0);
    f.send(&ipv4_frame([2, 0, 0, 0, 0, 0x43], GUEST_IP, PEER_IP, 60));
    f.send(&ipv4_frame(
        GUEST_MAC,
        Ipv4Addr::new(10, 0, 0, 9),
        PEER_IP,
        60,
    ));
    f.send(&ipv4_frame(
        GUEST_MAC,
        GUEST_IP,
        Ipv4Addr::new(169, 254, 169, 254),
        60,
    ));
    let mut tagged = guest_frame(60);
    tagged[12..14].copy_from_slice(&[0x81, 0x00]);
    f.send(&tagged);
    let good = guest_frame(60);
    f.send(&good);
    f.handler.serve();
    assert_eq!(f.tx_used(), 5, "every chain went back to the guest");
    assert_eq!(f.host_frames(), [good]);
    assert_eq!(f.handler.drops.spoofed, 4);
}

#[test]
fn hostile_tx_chains_lose_their_own_frame_only() {
    let m = mem();
    let mut f = Fixture::new(&m, 0);
    // A buffer for the device to write, in a TX chain.
    f.send_chain(&[raw(TX_BUFS, 100, WRITE, 0)]);
    // Shorter than the header.
    f.send_chain(&[raw(TX_BUFS, 4, 0, 0)]);
    // Past guest memory.
    f.send_chain(&[raw(0x7f_ff00, 0x1000, 0, 0)]);
    // Longer than any frame, in two descriptors.
    let d = f.tx_added % QSIZE;
    f.send_chain(&[
        raw(TX_BUFS, 0x1_0000, NEXT, d + 1),
        raw(TX_BUFS, 0x1_0000, 0, 0),
    ]);
    // Asking for a checksum offload nobody offered (no tap: no offloads).
    let mut needs_csum = [0u8; NET_HDR_LEN];
    needs_csum[0] = 1;
    f.send_with(needs_csum, &guest_frame(60));
    // Segmentation without the feature.
    let mut gso = [0u8; NET_HDR_LEN];
    gso[1] = 1;
    f.send_with(gso, &guest_frame(60));
    let good = guest_frame(100);
    f.send(&good);
    f.handler.serve();
    assert_eq!(f.tx_used(), 7);
    assert_eq!(f.host_frames(), [good]);
    assert_eq!(f.handler.drops.malformed, 6);
}

#[test]
fn an_rx_chain_the_device_may_not_write_loses_the_frame_not_the_device() {
    let m = mem();
    let mut f = Fixture::new(&m, F_MRG_RXBUF);
    let d = f.rx_added % QSIZE;
    f.rx.add_desc_chains(&[raw(RX_BUFS, 1536, 0, 0)], d)
        .unwrap();
    f.rx_added += 1;
    f.add_rx(1536);
    f.host_sends(&ipv4_frame([2, 0, 0, 0, 0, 1], PEER_IP, GUEST_IP, 200));
    let second = ipv4_frame([2, 0, 0, 0, 0, 1], PEER_IP, GUEST_IP, 300);
    f.host_sends(&second);
    f.handler.serve();
    assert_eq!(f.received(), [(0, 0), (1, 312)]);
    assert_eq!(&f.rx_bytes(1, 312)[NET_HDR_LEN..], &second[..]);
}

#[test]
fn a_backend_that_stops_reading_holds_one_frame_and_stalls_only_tx() {
    let m = mem();
    let mut f = Fixture::new(&m, 0);
    let frame = guest_frame(60_000);
    for _ in 0..QSIZE {
        f.send(&frame);
    }
    f.handler.serve();
    let first_pass = f.tx_used();
    assert!(
        first_pass < QSIZE,
        "a socket buffer does not take {QSIZE} frames of 60 kB"
    );
    // RX still works meanwhile.
    f.add_rx(1536);
    f.host_sends(&ipv4_frame([2, 0, 0, 0, 0, 1], PEER_IP, GUEST_IP, 100));
    f.handler.serve();
    assert_eq!(f.received().len(), 1);
    // The peer reads: everything goes, in order, nothing lost.
    let mut got = f.host_frames().len();
    for _ in 0..100 {
        f.handler.serve();
        got += f.host_frames().len();
        if got == usize::from(QSIZE) {
            break;
        }
    }
    assert_eq!(got, usize::from(QSIZE));
    assert_eq!(f.tx_used(), QSIZE);
}

#[test]
fn a_backend_that_goes_away_takes_the_link_down() {
    let m = mem();
    let mut f = Fixture::new(&m, 0);
    assert_eq!(f.status(), LINK_UP);
    let _ = f.irq.read();
    f.host.shutdown(std::net::Shutdown::Both).unwrap();
    f.add_rx(1536);
    f.handler.serve();
    assert_eq!(f.status(), 0, "the link is down");
    assert!(f.irq.read().is_ok());
    let generation = f.device.config_generation();
    assert_ne!(generation, 0, "the configuration changed");
    // The guest's frames go nowhere, without a fuss.
    f.send(&guest_frame(60));
    f.handler.serve();
}

#[test]
fn a_peer_breaking_the_framing_takes_the_link_down() {
    let m = mem();
    let mut f = Fixture::new(&m, F_MRG_RXBUF);
    f.add_rx(1536);
    f.host.set_nonblocking(false).unwrap();
    f.host.write_all(&u32::MAX.to_be_bytes()).unwrap();
    f.handler.serve();
    assert_eq!(f.status(), 0);
    assert!(f.received().is_empty());
}

#[test]
fn a_frame_rate_limit_holds_frames_back() {
    let m = mem();
    let mut config = config();
    config.tx_rate = RateLimit {
        bytes_per_sec: 0,
        packets_per_sec: 2,
    };
    let mut f = Fixture::with(&m, 0, config);
    for _ in 0..5 {
        f.send(&guest_frame(60));
    }
    f.handler.serve();
    assert_eq!(f.host_frames().len(), 2, "a burst of one second's worth");
    assert_eq!(
        f.tx_used(),
        3,
        "the third is held, the rest wait in the queue"
    );
}

#[test]
fn the_configuration_space_has_the_mac_link_and_mtu_and_features_depend_on_the_backend() {
    let m = mem();
    let f = Fixture::new(&m, 0);
    let mut config = [0u8; 12];
    f.device.read_config(0, &mut config);
    assert_eq!(&config[0..6], &GUEST_MAC);
    assert_eq!(u16::from_le_bytes([config[6], config[7]]), LINK_UP);
    assert_eq!(u16::from_le_bytes([config[10], config[11]]), MAX_MTU);
    let features = f.device.features();
    assert_eq!(features & OFFLOADS, 0, "a stream carries no offloads");
    for needed in [F_MAC, F_MTU, F_STATUS, F_MRG_RXBUF, VIRTIO_F_VERSION_1] {
        assert_eq!(features & needed, needed);
    }
}
