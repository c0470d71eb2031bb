//! `cocoon run`'s command line.

use std::path::PathBuf;

use clap::Args;

use crate::request::ProcessFlags;

#[derive(Args, Debug)]
pub struct RunArgs {
    /// Remove the container when it ends (attached runs always are).
    #[arg(long)]
    pub rm: bool,
    /// Run in the background: print the container's name and leave it running.
    #[arg(short, long)]
    pub detach: bool,
    #[command(flatten)]
    pub process: ProcessFlags,
    /// A host directory in the container (repeatable). The guest gets an ext4 image of it on its
    /// own disk: `:ro` is read-only; writable volumes are copied back into the host directory
    /// when the container ends (the host directory stays the source of truth; changes made on
    /// the host meanwhile are overwritten).
    #[arg(short, long = "volume", value_name = "HOSTDIR:GUESTDIR[:ro]")]
    pub volumes: Vec<String>,
    /// The container's network: `default` (passt: outbound connections through the host, and
    /// the ports published with -p; the host's own loopback services stay out of reach) or
    /// `none` (loopback only).
    #[arg(long, default_value = "default", value_name = "default|none")]
    pub network: String,
    /// Publish a container port on the host (repeatable), as Docker writes it.
    #[arg(
        short,
        long = "publish",
        value_name = "[IP:]HOSTPORT:CONTAINERPORT[/udp]"
    )]
    pub publish: Vec<String>,
    /// Add a line to the container's /etc/hosts (repeatable), as Docker writes it.
    #[arg(long = "add-host", value_name = "HOST:IP")]
    pub add_host: Vec<String>,
    /// vCPUs of the microVM.
    #[arg(long, default_value_t = 1)]
    pub cpus: u8,
    /// Memory of the microVM (K, M or G suffix; plain numbers are bytes).
    #[arg(long, default_value = "256M")]
    pub memory: String,
    /// The container's name (also its hostname); generated when not given.
    #[arg(long)]
    pub name: Option<String>,
    /// Guest kernel (default: `make guest`'s, next to this binary).
    #[arg(long, value_name = "PATH")]
    pub kernel: Option<PathBuf>,
    /// Guest initramfs holding the agent.
    #[arg(long, value_name = "PATH")]
    pub initrd: Option<PathBuf>,
    /// Run inside an emulated KVM host (qemu TCG), for machines without hardware
    /// virtualization: much slower; the default image and non-interactive commands only.
    #[arg(long)]
    pub emulated: bool,
    /// `default` (the built-in busybox image), a root filesystem directory, or an image
    /// archive as `docker save` writes it.
    pub image: String,
    /// The command and its arguments (default: the image's).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
}
