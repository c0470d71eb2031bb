//! One virtio-blk request, parsed descriptor by descriptor (direction, size, range) and executed
//! against the image: a malformed request fails alone with an error status, and a chain that
//! cannot even take a status byte is returned with nothing written.

use std::os::unix::fs::FileExt;

use virtio_queue::desc::split::Descriptor;
use vm_memory::{Bytes, GuestMemoryMmap};

use super::state::*;

pub(super) struct Done {
    pub(super) status: u8,
    pub(super) written: u32,
}

fn fail(status: u8) -> Done {
    Done { status, written: 0 }
}

impl State {
    fn check_range(&self, sector: u64, len: u64) -> bool {
        sector
            .checked_mul(SECTOR_SIZE)
            .and_then(|start| start.checked_add(len))
            .is_some_and(|end| end <= self.capacity_bytes)
    }

    pub(super) fn execute(
        &self,
        mem: &GuestMemoryMmap,
        kind: u32,
        sector: u64,
        data: &[Descriptor],
    ) -> Done {
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

    /// Runs one request; returns the used length (bytes written to the guest, status included).
    pub(super) fn serve(&self, mem: &GuestMemoryMmap, descs: &[Descriptor]) -> u32 {
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
