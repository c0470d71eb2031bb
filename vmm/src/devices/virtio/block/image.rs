//! Opening a disk image file: a regular file, its size rounded down to whole sectors.

use std::fs::{File, OpenOptions};
use std::path::Path;

use super::state::SECTOR_SIZE;

/// Failure to open a disk image.
#[derive(Debug, thiserror::Error)]
#[error("disk image {path}: {reason}")]
pub struct DiskError {
    pub path: String,
    pub reason: String,
}

pub(super) fn open_image(path: &Path, read_only: bool) -> Result<(File, u64), DiskError> {
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
