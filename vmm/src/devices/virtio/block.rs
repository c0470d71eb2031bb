//! virtio-blk: a raw image file as a disk, read-only or read-write, with flush. Requests are checked
//! descriptor by descriptor (direction, size, range): a malformed request fails alone with an error
//! status, and a chain that cannot even take a status byte is returned with nothing written.
//!
//! A disk can also be an empty *slot* (capacity 0) whose image is attached and detached while the
//! guest runs: virtio-mmio has no hot-plug, so pods boot with slots and fill them per container.
//! A change of image updates the capacity and raises a configuration-change interrupt, on which
//! Linux's virtio_blk resizes the disk.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::{Arc, Mutex};

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use virtio_queue::desc::split::Descriptor;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::{
    ActivateError, Interrupt, VirtioDevice, INTERRUPT_CONFIG_CHANGE, INTERRUPT_USED_BUFFER,
    VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX,
};
use crate::devices::lock;

pub const BLOCK_DEVICE_TYPE: u32 = 2;
pub const QUEUE_SIZE: u16 = 256;
const SECTOR_SHIFT: u32 = 9;
const SECTOR_SIZE: u64 = 1 << SECTOR_SHIFT;
const VIRTIO_BLK_F_SEG_MAX: u64 = 1 << 2;
const VIRTIO_BLK_F_RO: u64 = 1 << 5;
const VIRTIO_BLK_F_FLUSH: u64 = 1 << 9;
const SEG_MAX: u32 = QUEUE_SIZE as u32 - 2;
const T_IN: u32 = 0;
const T_OUT: u32 = 1;
const T_FLUSH: u32 = 4;
const T_GET_ID: u32 = 8;
const S_OK: u8 = 0;
const S_IOERR: u8 = 1;
const S_UNSUPP: u8 = 2;
const HEADER_LEN: u32 = 16;
const ID_LEN: usize = 20;
/// Largest data transfer one request may carry (bounds the bounce buffer).
const MAX_REQUEST_BYTES: u64 = 16 << 20;

/// Failure to open a disk image.
#[derive(Debug, thiserror::Error)]
#[error("disk image {path}: {reason}")]
pub struct DiskError {
    pub path: String,
    pub reason: String,
}

struct Active {
    mem: GuestMemoryMmap,
    queue: Queue,
    interrupt: Arc<Interrupt>,
}

struct State {
    /// The image; `None` for an empty slot.
    file: Option<File>,
    read_only: bool,
    capacity_bytes: u64,
    /// Bumped whenever the configuration space changes (the image was swapped).
    config_generation: u32,
    id: [u8; ID_LEN],
    active: Option<Active>,
    /// The guest broke the queue itself (the used ring cannot be written): stop serving it.
    broken: bool,
}

/// The device half, owned by its transport.
pub struct Block {
    state: Arc<Mutex<State>>,
    features: u64,
}

/// The event-loop half: serves the queue when the driver notifies it.
pub struct BlockQueueHandler {
    state: Arc<Mutex<State>>,
    queue_event: EventFd,
}

impl Block {
    /// Opens `path` as a disk. Its size is rounded down to whole sectors.
    pub fn open(path: &Path, read_only: bool, id: &str) -> Result<Self, DiskError> {
        let (file, capacity_bytes) = open_image(path, read_only)?;
        let block = Self::new(read_only, id);
        {
            let mut state = lock(&block.state);
            state.file = Some(file);
            state.capacity_bytes = capacity_bytes;
        }
        Ok(block)
    }

    /// An empty, writable slot: capacity 0 until an image is attached through its [`BlockSlot`].
    pub fn empty_slot(id: &str) -> Self {
        Self::new(false, id)
    }

    fn new(read_only: bool, id: &str) -> Self {
        let mut features = VIRTIO_F_VERSION_1
            | VIRTIO_RING_F_EVENT_IDX
            | VIRTIO_BLK_F_FLUSH
            | VIRTIO_BLK_F_SEG_MAX;
        if read_only {
            features |= VIRTIO_BLK_F_RO;
        }
        let mut id_bytes = [0u8; ID_LEN];
        for (d, s) in id_bytes.iter_mut().zip(id.bytes()) {
            *d = s;
        }
        Self {
            state: Arc::new(Mutex::new(State {
                file: None,
                read_only,
                capacity_bytes: 0,
                config_generation: 0,
                id: id_bytes,
                active: None,
                broken: false,
            })),
            features,
        }
    }

    /// The handle through which a slot's image is attached and detached while the VM runs.
    pub fn slot(&self) -> BlockSlot {
        BlockSlot(self.state.clone())
    }

    /// A handle on the device's state, from which the event-loop half is made once the transport
    /// (which owns the device) has created the queue's eventfd.
    pub fn handle(&self) -> BlockHandle {
        BlockHandle(self.state.clone())
    }
}

/// Opens a disk image; returns it with its size rounded down to whole sectors.
fn open_image(path: &Path, read_only: bool) -> Result<(File, u64), DiskError> {
    let err = |reason: String| DiskError {
        path: path.display().to_string(),
        reason,
    };
    let file = OpenOptions::new()
        .read(true)
        .write(!read_only)
        .open(path)
        .map_err(|e| err(e.to_string()))?;
    let meta = file.metadata().map_err(|e| err(e.to_string()))?;
    if !meta.is_file() {
        return Err(err("not a regular file".into()));
    }
    Ok((file, meta.len() & !(SECTOR_SIZE - 1)))
}

/// See [`Block::handle`].
pub struct BlockHandle(Arc<Mutex<State>>);

/// A disk slot's image, swapped while the guest runs. See [`Block::slot`].
#[derive(Clone)]
pub struct BlockSlot(Arc<Mutex<State>>);

/// Why a slot's image could not be swapped.
#[derive(Debug, thiserror::Error)]
pub enum SlotError {
    #[error("the slot already holds a disk image; detach it first")]
    Busy,
    #[error(transparent)]
    Disk(#[from] DiskError),
}

impl BlockSlot {
    /// Puts the image at `path` into the empty slot and tells the guest its new capacity. A
    /// read-only image is opened read-only and every write to it fails (the slot was offered to
    /// the guest as writable, so that is the device's to enforce).
    pub fn attach(&self, path: &Path, read_only: bool) -> Result<u64, SlotError> {
        if lock(&self.0).file.is_some() {
            return Err(SlotError::Busy);
        }
        // Opened before the device is locked: its queue and config reads do not wait on the host.
        let (file, capacity_bytes) = open_image(path, read_only)?;
        let mut state = lock(&self.0);
        if state.file.is_some() {
            return Err(SlotError::Busy);
        }
        state.file = Some(file);
        state.read_only = read_only;
        state.set_capacity(capacity_bytes);
        Ok(capacity_bytes)
    }

    /// Empties the slot (requests still in flight fail) and tells the guest; true if it held an
    /// image.
    pub fn detach(&self) -> bool {
        let mut state = lock(&self.0);
        let held = state.file.take().is_some();
        state.read_only = false;
        state.set_capacity(0);
        held
    }
}

impl BlockHandle {
    /// The handler to register with the event loop, listening on the queue's eventfd.
    pub fn queue_handler(self, queue_event: EventFd) -> BlockQueueHandler {
        BlockQueueHandler {
            state: self.0,
            queue_event,
        }
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        BLOCK_DEVICE_TYPE
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        self.features
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let capacity_sectors = lock(&self.state).capacity_bytes >> SECTOR_SHIFT;
        let mut config = [0u8; 16];
        config[0..8].copy_from_slice(&capacity_sectors.to_le_bytes());
        config[12..16].copy_from_slice(&SEG_MAX.to_le_bytes());
        super::read_config_space(&config, offset, data);
    }

    fn config_generation(&self) -> u32 {
        lock(&self.state).config_generation
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        _features: u64,
        mut queues: Vec<Queue>,
        _queue_events: Vec<EventFd>,
        interrupt: Arc<Interrupt>,
    ) -> Result<(), ActivateError> {
        let queue = queues
            .pop()
            .filter(|_| queues.is_empty())
            .ok_or_else(|| ActivateError("virtio-blk has exactly one queue".into()))?;
        let mut state = lock(&self.state);
        state.active = Some(Active {
            mem,
            queue,
            interrupt,
        });
        state.broken = false;
        Ok(())
    }

    fn reset(&mut self) {
        lock(&self.state).active = None;
    }
}

/// Outcome of one request: status byte and bytes written into guest buffers (status excluded).
struct Done {
    status: u8,
    written: u32,
}

fn fail(status: u8) -> Done {
    Done { status, written: 0 }
}

impl State {
    /// A new capacity: the configuration space changed, and an active driver is told so.
    fn set_capacity(&mut self, capacity_bytes: u64) {
        self.capacity_bytes = capacity_bytes;
        self.config_generation = self.config_generation.wrapping_add(1);
        if let Some(active) = &self.active {
            let _ = active.interrupt.signal(INTERRUPT_CONFIG_CHANGE);
        }
    }

    fn check_range(&self, sector: u64, len: u64) -> bool {
        sector
            .checked_mul(SECTOR_SIZE)
            .and_then(|start| start.checked_add(len))
            .is_some_and(|end| end <= self.capacity_bytes)
    }

    fn execute(&self, mem: &GuestMemoryMmap, kind: u32, sector: u64, data: &[Descriptor]) -> Done {
        let total: u64 = data.iter().map(|d| u64::from(d.len())).sum();
        let Some(file) = &self.file else {
            // An empty slot: nothing to read, write or flush.
            return if kind == T_GET_ID {
                self.get_id(mem, data)
            } else {
                fail(S_IOERR)
            };
        };
        match kind {
            T_IN | T_OUT if total > MAX_REQUEST_BYTES || !self.check_range(sector, total) => {
                fail(S_IOERR)
            }
            T_IN => {
                if data.iter().any(|d| !d.is_write_only()) {
                    return fail(S_IOERR);
                }
                let mut buf = vec![0u8; total as usize];
                if file
                    .read_exact_at(&mut buf, sector << SECTOR_SHIFT)
                    .is_err()
                {
                    return fail(S_IOERR);
                }
                let mut at = 0usize;
                for d in data {
                    let len = d.len() as usize;
                    if mem.write_slice(&buf[at..at + len], d.addr()).is_err() {
                        return fail(S_IOERR);
                    }
                    at += len;
                }
                Done {
                    status: S_OK,
                    written: total as u32,
                }
            }
            T_OUT => {
                if self.read_only {
                    return fail(S_IOERR);
                }
                if data.iter().any(|d| d.is_write_only()) {
                    return fail(S_IOERR);
                }
                let mut buf = vec![0u8; total as usize];
                let mut at = 0usize;
                for d in data {
                    let len = d.len() as usize;
                    if mem.read_slice(&mut buf[at..at + len], d.addr()).is_err() {
                        return fail(S_IOERR);
                    }
                    at += len;
                }
                match file.write_all_at(&buf, sector << SECTOR_SHIFT) {
                    Ok(()) => fail(S_OK),
                    Err(_) => fail(S_IOERR),
                }
            }
            T_FLUSH => match file.sync_data() {
                Ok(()) => fail(S_OK),
                Err(_) => fail(S_IOERR),
            },
            T_GET_ID => self.get_id(mem, data),
            _ => fail(S_UNSUPP),
        }
    }

    fn get_id(&self, mem: &GuestMemoryMmap, data: &[Descriptor]) -> Done {
        let Some(d) = data.first().filter(|d| d.is_write_only()) else {
            return fail(S_IOERR);
        };
        let len = (d.len() as usize).min(ID_LEN);
        match mem.write_slice(&self.id[..len], d.addr()) {
            Ok(()) => Done {
                status: S_OK,
                written: len as u32,
            },
            Err(_) => fail(S_IOERR),
        }
    }

    /// Serves every available request; returns whether any was completed.
    fn process_queue(&mut self) -> bool {
        if self.broken {
            return false;
        }
        let Some(mut active) = self.active.take() else {
            return false;
        };
        let mut completed = false;
        'serve: loop {
            // No kicks while draining; re-enabling tells whether more arrived meanwhile.
            let _ = active.queue.disable_notification(&active.mem);
            while let Some(chain) = active.queue.pop_descriptor_chain(&active.mem) {
                let head = chain.head_index();
                let descs: Vec<Descriptor> = chain.collect();
                let used_len = self.serve(&active.mem, &descs);
                if active.queue.add_used(&active.mem, head, used_len).is_err() {
                    tracing::warn!(
                        "virtio-blk: the guest's used ring is not writable; queue stopped"
                    );
                    self.broken = true;
                    break 'serve;
                }
                completed = true;
            }
            if !active
                .queue
                .enable_notification(&active.mem)
                .unwrap_or(false)
            {
                break;
            }
        }
        if completed && active.queue.needs_notification(&active.mem).unwrap_or(true) {
            let _ = active.interrupt.signal(INTERRUPT_USED_BUFFER);
        }
        self.active = Some(active);
        completed
    }

    /// Runs one request; returns the used length (bytes written to the guest, status included).
    fn serve(&self, mem: &GuestMemoryMmap, descs: &[Descriptor]) -> u32 {
        let (Some(header), Some(status)) = (descs.first(), descs.last()) else {
            return 0;
        };
        if descs.len() < 2 || !status.is_write_only() || status.len() < 1 {
            return 0;
        }
        let done = if header.is_write_only() || header.len() < HEADER_LEN {
            fail(S_IOERR)
        } else {
            let kind: Result<u32, _> = mem.read_obj(header.addr());
            let sector: Result<u64, _> = header
                .addr()
                .0
                .checked_add(8)
                .map(vm_memory::GuestAddress)
                .map_or(Err(()), |a| mem.read_obj(a).map_err(|_| ()));
            match (kind, sector) {
                (Ok(kind), Ok(sector)) => self.execute(
                    mem,
                    u32::from_le(kind),
                    u64::from_le(sector),
                    &descs[1..descs.len() - 1],
                ),
                _ => fail(S_IOERR),
            }
        };
        match mem.write_obj(done.status, status.addr()) {
            Ok(()) => done.written + 1,
            Err(_) => 0,
        }
    }
}

impl MutEventSubscriber for BlockQueueHandler {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.queue_event, EventSet::IN)) {
            tracing::error!("virtio-blk: cannot watch the queue: {e:?}");
        }
    }

    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let _ = self.queue_event.read();
        lock(&self.state).process_queue();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_queue::desc::RawDescriptor;
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
}
