//! virtio-blk against a mock queue: reads, writes, flush, read-only disks, hostile requests,
//! configuration space and slots.

use std::path::Path;
use std::sync::Arc;

use cocoon_common::lock;
use virtio_queue::desc::split::Descriptor;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::Queue;
use vm_memory::{Bytes, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::state::*;
use super::*;
use crate::devices::virtio::{Interrupt, VirtioDevice, INTERRUPT_CONFIG_CHANGE};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::GuestAddress;

/// VRING_DESC_F_WRITE: the device writes this buffer.
const WRITE: u16 = 2;

/// A disk image in a temporary file, removed on drop.
struct Disk {
    file: tempfile::NamedTempFile,
}
impl Disk {
    fn new(contents: &[u8]) -> Self {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), contents).unwrap();
        Self { file }
    }
    fn path(&self) -> &Path {
        self.file.path()
    }
}

fn mem() -> GuestMemoryMmap {
    GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x40_0000)]).unwrap()
}

fn desc(addr: u64, len: u32, flags: u16) -> RawDescriptor {
    RawDescriptor::from(Descriptor::new(addr, len, flags, 0))
}

fn header(m: &GuestMemoryMmap, at: u64, kind: u32, sector: u64) {
    m.write_obj(kind.to_le(), GuestAddress(at)).unwrap();
    m.write_obj(0u32, GuestAddress(at + 4)).unwrap();
    m.write_obj(sector.to_le(), GuestAddress(at + 8)).unwrap();
}

/// Activates `block` on a mock queue holding `descs` as one chain; serves it; returns
/// (used length, status byte at `status_at`, irq raised).
fn run(
    block: &mut Block,
    m: &GuestMemoryMmap,
    descs: &[RawDescriptor],
    status_at: u64,
) -> (u32, u8, bool) {
    let vq = MockSplitQueue::new(m, 16);
    vq.build_desc_chain(descs).unwrap();
    let queue: Queue = vq.create_queue().unwrap();
    let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let interrupt = Arc::new(Interrupt::new(irq.try_clone().unwrap()));
    block
        .activate(m.clone(), 0, vec![queue], vec![], interrupt)
        .unwrap();
    lock(&block.state).process_queue();
    let used_len = vq.used().ring().ref_at(0).unwrap().load().len();
    let status: u8 = m.read_obj(GuestAddress(status_at)).unwrap();
    (used_len, status, irq.read().is_ok())
}

#[test]
fn reads_a_sector_range() {
    let mut image = vec![0u8; 4096];
    image[1024..1029].copy_from_slice(b"hello");
    let disk = Disk::new(&image);
    let mut block = Block::open(disk.path(), true, "disk0").unwrap();
    let m = mem();
    header(&m, 0x10_0000, T_IN, 2);
    let descs = [
        desc(0x10_0000, 16, 0),
        desc(0x20_0000, 512, WRITE),
        desc(0x30_0000, 1, WRITE),
    ];
    let (used, status, irq) = run(&mut block, &m, &descs, 0x30_0000);
    assert_eq!((used, status, irq), (513, S_OK, true));
    let mut got = [0u8; 5];
    m.read_slice(&mut got, GuestAddress(0x20_0000)).unwrap();
    assert_eq!(&got, b"hello");
}

#[test]
fn writes_and_flushes_a_writable_disk() {
    let disk = Disk::new(&[0u8; 2048]);
    let mut block = Block::open(disk.path(), false, "disk0").unwrap();
    let m = mem();
    header(&m, 0x10_0000, T_OUT, 1);
    m.write_slice(&[0xab; 512], GuestAddress(0x20_0000))
        .unwrap();
    let descs = [
        desc(0x10_0000, 16, 0),
        desc(0x20_0000, 512, 0),
        desc(0x30_0000, 1, WRITE),
    ];
    let (used, status, _) = run(&mut block, &m, &descs, 0x30_0000);
    assert_eq!((used, status), (1, S_OK));
    let on_disk = std::fs::read(disk.path()).unwrap();
    assert!(on_disk[512..1024].iter().all(|&b| b == 0xab));
    assert!(on_disk[..512].iter().all(|&b| b == 0));

    header(&m, 0x10_0000, T_FLUSH, 0);
    let descs = [desc(0x10_0000, 16, 0), desc(0x30_0000, 1, WRITE)];
    assert_eq!(run(&mut block, &m, &descs, 0x30_0000).1, S_OK);
}

#[test]
fn read_only_disks_refuse_writes() {
    let disk = Disk::new(&[7u8; 1024]);
    let mut block = Block::open(disk.path(), true, "disk0").unwrap();
    assert_ne!(block.features() & VIRTIO_BLK_F_RO, 0);
    let m = mem();
    header(&m, 0x10_0000, T_OUT, 0);
    let descs = [
        desc(0x10_0000, 16, 0),
        desc(0x20_0000, 512, 0),
        desc(0x30_0000, 1, WRITE),
    ];
    assert_eq!(run(&mut block, &m, &descs, 0x30_0000).1, S_IOERR);
    assert_eq!(std::fs::read(disk.path()).unwrap(), vec![7u8; 1024]);
}

#[test]
fn hostile_requests_fail_alone() {
    let disk = Disk::new(&[0u8; 1024]);
    let mut block = Block::open(disk.path(), false, "disk0").unwrap();
    let m = mem();
    // Past the end of the disk.
    header(&m, 0x10_0000, T_IN, 2);
    let past_end = [
        desc(0x10_0000, 16, 0),
        desc(0x20_0000, 512, WRITE),
        desc(0x30_0000, 1, WRITE),
    ];
    assert_eq!(
        run(&mut block, &m, &past_end, 0x30_0000),
        (1, S_IOERR, true)
    );
    // A read into a device-readable buffer (wrong direction).
    header(&m, 0x10_0000, T_IN, 0);
    let wrong_dir = [
        desc(0x10_0000, 16, 0),
        desc(0x20_0000, 512, 0),
        desc(0x30_0000, 1, WRITE),
    ];
    assert_eq!(run(&mut block, &m, &wrong_dir, 0x30_0000).1, S_IOERR);
    // A buffer outside guest memory.
    let outside = [
        desc(0x10_0000, 16, 0),
        desc(0xffff_0000, 512, WRITE),
        desc(0x30_0000, 1, WRITE),
    ];
    assert_eq!(run(&mut block, &m, &outside, 0x30_0000).1, S_IOERR);
    // A header too short, and an unknown request type.
    let short = [desc(0x10_0000, 8, 0), desc(0x30_0000, 1, WRITE)];
    assert_eq!(run(&mut block, &m, &short, 0x30_0000).1, S_IOERR);
    header(&m, 0x10_0000, 99, 0);
    let unknown = [desc(0x10_0000, 16, 0), desc(0x30_0000, 1, WRITE)];
    assert_eq!(run(&mut block, &m, &unknown, 0x30_0000).1, S_UNSUPP);
    // No writable status descriptor: nothing is written, the chain is still returned.
    let no_status = [desc(0x10_0000, 16, 0), desc(0x30_0000, 1, 0)];
    assert_eq!(run(&mut block, &m, &no_status, 0x30_0000).0, 0);
    // An oversized transfer (the queue itself already refuses chains this large in memory).
    let huge = Descriptor::new(0x20_0000, MAX_REQUEST_BYTES as u32 + 512, WRITE, 0);
    let big_disk = Disk::new(&[]);
    std::fs::File::options()
        .write(true)
        .open(big_disk.path())
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    let big = Block::open(big_disk.path(), false, "big").unwrap();
    let done = lock(&big.state).execute(&m, T_IN, 0, &[huge]);
    assert_eq!(done.status, S_IOERR);
}

#[test]
fn config_space_and_id() {
    let disk = Disk::new(&[0u8; 4096 + 100]);
    let mut block = Block::open(disk.path(), false, "cocoon-disk").unwrap();
    let mut cap = [0u8; 8];
    block.read_config(0, &mut cap);
    assert_eq!(u64::from_le_bytes(cap), 8, "rounded down to whole sectors");
    let mut far = [0xffu8; 4];
    block.read_config(u64::MAX - 1, &mut far);
    assert_eq!(far, [0; 4]);
    let m = mem();
    header(&m, 0x10_0000, T_GET_ID, 0);
    let descs = [
        desc(0x10_0000, 16, 0),
        desc(0x20_0000, 20, WRITE),
        desc(0x30_0000, 1, WRITE),
    ];
    assert_eq!(run(&mut block, &m, &descs, 0x30_0000).0, 21);
    let mut id = [0u8; 11];
    m.read_slice(&mut id, GuestAddress(0x20_0000)).unwrap();
    assert_eq!(&id, b"cocoon-disk");
}

fn capacity_sectors(block: &Block) -> u64 {
    let mut cap = [0u8; 8];
    block.read_config(0, &mut cap);
    u64::from_le_bytes(cap)
}

#[test]
fn a_slot_takes_an_image_while_active_and_gives_it_back() {
    let mut image = vec![0u8; 2048];
    image[512..517].copy_from_slice(b"later");
    let disk = Disk::new(&image);
    let mut block = Block::empty_slot("slot0");
    let slot = block.slot();
    assert_eq!(
        (capacity_sectors(&block), block.config_generation()),
        (0, 0)
    );
    let m = mem();
    header(&m, 0x10_0000, T_IN, 1);
    let read = [
        desc(0x10_0000, 16, 0),
        desc(0x20_0000, 512, WRITE),
        desc(0x30_0000, 1, WRITE),
    ];
    assert_eq!(run(&mut block, &m, &read, 0x30_0000).1, S_IOERR, "empty");

    // The driver is active (run() activated it): attaching raises a config change.
    let interrupt = lock(&block.state)
        .active
        .as_ref()
        .unwrap()
        .interrupt
        .clone();
    interrupt.acknowledge(u32::MAX);
    assert_eq!(slot.attach(disk.path(), false).unwrap(), 2048);
    assert_eq!(capacity_sectors(&block), 4);
    assert_eq!(block.config_generation(), 1);
    assert_eq!(
        interrupt.status() & INTERRUPT_CONFIG_CHANGE,
        INTERRUPT_CONFIG_CHANGE
    );
    assert!(matches!(
        slot.attach(disk.path(), false),
        Err(SlotError::Busy)
    ));
    assert_eq!(run(&mut block, &m, &read, 0x30_0000).1, S_OK);
    let mut got = [0u8; 5];
    m.read_slice(&mut got, GuestAddress(0x20_0000)).unwrap();
    assert_eq!(&got, b"later");

    assert!(slot.detach());
    assert_eq!(
        (capacity_sectors(&block), block.config_generation()),
        (0, 2)
    );
    assert_eq!(run(&mut block, &m, &read, 0x30_0000).1, S_IOERR, "detached");
    assert!(!slot.detach());
    let missing = slot
        .attach(Path::new("/nonexistent/disk.img"), false)
        .unwrap_err();
    assert!(missing.to_string().contains("/nonexistent/disk.img"));
    assert_eq!(capacity_sectors(&block), 0);

    // Attached read-only: reads work, writes fail and leave the image as it was.
    slot.attach(disk.path(), true).unwrap();
    assert_eq!(run(&mut block, &m, &read, 0x30_0000).1, S_OK);
    header(&m, 0x10_0000, T_OUT, 1);
    let write = [
        desc(0x10_0000, 16, 0),
        desc(0x20_0000, 512, 0),
        desc(0x30_0000, 1, WRITE),
    ];
    assert_eq!(run(&mut block, &m, &write, 0x30_0000).1, S_IOERR);
    assert_eq!(std::fs::read(disk.path()).unwrap(), image);
    slot.detach();
    assert!(!lock(&block.state).read_only);
}

#[test]
fn missing_image_names_the_path() {
    let err = Block::open(Path::new("/nonexistent/disk.img"), true, "d")
        .err()
        .unwrap();
    assert!(err.to_string().contains("/nonexistent/disk.img"));
}
