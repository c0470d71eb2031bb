//! The vsock device end to end against mock queues and real Unix sockets: streams both ways,
//! the hybrid handshake, credit, resets, stalls and malformed packets.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::Arc;

use virtio_queue::{Queue, QueueT};
use virtio_vsock::packet::PKT_HEADER_SIZE;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::packet::*;
use super::state::*;
use super::*;
use crate::devices::virtio::{Interrupt, VirtioDevice};
use virtio_queue::desc::{split::Descriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress};

const GUEST_CID: u64 = 3;
const WRITE: u16 = 2;
const NEXT: u16 = 1;
const RX_AT: u64 = 0x1_0000;
const TX_AT: u64 = 0x2_0000;
const EV_AT: u64 = 0x3_0000;
const QSIZE: u16 = 32;
/// Guest buffers: RX slot i at RX_BUFS + i * 0x2000 (header) and + 0x1000 (data); TX data
/// at TX_BUFS.
const RX_BUFS: u64 = 0x10_0000;
const TX_BUFS: u64 = 0x20_0000;

struct Fixture<'a> {
    mem: &'a GuestMemoryMmap,
    rx: MockSplitQueue<'a, GuestMemoryMmap>,
    tx: MockSplitQueue<'a, GuestMemoryMmap>,
    rx_added: u16,
    rx_seen: u16,
    tx_added: u16,
    handler: VsockHandler,
    _device: Vsock,
    dir: tempfile::TempDir,
}

fn mem() -> GuestMemoryMmap {
    GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x80_0000)]).unwrap()
}

fn raw(addr: u64, len: u32, flags: u16, next: u16) -> RawDescriptor {
    RawDescriptor::from(Descriptor::new(addr, len, flags, next))
}

fn guest_header(op: u16, src_port: u32, dst_port: u32, len: u32) -> Header {
    Header {
        src_cid: GUEST_CID,
        dst_cid: HOST_CID,
        src_port,
        dst_port,
        len,
        type_: TYPE_STREAM,
        op,
        flags: 0,
        buf_alloc: 1 << 20,
        fwd_cnt: 0,
    }
}

fn encode(h: &Header) -> Vec<u8> {
    let mut v = Vec::with_capacity(PKT_HEADER_SIZE);
    v.extend_from_slice(&h.src_cid.to_le_bytes());
    v.extend_from_slice(&h.dst_cid.to_le_bytes());
    v.extend_from_slice(&h.src_port.to_le_bytes());
    v.extend_from_slice(&h.dst_port.to_le_bytes());
    v.extend_from_slice(&h.len.to_le_bytes());
    v.extend_from_slice(&h.type_.to_le_bytes());
    v.extend_from_slice(&h.op.to_le_bytes());
    v.extend_from_slice(&h.flags.to_le_bytes());
    v.extend_from_slice(&h.buf_alloc.to_le_bytes());
    v.extend_from_slice(&h.fwd_cnt.to_le_bytes());
    v
}

fn decode(b: &[u8]) -> Header {
    let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap());
    Header {
        src_cid: u64::from_le_bytes(b[0..8].try_into().unwrap()),
        dst_cid: u64::from_le_bytes(b[8..16].try_into().unwrap()),
        src_port: u32_at(16),
        dst_port: u32_at(20),
        len: u32_at(24),
        type_: u16::from_le_bytes(b[28..30].try_into().unwrap()),
        op: u16::from_le_bytes(b[30..32].try_into().unwrap()),
        flags: u32_at(32),
        buf_alloc: u32_at(36),
        fwd_cnt: u32_at(40),
    }
}

impl<'a> Fixture<'a> {
    fn new(mem: &'a GuestMemoryMmap) -> Self {
        Self::negotiated(mem, false)
    }

    /// With VIRTIO_RING_F_EVENT_IDX negotiated (as Linux does): the driver kicks only when its
    /// avail index passes the avail_event the device wrote.
    fn negotiated(mem: &'a GuestMemoryMmap, event_idx: bool) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (mut device, builder) = Vsock::new(GUEST_CID, &dir.path().join("v.sock")).unwrap();
        let events = (0..3)
            .map(|_| EventFd::new(libc::EFD_NONBLOCK).unwrap())
            .collect();
        let handler = builder.build(events);
        let rx = MockSplitQueue::create(mem, GuestAddress(RX_AT), QSIZE);
        let tx = MockSplitQueue::create(mem, GuestAddress(TX_AT), QSIZE);
        let ev = MockSplitQueue::create(mem, GuestAddress(EV_AT), QSIZE);
        let mut queues: Vec<Queue> = vec![
            rx.create_queue().unwrap(),
            tx.create_queue().unwrap(),
            ev.create_queue().unwrap(),
        ];
        for q in &mut queues {
            q.set_event_idx(event_idx);
        }
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        device
            .activate(
                mem.clone(),
                0,
                queues,
                vec![],
                Arc::new(Interrupt::new(irq)),
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
            _device: device,
            dir,
        }
    }

    fn uds(&self) -> std::path::PathBuf {
        self.dir.path().join("v.sock")
    }

    /// Gives the device `n` receive buffers (44-byte header + 4 KiB data each).
    fn add_rx_buffers(&mut self, n: u16) {
        for _ in 0..n {
            let slot = self.rx_added;
            let at = RX_BUFS + u64::from(slot) * 0x2000;
            let d = (slot * 2) % QSIZE;
            self.rx
                .add_desc_chains(
                    &[
                        raw(at, PKT_HEADER_SIZE as u32, WRITE | NEXT, d + 1),
                        raw(at + 0x1000, 4096, WRITE, 0),
                    ],
                    d,
                )
                .unwrap();
            self.rx_added += 1;
        }
    }

    /// Queues a guest packet on TX (header descriptor, then a data descriptor if any).
    fn send(&mut self, header: &Header, data: &[u8]) {
        let d = (self.tx_added * 2) % QSIZE;
        let at = TX_BUFS + u64::from(d) * 0x1000;
        self.mem
            .write_slice(&encode(header), GuestAddress(at))
            .unwrap();
        if data.is_empty() {
            self.tx
                .add_desc_chains(&[raw(at, PKT_HEADER_SIZE as u32, 0, 0)], d)
                .unwrap();
        } else {
            let data_at = 0x40_0000;
            self.mem.write_slice(data, GuestAddress(data_at)).unwrap();
            self.tx
                .add_desc_chains(
                    &[
                        raw(at, PKT_HEADER_SIZE as u32, NEXT, d + 1),
                        raw(data_at, data.len() as u32, 0, 0),
                    ],
                    d,
                )
                .unwrap();
        }
        self.tx_added += 1;
    }

    /// Runs the device as the event loop would after host socket activity.
    fn serve(&mut self) {
        let fds: Vec<_> = self.handler.backend_fds();
        for fd in fds {
            self.handler.backend.on_host_socket_event(fd, true, true);
        }
        self.handler.backend.accept_host_clients();
        self.handler.serve_queues();
        self.handler.backend.take_registrations();
        self.handler.backend.release_closed();
    }

    /// Packets the device put in RX buffers since the last call.
    fn received(&mut self) -> Vec<(Header, Vec<u8>)> {
        let used_idx = self.rx.used().idx().load();
        let mut out = Vec::new();
        while self.rx_seen != used_idx {
            let elem = self
                .rx
                .used()
                .ring()
                .ref_at(usize::from(self.rx_seen % QSIZE))
                .unwrap()
                .load();
            let slot = self.rx_seen;
            let at = RX_BUFS + u64::from(slot) * 0x2000;
            let mut hdr = [0u8; PKT_HEADER_SIZE];
            self.mem.read_slice(&mut hdr, GuestAddress(at)).unwrap();
            let header = decode(&hdr);
            let mut data = vec![0u8; elem.len() as usize - PKT_HEADER_SIZE];
            self.mem
                .read_slice(&mut data, GuestAddress(at + 0x1000))
                .unwrap();
            assert_eq!(header.len as usize, data.len());
            out.push((header, data));
            self.rx_seen += 1;
        }
        out
    }

    /// The avail_event the device last wrote for RX (after the used ring's entries).
    fn rx_avail_event(&self) -> u16 {
        let at = self.rx.used_addr().0 + 4 + 8 * u64::from(QSIZE);
        self.mem.read_obj::<u16>(GuestAddress(at)).unwrap()
    }

    fn tx_used(&self) -> u16 {
        self.tx.used().idx().load()
    }
}

impl VsockHandler {
    fn backend_fds(&self) -> Vec<std::os::fd::RawFd> {
        self.backend.host_socket_fds()
    }
}

fn ops(packets: &[(Header, Vec<u8>)]) -> Vec<u16> {
    packets.iter().map(|(h, _)| h.op).collect()
}

#[test]
fn guest_connects_to_a_host_listener_and_streams_both_ways() {
    let m = mem();
    let mut f = Fixture::new(&m);
    let mut path = f.uds().into_os_string();
    path.push("_5000");
    let listener = UnixListener::bind(&path).unwrap();
    f.add_rx_buffers(8);
    f.send(&guest_header(OP_REQUEST, 1111, 5000, 0), &[]);
    f.serve();
    let got = f.received();
    assert_eq!(ops(&got), [OP_RESPONSE]);
    let h = got[0].0;
    assert_eq!((h.src_cid, h.dst_cid), (HOST_CID, GUEST_CID));
    assert_eq!((h.src_port, h.dst_port), (5000, 1111));
    assert_eq!(h.buf_alloc, connection::BUF_ALLOC);

    let (mut host, _) = listener.accept().unwrap();
    f.send(&guest_header(OP_RW, 1111, 5000, 5), b"hello");
    f.serve();
    let mut buf = [0u8; 5];
    host.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"hello");

    host.write_all(b"world").unwrap();
    f.serve();
    let got = f.received();
    assert_eq!(ops(&got), [OP_RW]);
    assert_eq!(got[0].1, b"world");

    // The host closes its sending half: the guest hears "no more data".
    host.shutdown(std::net::Shutdown::Write).unwrap();
    f.serve();
    let got = f.received();
    assert_eq!(ops(&got), [OP_SHUTDOWN]);
    assert_eq!(got[0].0.flags, SHUTDOWN_SEND);

    // The guest closes: the device answers RST and forgets the connection.
    let mut shutdown = guest_header(OP_SHUTDOWN, 1111, 5000, 0);
    shutdown.flags = SHUTDOWN_RCV | SHUTDOWN_SEND;
    f.send(&shutdown, &[]);
    f.serve();
    assert_eq!(ops(&f.received()), [OP_RST]);
    assert_eq!(f.handler.backend.connection_count(), 0);
    assert_eq!(host.read(&mut buf).unwrap(), 0, "host end sees EOF");
}

#[test]
fn out_of_receive_buffers_the_device_asks_for_a_kick() {
    let m = mem();
    let mut f = Fixture::negotiated(&m, true);
    let mut path = f.uds().into_os_string();
    path.push("_5000");
    let listener = UnixListener::bind(&path).unwrap();
    // One receive buffer: the connection's response takes it.
    f.add_rx_buffers(1);
    f.send(&guest_header(OP_REQUEST, 1111, 5000, 0), &[]);
    f.serve();
    assert_eq!(ops(&f.received()), [OP_RESPONSE]);
    let (mut host, _) = listener.accept().unwrap();
    host.write_all(b"owed").unwrap();
    f.serve();
    assert!(f.received().is_empty(), "no buffer to put it in");
    // The device must have asked to be kicked at the next buffer (avail_event = 1); a guest
    // that refills without a kick would otherwise wait for data forever.
    assert_eq!(f.rx_avail_event(), f.rx_added);
    f.add_rx_buffers(1);
    f.serve();
    let got = f.received();
    assert_eq!(ops(&got), [OP_RW]);
    assert_eq!(got[0].1, b"owed");
}

#[test]
fn guest_connection_to_a_port_nobody_listens_on_is_reset() {
    let m = mem();
    let mut f = Fixture::new(&m);
    f.add_rx_buffers(2);
    f.send(&guest_header(OP_REQUEST, 1111, 5001, 0), &[]);
    f.serve();
    let got = f.received();
    assert_eq!(ops(&got), [OP_RST]);
    assert_eq!((got[0].0.src_port, got[0].0.dst_port), (5001, 1111));
}

#[test]
fn host_client_connects_with_the_hybrid_handshake() {
    let m = mem();
    let mut f = Fixture::new(&m);
    f.add_rx_buffers(4);
    let mut client = UnixStream::connect(f.uds()).unwrap();
    client.write_all(b"connect 1024\nearly bytes").unwrap();
    f.serve();
    let got = f.received();
    assert_eq!(ops(&got), [OP_REQUEST]);
    let request = got[0].0;
    assert_eq!(request.dst_port, 1024);
    assert!(request.src_port >= 1 << 30);

    f.send(&guest_header(OP_RESPONSE, 1024, request.src_port, 0), &[]);
    f.serve();
    let mut line = vec![0u8; format!("OK {}\n", request.src_port).len()];
    client.read_exact(&mut line).unwrap();
    assert_eq!(line, format!("OK {}\n", request.src_port).as_bytes());
    // Bytes the client wrote right after its CONNECT line reach the guest.
    let got = f.received();
    assert_eq!(ops(&got), [OP_RW]);
    assert_eq!(got[0].1, b"early bytes");
}

#[test]
fn a_refused_host_connection_is_closed_without_ok() {
    let m = mem();
    let mut f = Fixture::new(&m);
    f.add_rx_buffers(2);
    let mut client = UnixStream::connect(f.uds()).unwrap();
    client.write_all(b"CONNECT 9\n").unwrap();
    f.serve();
    let request = f.received()[0].0;
    f.send(&guest_header(OP_RST, 9, request.src_port, 0), &[]);
    f.serve();
    let mut rest = Vec::new();
    client.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
    assert_eq!(f.handler.backend.connection_count(), 0);
}

#[test]
fn a_garbage_handshake_closes_the_client() {
    let m = mem();
    let mut f = Fixture::new(&m);
    let mut client = UnixStream::connect(f.uds()).unwrap();
    client.write_all(b"GET / HTTP/1.1\n").unwrap();
    f.serve();
    let mut rest = Vec::new();
    client.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
}

#[test]
fn a_guest_that_ignores_credit_is_reset() {
    let m = mem();
    let mut f = Fixture::new(&m);
    let mut path = f.uds().into_os_string();
    path.push("_5002");
    let listener = UnixListener::bind(&path).unwrap();
    f.add_rx_buffers(16);
    f.send(&guest_header(OP_REQUEST, 7, 5002, 0), &[]);
    f.serve();
    assert_eq!(ops(&f.received()), [OP_RESPONSE]);
    let (_host, _) = listener.accept().unwrap();
    // The host never reads; the guest sends far more than the 256 KiB it was granted.
    let chunk = vec![0x5a; 64 << 10];
    let mut reset = false;
    for _ in 0..16 {
        f.send(&guest_header(OP_RW, 7, 5002, chunk.len() as u32), &chunk);
        f.serve();
        if ops(&f.received()).contains(&OP_RST) {
            reset = true;
            break;
        }
    }
    assert!(
        reset,
        "the device never reset a guest that overran its credit"
    );
    assert_eq!(f.handler.backend.connection_count(), 0);
}

/// A guest connection (source port `src`) to host listener `port` whose guest buffer holds 3
/// bytes; the host has written `abcdef` and the guest got `abc`. The host's end, open.
fn three_byte_connection(
    f: &mut Fixture<'_>,
    src: u32,
    port: u32,
) -> std::os::unix::net::UnixStream {
    let mut path = f.uds().into_os_string();
    path.push(format!("_{port}"));
    let listener = UnixListener::bind(&path).unwrap();
    f.add_rx_buffers(8);
    let mut request = guest_header(OP_REQUEST, src, port, 0);
    request.buf_alloc = 3;
    f.send(&request, &[]);
    f.serve();
    assert_eq!(ops(&f.received()), [OP_RESPONSE]);
    let (mut host, _) = listener.accept().unwrap();
    host.write_all(b"abcdef").unwrap();
    f.serve();
    let got = f.received();
    assert_eq!(ops(&got), [OP_RW]);
    assert_eq!(got[0].1, b"abc", "no more than the guest's buffer");
    host
}

#[test]
fn host_data_waits_for_guest_credit() {
    let m = mem();
    let mut f = Fixture::new(&m);
    let _host = three_byte_connection(&mut f, 8, 5003);
    f.serve();
    assert!(
        f.received().is_empty(),
        "nothing until the guest frees space"
    );
    let mut update = guest_header(OP_CREDIT_UPDATE, 8, 5003, 0);
    update.buf_alloc = 3;
    update.fwd_cnt = 3;
    f.send(&update, &[]);
    f.serve();
    let got = f.received();
    assert_eq!(ops(&got), [OP_RW]);
    assert_eq!(got[0].1, b"def");
}

#[test]
fn credit_on_a_guest_data_packet_lets_held_host_data_go() {
    let m = mem();
    let mut f = Fixture::new(&m);
    let _host = three_byte_connection(&mut f, 9, 5004);
    // The guest read those 3 bytes and says so on a data packet of its own, no CREDIT_UPDATE.
    // The host socket's readiness does not fire again: it has nothing new.
    let mut data = guest_header(OP_RW, 9, 5004, 1);
    data.buf_alloc = 3;
    data.fwd_cnt = 3;
    f.send(&data, b"x");
    f.handler.serve_queues();
    let got = f.received();
    assert_eq!(ops(&got), [OP_RW], "the held data goes with the credit");
    assert_eq!(got[0].1, b"def");
}

#[test]
fn a_stalled_connection_does_not_hold_up_the_others() {
    let m = mem();
    let mut f = Fixture::new(&m);
    let bind = |port: u32| {
        let mut path = f.uds().into_os_string();
        path.push(format!("_{port}"));
        UnixListener::bind(&path).unwrap()
    };
    let (slow_listener, fast_listener) = (bind(6000), bind(6001));
    f.add_rx_buffers(16);
    let mut slow_request = guest_header(OP_REQUEST, 10, 6000, 0);
    slow_request.buf_alloc = 4096;
    f.send(&slow_request, &[]);
    f.send(&guest_header(OP_REQUEST, 11, 6001, 0), &[]);
    f.serve();
    assert_eq!(ops(&f.received()), [OP_RESPONSE, OP_RESPONSE]);
    let (mut slow_host, _) = slow_listener.accept().unwrap();
    let (mut fast_host, _) = fast_listener.accept().unwrap();
    fast_host
        .set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();

    // Guest -> host: the slow host never reads; 192 KiB (within credit) wait for it.
    let chunk = vec![1u8; 64 << 10];
    for _ in 0..3 {
        let mut data = guest_header(OP_RW, 10, 6000, chunk.len() as u32);
        data.buf_alloc = 4096;
        f.send(&data, &chunk);
        f.serve();
    }
    f.send(&guest_header(OP_RW, 11, 6001, 4), b"ping");
    f.serve();
    let mut buf = [0u8; 4];
    fast_host.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"ping");

    // Host -> guest: the slow connection's guest gave 4 KiB of credit and no more.
    slow_host.write_all(&vec![2u8; 64 << 10]).unwrap();
    fast_host.write_all(b"pong").unwrap();
    f.serve();
    f.serve();
    let got = f.received();
    let fast: Vec<_> = got.iter().filter(|(h, _)| h.src_port == 6001).collect();
    let slow_bytes: usize = got
        .iter()
        .filter(|(h, _)| h.src_port == 6000 && h.op == OP_RW)
        .map(|(_, d)| d.len())
        .sum();
    assert!(
        fast.iter().any(|(h, d)| h.op == OP_RW && d == b"pong"),
        "{got:?}"
    );
    assert_eq!(slow_bytes, 4096, "no more than the slow guest's credit");
    assert_eq!(f.handler.backend.connection_count(), 2);
}

#[test]
fn malformed_and_foreign_packets_never_stop_the_device() {
    let m = mem();
    let mut f = Fixture::new(&m);
    f.add_rx_buffers(4);
    // A header in a device-writable buffer, and one too short to be a header.
    f.tx.add_desc_chains(&[raw(TX_BUFS, PKT_HEADER_SIZE as u32, WRITE, 0)], 0)
        .unwrap();
    f.tx.add_desc_chains(&[raw(TX_BUFS, 8, 0, 0)], 1).unwrap();
    // A data length over the limit, and one past the end of guest memory.
    let mut huge = guest_header(OP_RW, 1, 2, MAX_PACKET_DATA + 1);
    m.write_slice(&encode(&huge), GuestAddress(TX_BUFS + 0x1000))
        .unwrap();
    f.tx.add_desc_chains(
        &[
            raw(TX_BUFS + 0x1000, PKT_HEADER_SIZE as u32, NEXT, 3),
            raw(0x7f_f000, MAX_PACKET_DATA + 1, 0, 0),
        ],
        2,
    )
    .unwrap();
    huge.len = 16;
    m.write_slice(&encode(&huge), GuestAddress(TX_BUFS + 0x2000))
        .unwrap();
    f.tx.add_desc_chains(
        &[
            raw(TX_BUFS + 0x2000, PKT_HEADER_SIZE as u32, NEXT, 5),
            raw(0x7f_fff8, 16, 0, 0),
        ],
        4,
    )
    .unwrap();
    f.tx_added = 3;
    f.serve();
    assert_eq!(f.tx_used(), 4, "every malformed chain is returned");
    assert!(f.received().is_empty(), "and nothing is answered");

    // A packet claiming another source CID is dropped silently.
    let mut spoofed = guest_header(OP_REQUEST, 1, 2, 0);
    spoofed.src_cid = 42;
    f.send(&spoofed, &[]);
    f.serve();
    assert!(f.received().is_empty());

    // The device still works.
    f.send(&guest_header(OP_REQUEST, 1111, 5004, 0), &[]);
    f.serve();
    assert_eq!(ops(&f.received()), [OP_RST]);
}
