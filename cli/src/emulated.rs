//! `cocoon run --emulated`: for machines without hardware virtualization. The `cocoon-emuhost`
//! library boots an emulated KVM host (qemu TCG with `-cpu max`, which offers AMD SVM to its
//! guest, Debian's cloud kernel and KVM modules) and runs this same `cocoon run` inside it, where
//! /dev/kvm is real. Output comes back through the emulated host's console, so stdin, terminals,
//! detached runs and host volumes are not available there.

use std::io::Write;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use cocoon_emuhost::host::FILES_DIR;
use cocoon_emuhost::{cocoon_host, host_tools, run_command, CocoonFiles, SuiteFile};
use cocoon_sandbox::GuestFiles;

use crate::args::RunArgs;
use crate::image::{self, DEFAULT_IMAGE};

/// How long the emulated host may take, boot included.
const DEADLINE: Duration = Duration::from_secs(300);

/// Quotes `word` for sh.
fn quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', r"'\''"))
}

/// The `cocoon run` command line to run inside the emulated host.
fn inner_command(args: &RunArgs) -> Result<String> {
    let refuse = |what: &str| -> Result<String> {
        bail!("--emulated cannot take {what}: the emulated host only returns output (run without --emulated on a machine with hardware virtualization)")
    };
    if args.detach {
        return refuse("-d");
    }
    if args.process.wants_stdin() {
        return refuse("-i or -t");
    }
    if !args.volumes.is_empty() {
        return refuse("-v");
    }
    if args.image != DEFAULT_IMAGE {
        return refuse("images other than 'default'");
    }
    if args.kernel.is_some() || args.initrd.is_some() {
        return refuse("--kernel or --initrd (it boots `make guest`'s)");
    }
    if args.command.is_empty() {
        bail!("no command to run: give one after the image (cocoon run IMAGE -- CMD [ARGS...])");
    }
    let mut words = vec![
        r#""$COCOON" run --rm --kernel "$GUEST_BZIMAGE" --initrd "$GUEST_INITRD""#.to_string(),
        format!("--cpus {}", args.cpus),
        format!("--memory {}", quote(&args.memory)),
    ];
    for e in &args.process.env {
        words.push(format!("-e {}", quote(e)));
    }
    if let Some(w) = &args.process.workdir {
        words.push(format!("-w {}", quote(w)));
    }
    if let Some(u) = &args.process.user {
        words.push(format!("-u {}", quote(u)));
    }
    if let Some(n) = &args.name {
        words.push(format!("--name {}", quote(n)));
    }
    words.push(format!("--network {}", quote(&args.network)));
    for p in &args.publish {
        words.push(format!("-p {}", quote(p)));
    }
    for h in &args.add_host {
        words.push(format!("--add-host {}", quote(h)));
    }
    words.push(format!("{DEFAULT_IMAGE} --"));
    words.extend(args.command.iter().map(|w| quote(w)));
    Ok(words.join(" "))
}

/// Runs `args` inside the emulated KVM host; the container's exit code.
pub fn run(args: &RunArgs) -> Result<i32> {
    let command = inner_command(args)?;
    let tools = host_tools().map_err(anyhow::Error::msg)?;
    let files = GuestFiles::locate(None, None, None)?;
    // The emulated host has no mkfs.ext4: the default image is made (or found) here.
    let default_image = image::default_image()?;
    let default_image = std::fs::read(&default_image)
        .with_context(|| format!("reading {}", default_image.display()))?;
    let launcher = std::env::current_exe().context("finding this cocoon binary")?;
    eprintln!("cocoon: --emulated: running inside an emulated KVM host (qemu TCG); expect seconds where hardware takes milliseconds");
    let mut host = cocoon_host(
        tools,
        &CocoonFiles {
            vmm: &files.vmm,
            bzimage: &files.kernel,
            vmlinux: None,
            initrd: &files.initrd,
        },
        vec![SuiteFile {
            name: "default.ext4".into(),
            contents: default_image,
        }],
    )?;
    let in_host = host.add_binary(&launcher)?;
    if args.network != "none" {
        // The network's passt runs inside the emulated host, beside the VMM; it sandboxes
        // itself with pivot_root, which cannot leave an initramfs.
        if let Some(passt) = crate::network::passt_program() {
            host.add_binary(&passt)?;
            host.real_root = true;
        }
    }
    host.set_env("COCOON", &in_host);
    host.set_env("COCOON_DEFAULT_IMAGE", &format!("{FILES_DIR}/default.ext4"));
    host.cpus = args.cpus.max(2);
    let code = run_command(host, &command, DEADLINE, |line, _| {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}");
    })
    .context("the emulated KVM host")?;
    Ok(code.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        run: RunArgs,
    }

    fn args(line: &[&str]) -> RunArgs {
        Cli::parse_from(std::iter::once("cocoon").chain(line.iter().copied())).run
    }

    #[test]
    fn the_inner_command_quotes_every_word() {
        let cmd = inner_command(&args(&[
            "--emulated",
            "-e",
            "A=it's",
            "default",
            "--",
            "sh",
            "-c",
            "echo $A",
        ]))
        .unwrap();
        assert!(cmd.contains(r"-e 'A=it'\''s'"), "{cmd}");
        assert!(cmd.ends_with("default -- 'sh' '-c' 'echo $A'"), "{cmd}");
    }

    #[test]
    fn what_cannot_cross_the_console_is_refused() {
        for line in [
            &["--emulated", "-i", "default", "cat"][..],
            &["--emulated", "-d", "default", "true"],
            &["--emulated", "/some/dir", "true"],
        ] {
            let err = inner_command(&args(line)).err().unwrap().to_string();
            assert!(err.starts_with("--emulated cannot take"), "{line:?}: {err}");
        }
    }
}
