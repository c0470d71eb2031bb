//! `--boot-timer`: prints boot milestones with CLOCK_MONOTONIC timestamps on stderr, so a launcher
//! that noted the clock before exec can compute exec → milestone latencies.

use std::io::Write;

/// Nanoseconds of CLOCK_MONOTONIC (shared by all processes of the host).
pub fn monotonic_ns() -> u128 {
    let ts = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .expect("CLOCK_MONOTONIC is always available on Linux");
    ts.tv_sec() as u128 * 1_000_000_000 + ts.tv_nsec() as u128
}

/// Prints `cocoon-vmm: boot-timer <milestone> monotonic_ns=<ns>` lines.
#[derive(Debug, Default)]
pub struct BootTimer;

impl BootTimer {
    pub fn mark(&self, milestone: &str) {
        let line = format!(
            "cocoon-vmm: boot-timer {milestone} monotonic_ns={}\n",
            monotonic_ns()
        );
        let _ = std::io::stderr().write_all(line.as_bytes());
    }
}
