//! cocoon-agent: PID 1 of the guest (the binary is `main.rs`: [`main`]).
//!
//! It sets the guest up as PID 1 (kernel filesystems, cgroup v2, loopback), reports on the console
//! that userspace was reached (online CPUs, uptime, cgroup controllers, loopback state), then, when
//! the VM has a vsock device, serves the host's requests on vsock port 1024 and runs containers
//! until the host destroys the sandbox. The VM then powers off (the VMM reports a clean stop); it
//! does the same at once when there is no vsock device, and on any fatal error.

use std::fs;
use std::io::Write;
use std::sync::Arc;

use nix::sys::reboot::{reboot, RebootMode};

mod containers;
mod errors;
mod events;
mod exec_confinement;
pub mod export;
mod init;
mod layout;
mod logging;
pub mod network;
mod reaper;
mod report;
mod rootfs;
mod server;
pub mod spawner;
mod stdio;
mod sys_files;
mod vsock;

/// True when the kernel command line carries the flag `name` (or `name=1`).
fn cmdline_flag(name: &str) -> bool {
    let with_one = format!("{name}=1");
    fs::read_to_string("/proc/cmdline")
        .map(|c| c.split_whitespace().any(|w| w == name || w == with_one))
        .unwrap_or(false)
}

/// What every binary built on the agent runs (the guest's `/init`, and the test-only hostile
/// agent): as PID 1 the agent ([`run`]); run again by the agent as `<exe> spawn-helper <request>`
/// the helper that builds one container process ([`spawner`]); anything else is refused.
///
/// One check for all of them, because the agent re-runs `/proc/self/exe`, whichever binary that
/// is: a binary that called [`run`] directly would, as its own helper, start a second agent.
pub fn main() {
    // Never the agent unless PID 1: what the kernel passes /init comes from the boot command
    // line. Run by hand on a host, the agent would mount the guest's /proc, /run, /tmp... over
    // the host's.
    if std::process::id() != 1 {
        let mut args = std::env::args_os().skip(1);
        if args.next().is_some_and(|a| a == spawner::HELPER_COMMAND) {
            std::process::exit(spawner::helper_main(args.next()));
        }
        eprintln!(
            "cocoon-agent is the guest's /init and runs only as PID 1 inside a cocoon VM; \
             to run a container use `cocoon run`"
        );
        std::process::exit(2);
    }
    run();
}

/// The agent's life as PID 1: report, serve the host until it destroys the sandbox, power off.
fn run() {
    logging::init();
    let mut lines = Vec::new();
    let report = report::report();
    let report_ok = report.is_ok();
    if report.is_ok() && cmdline_flag("cocoon.probe_disks") {
        lines.extend(report::probe_disks());
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
    nix::unistd::sync();
    // With `reboot=k` the kernel resets through the i8042, which the VMM treats as "stopped".
    let _ = reboot(RebootMode::RB_AUTOBOOT);
}

/// Runs the agent: reaper, OOM watcher and the control channel, until the sandbox is destroyed.
fn serve() -> Result<(), String> {
    let reaper = Arc::new(reaper::Reaper::default());
    let events = Arc::new(events::EventBus::default());
    let sandbox = containers::Sandbox::new(layout::Layout::guest(), reaper.clone(), events.clone());
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
