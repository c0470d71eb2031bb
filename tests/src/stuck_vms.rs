//! What the microVMs on this host are doing, for a scenario step that got no answer: each
//! `cocoon-vmm` is asked for its vCPUs' registers (SIGUSR1, into its `vmm.log`), its threads'
//! states are read from /proc, and the end of every VM's console and VMM log under the shim's
//! runtime directories is shown. Every line starts with [`MARK`], so the suite's log shows where
//! a report begins and ends.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

/// The start of every line of a report.
pub const MARK: &str = "@@STUCK";

/// Where the shim keeps its VMs' runtime directories (`console.log`, `vmm.log`).
const SHIM_VM_DIRS: &str = "/run/cocoon/ctr";

/// Lines of each log shown.
const LOG_LINES: usize = 25;

/// The report: the VMMs' threads, then each VM's console and VMM log (after the register dump
/// they were asked for has had a second to land).
pub fn report() -> String {
    let mut out = String::new();
    let vmms = vmm_pids();
    let _ = writeln!(out, "{MARK} {} cocoon-vmm process(es)", vmms.len());
    for pid in &vmms {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(*pid),
            nix::sys::signal::Signal::SIGUSR1,
        );
        let _ = writeln!(out, "{MARK} vmm {pid}: {}", threads(*pid));
    }
    std::thread::sleep(Duration::from_secs(1));
    for pid in &vmms {
        let _ = writeln!(out, "{MARK} vmm {pid} a second later: {}", threads(*pid));
    }
    let mut dirs: Vec<_> = std::fs::read_dir(SHIM_VM_DIRS)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .collect();
    dirs.sort();
    for dir in dirs {
        for log in ["console.log", "vmm.log"] {
            let path = dir.join(log);
            let _ = writeln!(out, "{MARK} {}:", path.display());
            for line in last_lines(&path, LOG_LINES) {
                let _ = writeln!(out, "{MARK}   {line}");
            }
        }
    }
    out
}

/// The pids of the `cocoon-vmm` processes running now.
pub fn vmm_pids() -> Vec<i32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let pid = e.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
            let argv0 = cmdline.split(|b| *b == 0).next()?;
            String::from_utf8_lossy(argv0)
                .ends_with("cocoon-vmm")
                .then_some(pid)
        })
        .collect()
}

/// Each thread of `pid` as `name:state:wchan:switches` (voluntary + involuntary context
/// switches: a count that does not move between two reports is a thread that did not run).
fn threads(pid: i32) -> String {
    let task = Path::new("/proc").join(pid.to_string()).join("task");
    let mut tids: Vec<_> = std::fs::read_dir(&task)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .collect();
    tids.sort();
    tids.iter()
        .map(|t| {
            let read = |f: &str| std::fs::read_to_string(t.join(f)).unwrap_or_default();
            let status = read("status");
            let field = |key: &str| {
                status
                    .lines()
                    .find_map(|l| l.strip_prefix(key))
                    .map(|v| v.trim().to_string())
                    .unwrap_or_default()
            };
            format!(
                "{}:{}:{}:{}+{}",
                read("comm").trim(),
                field("State:").split(' ').next().unwrap_or(""),
                read("wchan").trim(),
                field("voluntary_ctxt_switches:"),
                field("nonvoluntary_ctxt_switches:"),
            )
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The last `n` lines of the file at `path`, from at most its last 4 KiB (none where it cannot
/// be read).
fn last_lines(path: &Path, n: usize) -> Vec<String> {
    let text = cocoon_sandbox::vm::read_tail(path, 4096);
    let lines: Vec<_> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..]
        .iter()
        .map(|l| l.to_string())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_lines_keeps_the_end_of_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        std::fs::write(&path, "a\nb\nc\n").unwrap();
        assert_eq!(last_lines(&path, 2), ["b", "c"]);
        assert_eq!(last_lines(&path, 9), ["a", "b", "c"]);
        assert!(last_lines(&dir.path().join("none"), 2).is_empty());
    }

    #[test]
    fn a_process_reports_its_threads() {
        let me = threads(std::process::id() as i32);
        assert!(me.contains(':'), "{me}");
    }
}
