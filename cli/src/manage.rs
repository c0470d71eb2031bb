//! `cocoon ps`, `exec`, `logs`, `kill` and `rm`: working on containers by name, through their
//! records and, while they run, their agents.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use cocoon_protocol::Operation;
use cocoon_sandbox::AgentClient;
use nix::sys::signal::Signal;

use crate::logs as log_file;
use crate::request::ProcessFlags;
use crate::session::{self, Stdio, CONTAINER_ID};
use crate::state::{self, Entry, Liveness, Record, Root};
use crate::target::Target;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long `rm -f` waits for a killed container's monitor to record the end.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Args, Debug)]
pub struct ExecArgs {
    #[command(flatten)]
    pub process: ProcessFlags,
    /// The running container.
    pub name: String,
    /// The command and its arguments.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
    pub command: Vec<String>,
}

#[derive(Args, Debug)]
pub struct PsArgs {
    /// Also list containers that have ended.
    #[arg(short, long)]
    pub all: bool,
    /// Names only.
    #[arg(short, long)]
    pub quiet: bool,
}

#[derive(Args, Debug)]
pub struct LogsArgs {
    /// Keep printing what the container writes until it ends.
    #[arg(short, long)]
    pub follow: bool,
    pub name: String,
}

#[derive(Args, Debug)]
pub struct KillArgs {
    /// The signal (name or number; default KILL).
    #[arg(short, long = "signal", value_name = "SIGNAL")]
    pub signal_flag: Option<String>,
    pub name: String,
    /// The signal, as `cocoon kill NAME TERM`.
    pub signal: Option<String>,
}

#[derive(Args, Debug)]
pub struct RmArgs {
    /// Kill the container first if it runs.
    #[arg(short, long)]
    pub force: bool,
    #[arg(required = true)]
    pub names: Vec<String>,
}

/// A running container's agent.
fn connect_running(root: &Root, name: &str) -> Result<(Entry, AgentClient)> {
    let (entry, record) = root.open(name)?;
    match record.liveness() {
        Liveness::Running => {}
        other => bail!(
            "container '{name}' is not running ({}): `cocoon logs {name}` shows what it did",
            describe(&other)
        ),
    }
    let client = AgentClient::connect(&entry.vsock(), CONNECT_TIMEOUT)
        .with_context(|| format!("reaching container '{name}'"))?;
    Ok((entry, client))
}

/// Runs a process in a running container; its exit code.
pub fn exec(root: Option<&Path>, args: &ExecArgs) -> Result<i32> {
    let process = args.process.process(&args.command)?;
    let root = Root::locate(root)?;
    let (entry, client) = connect_running(&root, &args.name)?;
    let client = Arc::new(client);
    let exec_id = format!("exec-{}", std::process::id());
    // Each exec takes its own ports (several may run at once).
    let first_port = 2000 + (std::process::id() % 20_000) * 3;
    let stdio = Stdio::bind(
        &entry.vsock(),
        first_port,
        args.process.wants_stdin(),
        args.process.tty,
    )?;
    client.call(Operation::Exec {
        container_id: CONTAINER_ID.into(),
        exec_id: exec_id.clone(),
        process: Box::new(cocoon_sandbox::spec::process(&process.options())),
        stdio: stdio.ports(),
    })?;
    let streams = stdio.accept()?;
    let code = session::attach(
        &client,
        &Target {
            container_id: CONTAINER_ID.into(),
            exec_id: Some(exec_id),
        },
        streams,
        args.process.tty,
        None,
        None,
    );
    client.close();
    code
}

fn describe(liveness: &Liveness) -> String {
    match liveness {
        Liveness::Running => "running".into(),
        Liveness::Exited(code) => format!("exited ({code})"),
        Liveness::Failed(error) => format!("failed: {error}"),
        Liveness::Dead => "dead: its monitor is gone".into(),
    }
}

fn ago(seconds: u64) -> String {
    match seconds {
        0..=59 => format!("{seconds}s"),
        60..=3599 => format!("{}m", seconds / 60),
        3600..=86_399 => format!("{}h", seconds / 3600),
        _ => format!("{}d", seconds / 86_400),
    }
}

fn status_column(record: &Record) -> String {
    let now = state::now();
    match record.liveness() {
        Liveness::Running => format!("Up {}", ago(now.saturating_sub(record.created))),
        Liveness::Exited(code) => format!(
            "Exited ({code}) {} ago",
            ago(now.saturating_sub(record.finished.unwrap_or(record.created)))
        ),
        Liveness::Failed(_) => "Failed".into(),
        Liveness::Dead => "Dead".into(),
    }
}

/// Lists containers: running ones, or all with `-a`.
pub fn ps(root: Option<&Path>, args: &PsArgs) -> Result<()> {
    let root = Root::locate(root)?;
    let listed: Vec<(Entry, Record)> = root
        .list()?
        .into_iter()
        .filter(|(_, r)| args.all || r.liveness() == Liveness::Running)
        .collect();
    if args.quiet {
        for (entry, _) in listed {
            println!("{}", entry.name);
        }
        return Ok(());
    }
    println!(
        "{:<20} {:<22} {:<24} {:<40} PORTS",
        "NAME", "STATUS", "IMAGE", "COMMAND"
    );
    for (entry, record) in listed {
        let mut command = record.command.join(" ");
        if command.len() > 40 {
            command.truncate(37);
            command.push_str("...");
        }
        println!(
            "{:<20} {:<22} {:<24} {command:<40} {}",
            entry.name,
            status_column(&record),
            record.image,
            record.ports
        );
    }
    Ok(())
}

/// Prints a container's output: its stdout to ours, its stderr to ours.
pub fn logs(root: Option<&Path>, args: &LogsArgs) -> Result<()> {
    let root = Root::locate(root)?;
    let (entry, record) = root.open(&args.name)?;
    if !record.detached {
        bail!(
            "container '{}' runs attached: its output goes to the terminal that started it, not to a log",
            args.name
        );
    }
    let still_running = || {
        entry
            .record()
            .map(|r| r.liveness() == Liveness::Running)
            .unwrap_or(false)
    };
    log_file::replay(
        &entry.log(),
        &mut std::io::stdout().lock(),
        &mut std::io::stderr().lock(),
        args.follow,
        still_running,
    )
    .context("reading the container's log")
}

fn parse_signal(text: &str) -> Result<i32> {
    if let Ok(number) = text.parse::<i32>() {
        return Signal::try_from(number)
            .map(|s| s as i32)
            .map_err(|_| anyhow!("unknown signal {number}"));
    }
    let upper = text.to_ascii_uppercase();
    let full = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    full.parse::<Signal>()
        .map(|s| s as i32)
        .map_err(|_| anyhow!("unknown signal '{text}': use a name like TERM or a number like 15"))
}

/// Sends a signal to a running container's process.
pub fn kill(root: Option<&Path>, args: &KillArgs) -> Result<()> {
    let signal = match (&args.signal_flag, &args.signal) {
        (Some(_), Some(_)) => {
            bail!("give the signal once: `cocoon kill -s SIG NAME` or `cocoon kill NAME SIG`")
        }
        (Some(s), None) | (None, Some(s)) => parse_signal(s)?,
        (None, None) => libc::SIGKILL,
    };
    let root = Root::locate(root)?;
    let (_, client) = connect_running(&root, &args.name)?;
    client.call(Operation::Signal {
        container_id: CONTAINER_ID.into(),
        exec_id: None,
        signal,
        all: false,
    })?;
    client.close();
    Ok(())
}

/// Kills `pid` if it still is the process this container's record names (its command line
/// mentions the container's directory), so a recycled pid is never hit.
fn kill_if_ours(pid: Option<u32>, entry: &Entry) {
    let Some(pid) = pid else { return };
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let ours = String::from_utf8_lossy(&cmdline).contains(&*entry.dir.to_string_lossy())
        || String::from_utf8_lossy(&cmdline).contains(&format!("\0monitor\0{}\0", entry.name));
    if ours {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// Removes containers; `-f` kills running ones first.
pub fn rm(root: Option<&Path>, args: &RmArgs) -> Result<()> {
    let root = Root::locate(root)?;
    let mut failures = Vec::new();
    for name in &args.names {
        match remove_one(&root, name, args.force) {
            Ok(()) => println!("{name}"),
            Err(e) => failures.push(format!("{e:#}")),
        }
    }
    match failures.as_slice() {
        [] => Ok(()),
        [one] => bail!("{one}"),
        many => bail!("{}", many.join("; ")),
    }
}

fn remove_one(root: &Root, name: &str, force: bool) -> Result<()> {
    let (entry, record) = root.open(name)?;
    match record.liveness() {
        Liveness::Running if !force => bail!(
            "container '{name}' is running: stop it with `cocoon kill {name}`, or use `cocoon rm -f {name}`"
        ),
        Liveness::Running => {
            if let Ok(client) = AgentClient::connect(&entry.vsock(), CONNECT_TIMEOUT) {
                let _ = client.call(Operation::Signal {
                    container_id: CONTAINER_ID.into(),
                    exec_id: None,
                    signal: libc::SIGKILL,
                    all: true,
                });
            }
            let deadline = Instant::now() + STOP_TIMEOUT;
            while state::process_alive(record.watcher_pid) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            kill_if_ours(Some(record.watcher_pid), &entry);
            kill_if_ours(record.vmm_pid, &entry);
        }
        Liveness::Dead => kill_if_ours(record.vmm_pid, &entry),
        Liveness::Exited(_) | Liveness::Failed(_) => {}
    }
    entry.remove()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_by_name_or_number() {
        assert_eq!(parse_signal("TERM").unwrap(), libc::SIGTERM);
        assert_eq!(parse_signal("sigint").unwrap(), libc::SIGINT);
        assert_eq!(parse_signal("9").unwrap(), libc::SIGKILL);
        assert!(parse_signal("NOPE").is_err());
        assert!(parse_signal("999").is_err());
    }

    #[test]
    fn ages() {
        assert_eq!(ago(5), "5s");
        assert_eq!(ago(120), "2m");
        assert_eq!(ago(7200), "2h");
        assert_eq!(ago(172_800), "2d");
    }
}
