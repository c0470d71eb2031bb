//! `cocoon-guest-image`: builds the guest initramfs around the agent binary and prints its sha256.

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Parser;

#[derive(Parser)]
#[command(name = "cocoon-guest-image", about = "Build cocoon's guest initramfs")]
struct Cli {
    /// The statically linked agent binary that becomes /init.
    #[arg(long, value_name = "PATH")]
    agent: PathBuf,
    /// Where to write the newc cpio archive.
    #[arg(long, value_name = "PATH")]
    out: PathBuf,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let agent = std::fs::read(&cli.agent)
        .map_err(|e| anyhow::anyhow!("reading {}: {e}", cli.agent.display()))?;
    if cocoon_guest_image::needs_interpreter(&agent) {
        bail!(
            "{} is dynamically linked; the guest has no libraries (build it with -C target-feature=+crt-static, as `make guest` does)",
            cli.agent.display()
        );
    }
    let image = cocoon_guest_image::guest_initramfs(&cli.agent)?;
    let sha = image.write_file(&cli.out)?;
    println!("{sha}  {}", cli.out.display());
    Ok(())
}
