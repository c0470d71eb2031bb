//! cocoon-agent: PID 1 of the guest (the binary is `main.rs`: [`run`]).
//!
//! It sets the guest up as PID 1 (kernel filesystems, cgroup v2, loopback), reports on the console
//! that userspace was reached (online CPUs, uptime, cgroup controllers, loopback state), then, when
//! the VM has a vsock device, serves the host's requests on vsock port 1024 and runs containers
//! until the host destroys the sandbox. The VM then powers off (the VMM reports a clean stop); it
//! does the same at once when there is no vsock device, and on any fatal error.

use std::fs;
use std::io::Write;

mod containers;
mod events;
mod exec_confinement;
pub mod export;
mod init;
mod reaper;
mod rootfs;
mod server;
mod stdio;
mod vsock;

use std::sync::Arc;

use nix::sys::reboot::{reboot, RebootMode};

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

/// True when the kernel command line carries the flag `name` (or `name=1`).
fn cmdline_flag(name: &str) -> bool {
    let with_one = format!("{name}=1");
    fs::read_to_string("/proc/cmdline")
        .map(|c| c.split_whitespace().any(|w| w == name || w == with_one))
        .unwrap_or(false)
}

/// `cocoon.probe_disks` (after PID 1 set-up mounted /dev): one line per virtio disk with its size, read-only flag, first line, and
/// whether a write (with fsync) at byte 512 succeeded. Proves reads, writes and flushes end to end.
fn probe_disks() -> Vec<String> {
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

fn report() -> Result<String, String> {
    init::setup_pid1()?;
    let cpus = online_cpus()?;
    Ok(format!(
        "{READY_MARKER} cpus={cpus} uptime={} cgroup={} lo={}",
        uptime(),
        init::cgroup_controllers().join(","),
        if init::loopback_is_up() { "up" } else { "down" }
    ))
}

/// The agent's life as PID 1: report, serve the host until it destroys the sandbox, power off.
pub fn run() {
    let mut lines = Vec::new();
    let report = report();
    let report_ok = report.is_ok();
    if report.is_ok() && cmdline_flag("cocoon.probe_disks") {
        lines.extend(probe_disks());
    }
    lines.push(match report {
        Ok(line) => line,
        Err(e) => format!("cocoon-guest: error: {e}"),
    });
    let line = lines.join("\n");
    let mut out = std::io::stdout();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
    if report_ok && vsock::device_present() {
        if let Err(e) = serve() {
            println!("cocoon-guest: error: {e}");
        }
    } else if cmdline_flag("cocoon.hold") {
        // `cocoon.hold` on the kernel command line: stay up, reaping orphans, until the VMM is
        // stopped from outside.
        init::reap_forever();
    }
    if std::process::id() == 1 {
        nix::unistd::sync();
        // With `reboot=k` the kernel resets through the i8042, which the VMM treats as "stopped".
        let _ = reboot(RebootMode::RB_AUTOBOOT);
    }
}

/// Runs the agent: reaper, OOM watcher and the control channel, until the sandbox is destroyed.
fn serve() -> Result<(), String> {
    // libcontainer explains its failures through `tracing`: send warnings and errors to the
    // console, where the host's console log keeps them.
    let _ = tracing_subscriber::fmt()
        .with_max_level(tracing_subscriber::filter::LevelFilter::WARN)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .without_time()
        .try_init();
    let reaper = Arc::new(reaper::Reaper::default());
    let events = Arc::new(events::EventBus::default());
    let sandbox =
        containers::Sandbox::new(containers::Layout::guest(), reaper.clone(), events.clone());
    std::thread::spawn(move || reaper.run());
    {
        let sandbox = sandbox.clone();
        std::thread::spawn(move || sandbox.watch_oom());
    }
    println!(
        "cocoon-guest: agent listening on vsock port {}",
        cocoon_protocol::AGENT_PORT
    );
    server::Server::new(sandbox, events).run()
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
