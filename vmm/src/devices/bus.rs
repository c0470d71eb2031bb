//! An address space shared out among devices: the ranges they own, and which one an access hits.

use std::sync::{Arc, Mutex};

struct Range<D: ?Sized> {
    base: u64,
    len: u64,
    device: Arc<Mutex<D>>,
}

/// Devices of one kind (`dyn PioDevice`, `dyn MmioDevice`) on non-overlapping address ranges.
pub struct Bus<D: ?Sized> {
    ranges: Vec<Range<D>>,
}

impl<D: ?Sized> Default for Bus<D> {
    fn default() -> Self {
        Self { ranges: Vec::new() }
    }
}

/// A device's range would overlap another's (or is empty, or wraps around).
#[derive(Debug, thiserror::Error)]
#[error("address range {base:#x}+{len:#x} overlaps a device already on the bus")]
pub struct BusOverlap {
    pub base: u64,
    pub len: u64,
}

impl<D: ?Sized> Bus<D> {
    pub fn insert(&mut self, base: u64, len: u64, device: Arc<Mutex<D>>) -> Result<(), BusOverlap> {
        let end = base.checked_add(len).ok_or(BusOverlap { base, len })?;
        let overlaps = self
            .ranges
            .iter()
            .any(|r| base < r.base + r.len && r.base < end);
        if overlaps || len == 0 {
            return Err(BusOverlap { base, len });
        }
        self.ranges.push(Range { base, len, device });
        Ok(())
    }

    /// The device whose range holds the whole access of `size` bytes at `addr`, and the offset.
    pub fn find(&self, addr: u64, size: usize) -> Option<(&Arc<Mutex<D>>, u64)> {
        self.ranges
            .iter()
            .find(|r| {
                addr >= r.base
                    && (addr - r.base)
                        .checked_add(size as u64)
                        .is_some_and(|end| end <= r.len)
            })
            .map(|r| (&r.device, addr - r.base))
    }
}
