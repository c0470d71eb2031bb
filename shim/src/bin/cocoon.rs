//! `cocoon`: run a command in a container inside its own microVM, like `docker run`.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use cocoon_shim::launcher::{self, RunArgs};

#[derive(Parser)]
#[command(name = "cocoon", version, about = "Run containers in microVMs")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a command in a new container, in a new microVM, and exit with its exit code.
    Run(RunArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) => match launcher::run(&args) {
            Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
            Err(e) => {
                eprintln!("cocoon: {e:#}");
                ExitCode::from(launcher::LAUNCH_FAILED)
            }
        },
    }
}
