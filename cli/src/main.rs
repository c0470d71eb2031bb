//! `cocoon`: run commands in containers, each inside its own microVM, like `docker run`.
//! Attached runs stream stdio, forward signals and exit with the container's exit code (128 + N
//! for a signal); detached runs (`-d`) leave a small monitor process that keeps the container's
//! log and records how it ends, for `cocoon ps/logs/exec/kill/rm`. No daemon: the state lives in
//! the runtime root ([`state`]).
//!
//! [`run`] is `cocoon run` ([`args`] its flags, [`request`] what they ask for, [`image`] the
//! root filesystem, [`volume`] host directories, [`session`] the VM and its agent, [`terminal`]
//! the user's tty and signals); [`manage`] is `exec/ps/logs/kill/rm` ([`logs`] the detached log);
//! [`emulated`] is `--emulated`, through the emulated KVM host of `cocoon-emuhost`.

mod args;
mod emulated;
mod image;
mod logs;
mod manage;
mod network;
mod request;
mod run;
mod session;
mod state;
mod target;
mod terminal;
mod volume;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use args::RunArgs;
use manage::{ExecArgs, KillArgs, LogsArgs, PsArgs, RmArgs};

#[derive(Parser)]
#[command(name = "cocoon", version, about = "Run containers in microVMs")]
struct Cli {
    /// Where containers' state lives (default: $COCOON_ROOT, else /run/cocoon for root, else
    /// $XDG_RUNTIME_DIR/cocoon).
    #[arg(long, global = true, value_name = "DIR")]
    root: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a command in a new container, in a new microVM, and exit with its exit code.
    Run(RunArgs),
    /// Run another command in a running container.
    Exec(ExecArgs),
    /// List containers.
    Ps(PsArgs),
    /// Print a detached container's output.
    Logs(LogsArgs),
    /// Send a signal to a container's process (default KILL).
    Kill(KillArgs),
    /// Remove containers.
    Rm(RmArgs),
    /// Watches a detached container (started by `cocoon run -d`).
    #[command(hide = true)]
    Monitor { name: String },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let root = cli.root.as_deref();
    let result = match &cli.command {
        Command::Run(args) => run::run(root, args),
        Command::Exec(args) => manage::exec(root, args),
        Command::Ps(args) => manage::ps(root, args).map(|()| 0),
        Command::Logs(args) => manage::logs(root, args).map(|()| 0),
        Command::Kill(args) => manage::kill(root, args).map(|()| 0),
        Command::Rm(args) => manage::rm(root, args).map(|()| 0),
        Command::Monitor { name } => run::monitor(root, name).map(|()| 0),
    };
    match result {
        Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
        Err(e) => {
            // Run and exec fail as `docker run` does: 125; the rest with 1.
            eprintln!("cocoon: {e:#}");
            ExitCode::from(match cli.command {
                Command::Run(_) | Command::Exec(_) => run::LAUNCH_FAILED,
                _ => 1,
            })
        }
    }
}
