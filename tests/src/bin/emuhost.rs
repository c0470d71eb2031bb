//! `cocoon-emuhost`: runs a shell command next to cocoon's VMM and guest images under real KVM —
//! directly where this CPU has hardware virtualization, else inside the emulated KVM host (qemu TCG,
//! `-cpu max`, Debian's cloud kernel and KVM modules). Output streams live; the exit status is the
//! command's. The command sees $COCOON_VMM, $GUEST_BZIMAGE, $GUEST_VMLINUX and $GUEST_INITRD, and
//! $COCOON (the launcher) with its default image when they are built.

use std::io::Write;
use std::process::{Command, ExitCode};
use std::time::Duration;

use cocoon_emuhost::process::run_with_deadline;
use cocoon_emuhost::{cocoon_host, run_command, SuiteFile};
use cocoon_tests::artifacts::{guest_images, workspace_binary};
use cocoon_tests::suite::{choose_mode, KvmMode};

fn usage() -> ExitCode {
    eprintln!("usage: cocoon-emuhost [--cpus N] [--timeout SECS] COMMAND");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let mut cpus: u8 = 2;
    let mut timeout = 300u64;
    let mut command = None;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--cpus" => match args.next().and_then(|v| v.parse().ok()) {
                Some(v) => cpus = v,
                None => return usage(),
            },
            "--timeout" => match args.next().and_then(|v| v.parse().ok()) {
                Some(v) => timeout = v,
                None => return usage(),
            },
            _ if command.is_none() => command = Some(arg),
            _ => return usage(),
        }
    }
    let Some(command) = command else {
        return usage();
    };
    match run(&command, cpus, Duration::from_secs(timeout)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("cocoon-emuhost: error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn on_path(program: &str) -> Option<std::path::PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

fn run(command: &str, cpus: u8, deadline: Duration) -> anyhow::Result<u8> {
    let vmm = workspace_binary("cocoon-vmm").map_err(anyhow::Error::msg)?;
    let guest = guest_images().map_err(anyhow::Error::msg)?;
    let (mode, tools) = choose_mode()?;
    let echo = |line: &str, _| {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}");
    };
    match mode {
        KvmMode::Direct => {
            eprintln!("cocoon-emuhost: this CPU has hardware virtualization: running directly");
            let mut cmd = Command::new("sh");
            if let Ok(cocoon) = workspace_binary("cocoon") {
                cmd.env("COCOON", cocoon);
            }
            cmd.arg("-c")
                .arg(command)
                .env("COCOON_VMM", &vmm)
                .env("GUEST_BZIMAGE", &guest.bzimage)
                .env("GUEST_VMLINUX", &guest.vmlinux)
                .env("GUEST_INITRD", &guest.initrd);
            let finished = run_with_deadline(cmd, deadline, echo)?;
            Ok(finished.code.unwrap_or(1).clamp(0, 255) as u8)
        }
        KvmMode::EmulatedHost => {
            eprintln!(
                "cocoon-emuhost: no hardware virtualization here (no vmx/svm): running under the emulated KVM host (qemu TCG, -cpu max); expect it to be slower"
            );
            let mut files = Vec::new();
            let launcher = workspace_binary("cocoon").ok();
            if launcher.is_some() {
                // The emulated host has no mkfs.ext4: the launcher gets its default image made here.
                files.push(SuiteFile {
                    name: "default.ext4".into(),
                    contents: cocoon_tests::images::default_rootfs_image(),
                });
            }
            let tools = tools.expect("emulated tools");
            let mut host = cocoon_host(tools, &guest.cocoon_files(&vmm), files)?;
            if let Some(launcher) = launcher {
                let in_host = host.add_binary(&launcher)?;
                host.set_env("COCOON", &in_host);
                host.set_env(
                    "COCOON_DEFAULT_IMAGE",
                    &format!("{}/default.ext4", cocoon_emuhost::host::FILES_DIR),
                );
            }
            if let Some(passt) = on_path("passt") {
                // `cocoon run`'s network: passt sandboxes itself with pivot_root, which cannot
                // leave an initramfs; a dummy uplink can be made (`ip link add x type dummy`).
                host.add_binary(&passt)?;
                host.real_root = true;
                host.add_module("drivers/net/dummy.ko")?;
            }
            host.cpus = cpus;
            run_command(host, command, deadline, echo)
        }
    }
}
