//! `cocoon`: run commands in containers, each inside its own microVM, like `docker run`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use cocoon_shim::launcher::{self, ExecArgs, KillArgs, LogsArgs, PsArgs, RmArgs, RunArgs};

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
        Command::Run(args) => launcher::run(root, args),
        Command::Exec(args) => launcher::exec(root, args),
        Command::Ps(args) => launcher::ps(root, args).map(|()| 0),
        Command::Logs(args) => launcher::logs(root, args).map(|()| 0),
        Command::Kill(args) => launcher::kill(root, args).map(|()| 0),
        Command::Rm(args) => launcher::rm(root, args).map(|()| 0),
        Command::Monitor { name } => launcher::monitor(root, name).map(|()| 0),
    };
    match result {
        Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
        Err(e) => {
            // Run and exec fail as `docker run` does: 125; the rest with 1.
            eprintln!("cocoon: {e:#}");
            ExitCode::from(match cli.command {
                Command::Run(_) | Command::Exec(_) => launcher::LAUNCH_FAILED,
                _ => 1,
            })
        }
    }
}
