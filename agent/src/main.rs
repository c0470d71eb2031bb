//! cocoon-agent: PID 1 of the guest.
//!
//! This first version proves the boot path end to end: it mounts the kernel filesystems, reports
//! on the console that userspace was reached (with the number of online CPUs and the guest's
//! uptime), and reboots the VM, which the VMM reports as a clean stop. The vsock agent that runs
//! containers grows from here.

use std::fs;
use std::io::Write;

use nix::mount::{mount, MsFlags};
use nix::sys::reboot::{reboot, RebootMode};

/// The line the host looks for to know the guest reached userspace.
const READY_MARKER: &str = "cocoon-guest: ready";

fn mount_kernel_fs(source: &str, target: &str, fstype: &str) -> Result<(), String> {
    let _ = fs::create_dir_all(target);
    mount(
        Some(source),
        target,
        Some(fstype),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC | MsFlags::MS_NODEV,
        None::<&str>,
    )
    .map_err(|e| format!("mounting {fstype} on {target}: {e}"))
}

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

/// True when the kernel command line carries `cocoon.hold` (or `cocoon.hold=1`).
fn hold_requested() -> bool {
    fs::read_to_string("/proc/cmdline")
        .map(|c| {
            c.split_whitespace()
                .any(|w| w == "cocoon.hold" || w == "cocoon.hold=1")
        })
        .unwrap_or(false)
}

fn report() -> Result<String, String> {
    mount_kernel_fs("proc", "/proc", "proc")?;
    mount_kernel_fs("sysfs", "/sys", "sysfs")?;
    let cpus = online_cpus()?;
    Ok(format!("{READY_MARKER} cpus={cpus} uptime={}", uptime()))
}

fn main() {
    let line = match report() {
        Ok(line) => line,
        Err(e) => format!("cocoon-guest: error: {e}"),
    };
    let mut out = std::io::stdout();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
    if hold_requested() {
        // `cocoon.hold` on the kernel command line: stay up until the VMM is stopped from outside.
        loop {
            std::thread::sleep(std::time::Duration::from_secs(3600));
        }
    }
    if std::process::id() == 1 {
        nix::unistd::sync();
        // With `reboot=k` the kernel resets through the i8042, which the VMM treats as "stopped".
        let _ = reboot(RebootMode::RB_AUTOBOOT);
    }
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
