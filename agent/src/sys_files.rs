//! Numbers read from the kernel's files under /sys: a block device's size, a cgroup's counters
//! (one value, `key value` lines, io.stat's per-device byte counts).

use std::fs;
use std::path::Path;

/// A file holding one number.
pub fn read_u64(path: &Path) -> Option<u64> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// `key value` lines (cpu.stat, memory.events): the value of `key`.
pub fn keyed_value(path: &Path, key: &str) -> Option<u64> {
    let text = fs::read_to_string(path).ok()?;
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

/// Sums `rbytes=` and `wbytes=` over the devices of io.stat.
pub fn io_bytes(path: &Path) -> (u64, u64) {
    let text = fs::read_to_string(path).unwrap_or_default();
    let mut totals = (0, 0);
    for field in text.split_whitespace() {
        if let Some(v) = field.strip_prefix("rbytes=") {
            totals.0 += v.parse::<u64>().unwrap_or(0);
        } else if let Some(v) = field.strip_prefix("wbytes=") {
            totals.1 += v.parse::<u64>().unwrap_or(0);
        }
    }
    totals
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_files_parse() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(
            dir.path().join("cpu.stat"),
            "usage_usec 1234\nuser_usec 1000\n",
        )
        .unwrap();
        fs::write(
            dir.path().join("io.stat"),
            "254:0 rbytes=100 wbytes=20 rios=1 wios=1\n254:16 rbytes=5 wbytes=1\n",
        )
        .unwrap();
        assert_eq!(
            keyed_value(&dir.path().join("cpu.stat"), "usage_usec"),
            Some(1234)
        );
        assert_eq!(keyed_value(&dir.path().join("cpu.stat"), "nope"), None);
        assert_eq!(io_bytes(&dir.path().join("io.stat")), (105, 21));
    }
}
