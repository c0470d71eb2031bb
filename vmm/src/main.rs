//! `cocoon-vmm`: boots one microVM from command-line flags or a JSON configuration file.
//!
//! Exit status: 0 when the guest stopped (reboot or power-off) or SIGTERM/SIGINT stopped the VM;
//! 1 when the VM could not be built (bad configuration, no KVM); 2 when the guest crashed (kernel
//! panic, triple fault, KVM internal error).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use cocoon_vmm::timing::BootTimer;
use cocoon_vmm::{ConsoleConfig, RunOptions, VmConfig, VmOutcome};

#[derive(Parser, Debug)]
#[command(
    name = "cocoon-vmm",
    version,
    about = "cocoon's minimal KVM virtual machine monitor"
)]
struct Cli {
    /// JSON configuration file (fields: kernel, initrd, cmdline, vcpus, memory_mib, console,
    /// console_max_bytes, disks [{path, read_only}], disk_slots, vsock {cid, uds}, nets [{backend, mac, mtu, ipv4,
    /// allow_metadata, tx_rate, rx_rate}], api_socket, kernel_sha256, initrd_sha256). Cannot be
    /// mixed with the VM flags below.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["kernel", "initrd", "cmdline", "vcpus", "memory_mib", "console", "console_max_bytes", "disks", "disk_slots", "vsock", "nets", "api_socket", "kernel_sha256", "initrd_sha256"])]
    config: Option<PathBuf>,
    /// Guest kernel: bzImage or ELF vmlinux.
    #[arg(long, value_name = "PATH", required_unless_present = "config")]
    kernel: Option<PathBuf>,
    /// Initramfs to hand to the kernel.
    #[arg(long, value_name = "PATH")]
    initrd: Option<PathBuf>,
    /// Kernel command line [default: "console=ttyS0 reboot=k panic=1"].
    #[arg(long, value_name = "ARGS")]
    cmdline: Option<String>,
    /// Number of vCPUs [default: 1].
    #[arg(long, value_name = "N")]
    vcpus: Option<u8>,
    /// Guest memory in MiB [default: 128].
    #[arg(long, value_name = "MIB")]
    memory_mib: Option<u32>,
    /// Serial console: stdout, off, file:PATH or unix:PATH [default: stdout].
    #[arg(long, value_name = "DEST")]
    console: Option<ConsoleConfig>,
    /// A file console's bound in bytes: past it the file becomes PATH.1 (replacing the one
    /// before) and a new one starts, so the host keeps at most twice this [default: 1 MiB].
    #[arg(long, value_name = "BYTES")]
    console_max_bytes: Option<u64>,
    /// A raw disk image for the guest (virtio-blk): path=FILE[,ro]. Repeat for more disks.
    #[arg(long = "disk", value_name = "path=FILE[,ro]")]
    disks: Vec<cocoon_vmm::config::DiskConfig>,
    /// Empty writable disks after the --disk ones, filled and emptied while the VM runs through
    /// the API socket (needs --api-socket).
    #[arg(long, value_name = "N")]
    disk_slots: Option<u8>,
    /// A virtio-vsock device: guest context ID N (3 or more) and the Unix socket its host side
    /// listens on (Firecracker hybrid vsock: write `CONNECT <port>\n`, read `OK <host port>\n`;
    /// guest connections to host port P go to `PATH_P`).
    #[arg(long = "vsock", value_name = "cid=N,uds=PATH")]
    vsock: Option<cocoon_vmm::config::VsockConfig>,
    /// A network interface (virtio-net) on a tap (by name, or an inherited descriptor) or an
    /// inherited stream socket in qemu's framing (passt --fd). Frames from another MAC or IPv4
    /// address than the guest's, or to 169.254.0.0/16 unless allow-metadata, are dropped; the
    /// rates are bytes (bps) and frames (pps) a second. Repeat for more interfaces.
    #[arg(
        long = "net",
        value_name = "tap=NAME|fd=N|stream-fd=N[,mac=MAC][,mtu=N][,ip=IPV4][,allow-metadata][,tx-bps=N]..."
    )]
    nets: Vec<cocoon_vmm::config::NetConfig>,
    /// The VMM's API socket, created at PATH: one JSON request per line, e.g.
    /// {"op":"attach_disk","slot":0,"path":"/x.ext4"} or {"op":"detach_disk","slot":0}.
    #[arg(long, value_name = "PATH")]
    api_socket: Option<PathBuf>,
    /// Refuse to boot unless the kernel image has this sha256.
    #[arg(long, value_name = "HEX")]
    kernel_sha256: Option<String>,
    /// Refuse to boot unless the initramfs has this sha256.
    #[arg(long, value_name = "HEX")]
    initrd_sha256: Option<String>,
    /// Print boot milestones (VMM start, first vCPU entry) with CLOCK_MONOTONIC times on stderr.
    #[arg(long)]
    boot_timer: bool,
    /// Log level: error, warn, info, debug, trace.
    #[arg(long, value_name = "LEVEL", default_value = "warn")]
    log_level: tracing::Level,
}

impl Cli {
    fn into_config(self) -> Result<VmConfig, cocoon_vmm::config::ConfigError> {
        if let Some(path) = &self.config {
            return cocoon_vmm::config::from_json_file(path);
        }
        let mut config = VmConfig::new(self.kernel.expect("clap requires --kernel"));
        config.initrd = self.initrd;
        if let Some(c) = self.cmdline {
            config.cmdline = c;
        }
        if let Some(v) = self.vcpus {
            config.vcpus = v;
        }
        if let Some(m) = self.memory_mib {
            config.memory_mib = m;
        }
        if let Some(c) = self.console {
            config.console = c;
        }
        if let Some(max) = self.console_max_bytes {
            config.console_max_bytes = max;
        }
        config.disks = self.disks;
        config.disk_slots = self.disk_slots.unwrap_or(0);
        config.vsock = self.vsock;
        config.nets = self.nets;
        config.api_socket = self.api_socket;
        config.kernel_sha256 = self.kernel_sha256;
        config.initrd_sha256 = self.initrd_sha256;
        Ok(config)
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => e.exit(), // --help, --version
        Err(e) => {
            // One line, like every other error of the VMM: clap's message up to its usage block.
            let rendered = e.to_string();
            let message: Vec<&str> = rendered
                .lines()
                .map(str::trim)
                .take_while(|l| !l.is_empty() && !l.starts_with("Usage:"))
                .collect();
            eprintln!(
                "cocoon-vmm: {} (see cocoon-vmm --help)",
                message.join(" ").trim_start_matches("error: ")
            );
            return ExitCode::from(1);
        }
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(cli.log_level)
        .with_target(false)
        .init();
    let options = RunOptions {
        boot_timer: cli.boot_timer.then_some(BootTimer),
    };
    // Built, then run: what must happen to a complete VM before it runs goes between the two.
    let result = cli
        .into_config()
        .map_err(|e| cocoon_vmm::Error::Build(e.into()))
        .and_then(|config| Ok(cocoon_vmm::build(&config, options)?))
        .and_then(|vmm| Ok(vmm.run()?));
    match result {
        Ok(outcome) => {
            match &outcome {
                VmOutcome::GuestStopped => tracing::info!("guest stopped"),
                VmOutcome::Signalled(sig) => tracing::info!("stopped by signal {sig}"),
                VmOutcome::GuestPanicked => eprintln!("cocoon-vmm: the guest kernel panicked"),
                VmOutcome::VcpuFailed(e) => eprintln!("cocoon-vmm: guest crashed: {e}"),
            }
            ExitCode::from(outcome.exit_code() as u8)
        }
        Err(e) => {
            eprintln!("cocoon-vmm: error: {e}");
            ExitCode::from(1)
        }
    }
}
