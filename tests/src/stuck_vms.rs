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
                if not_the_guests_state(&line) {
                    let _ = writeln!(out, "{NOT_THE_GUESTS_STATE} {line}");
                }
            }
        }
    }
    out
}

/// Said of a vCPU register dump no guest of ours can be in (see [`not_the_guests_state`]).
pub const NOT_THE_GUESTS_STATE: &str = "@@NOT-THE-GUESTS-STATE";

/// Whether a VMM's register dump line (`cocoon-vmm: vCPU N: rip=0x.. rsp=0x.. ... cs=0x10`)
/// shows a state our guest kernel cannot be in: in kernel mode, a stack pointer that is not
/// canonical under 4-level paging (the guest kernel is built without 5-level paging), or code
/// in the module area above 0xffffffffc0000000 (it has no modules, BPF JIT or kprobes). Seen
/// under the emulated host: a pod's stuck vCPU held a kvm_amd address and a 5-level stack
/// address, the emulated host's own, not the guest's.
pub fn not_the_guests_state(line: &str) -> bool {
    let register = |name: &str| {
        line.split_whitespace()
            .find_map(|field| field.strip_prefix(name)?.strip_prefix("=0x"))
            .and_then(|hex| u64::from_str_radix(hex, 16).ok())
    };
    let (Some(rip), Some(rsp), Some(0x10)) = (register("rip"), register("rsp"), register("cs"))
    else {
        return false;
    };
    let canonical =
        |address: u64| !(0x0000_8000_0000_0000..0xffff_8000_0000_0000).contains(&address);
    rip >= 0xffff_ffff_c000_0000 || !canonical(rsp)
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
    fn a_state_of_the_emulated_hosts_is_told_from_the_guests() {
        // What a stuck pod's vCPU held under the emulated host (2026-12-03).
        let foreign = "cocoon-vmm: vCPU 0: rip=0xffffffffc0752dcc rsp=0xff7bb347c22b7a90 rflags=0x10246 rax=0x7e8aa000 cr3=0x68ec2000 cs=0x10";
        assert!(not_the_guests_state(foreign));
        // The guest kernel's own text and stack, and user mode, are the guest's.
        let kernel = "cocoon-vmm: vCPU 0: rip=0xffffffff8103a1b2 rsp=0xffffc90000013e80 rflags=0x246 cs=0x10";
        assert!(!not_the_guests_state(kernel));
        let user = "cocoon-vmm: vCPU 0: rip=0x4011d0 rsp=0x7ffd2a3c1e90 rflags=0x202 cs=0x33";
        assert!(!not_the_guests_state(user));
        assert!(!not_the_guests_state("cocoon-guest: ready cpus=1"));
    }

    #[test]
    fn a_process_reports_its_threads() {
        let me = threads(std::process::id() as i32);
        assert!(me.contains(':'), "{me}");
    }
}
