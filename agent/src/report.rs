//! What PID 1 writes on the console for the host (stdout, line by line, each `cocoon-guest: `):
//! the ready marker with the guest's facts (online CPUs, uptime, cgroup controllers, loopback),
//! and with `cocoon.probe_disks` one line per virtio disk. The host parses these lines: they
//! stay byte for byte as they are.

use std::fs;

use crate::init;

/// The line the host looks for to know the guest reached userspace.
const READY_MARKER: &str = "cocoon-guest: ready";

/// Counts CPUs in a list like "0-3,5" (the format of /sys/devices/system/cpu/online).
fn count_cpu_list(list: &str) -> Option<usize> {
    let mut count = 0;
    for part in list.trim().split(',').filter(|p| !p.is_empty()) {
        count += match part.split_once('-') {
            Some((a, b)) => b.parse::<usize>().ok()? - a.parse::<usize>().ok()? + 1,
            None => {
                part.parse::<usize>().ok()?;
                1
            }
        };
    }
    Some(count)
}

fn online_cpus() -> Result<usize, String> {
    let list = fs::read_to_string("/sys/devices/system/cpu/online")
        .map_err(|e| format!("reading /sys/devices/system/cpu/online: {e}"))?;
    count_cpu_list(&list).ok_or_else(|| format!("unparsable CPU list '{}'", list.trim()))
}

fn uptime() -> String {
    fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "unknown".into())
}

/// `cocoon.probe_disks` (after PID 1 set-up mounted /dev): one line per virtio disk with its size, read-only flag, first line, and
/// whether a write (with fsync) at byte 512 succeeded. Proves reads, writes and flushes end to end.
pub fn probe_disks() -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir("/sys/block")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|n| n.starts_with("vd"))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names.iter().map(|name| probe_disk(name)).collect()
}

fn probe_disk(name: &str) -> String {
    use std::os::unix::fs::FileExt;
    let sys = |f: &str| {
        fs::read_to_string(format!("/sys/block/{name}/{f}"))
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|e| format!("?{e}"))
    };
    let dev = format!("/dev/{name}");
    let head = fs::File::open(&dev)
        .and_then(|f| {
            let mut buf = [0u8; 64];
            f.read_at(&mut buf, 0).map(|n| buf[..n].to_vec())
        })
        .map(|b| {
            let text = String::from_utf8_lossy(&b).to_string();
            text.split(['\n', '\0']).next().unwrap_or("").to_string()
        })
        .unwrap_or_else(|e| format!("error:{e}"));
    let write = fs::OpenOptions::new()
        .write(true)
        .open(&dev)
        .and_then(|f| {
            let line = format!("written-by-guest {name}\n");
            f.write_all_at(line.as_bytes(), 512)?;
            f.sync_all()
        })
        .map(|()| "ok".to_string())
        .unwrap_or_else(|e| format!("error:{}", e.raw_os_error().unwrap_or(0)));
    format!(
        "cocoon-guest: disk {name} sectors={} ro={} head={head} write={write}{}",
        sys("size"),
        sys("ro"),
        ext4_summary(name, &dev)
    )
}

/// For a disk holding ext4 (magic 0xEF53 at byte 1080): mounts it read-only, counts the entries of
/// its /bin, and unmounts it — proof that the guest kernel reads images the host made.
fn ext4_summary(name: &str, dev: &str) -> String {
    use std::os::unix::fs::FileExt;
    let mut magic = [0u8; 2];
    let is_ext4 = fs::File::open(dev)
        .and_then(|f| f.read_exact_at(&mut magic, 1080))
        .is_ok()
        && magic == [0x53, 0xef];
    if !is_ext4 {
        return String::new();
    }
    let target = format!("/run/probe-{name}");
    let _ = fs::create_dir_all(&target);
    let flags = nix::mount::MsFlags::MS_RDONLY | nix::mount::MsFlags::MS_NOEXEC;
    if let Err(e) = nix::mount::mount(
        Some(dev),
        target.as_str(),
        Some("ext4"),
        flags,
        None::<&str>,
    ) {
        return format!(" ext4=mount-error:{e}");
    }
    let entries = fs::read_dir(format!("{target}/bin"))
        .map(|d| d.count())
        .unwrap_or(0);
    let _ = nix::mount::umount(target.as_str());
    format!(" ext4-bin-entries={entries}")
}

/// Sets PID 1 up (see [`init::setup_pid1`]), then the ready line; the failed step otherwise.
pub fn report() -> Result<String, String> {
    init::setup_pid1()?;
    let cpus = online_cpus()?;
    Ok(format!(
        "{READY_MARKER} cpus={cpus} uptime={} cgroup={} lo={}",
        uptime(),
        init::cgroup_controllers().join(","),
        if init::loopback_is_up() { "up" } else { "down" }
    ))
}

#[cfg(test)]
mod tests {
    use super::count_cpu_list;

    #[test]
    fn cpu_lists() {
        assert_eq!(count_cpu_list("0\n"), Some(1));
        assert_eq!(count_cpu_list("0-1\n"), Some(2));
        assert_eq!(count_cpu_list("0-3,5,7-8"), Some(7));
        assert_eq!(count_cpu_list("x"), None);
    }
}
