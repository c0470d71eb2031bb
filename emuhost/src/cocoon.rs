//! An emulated host that carries cocoon: the VMM, the guest images and extra files, with the
//! environment a script expects (`$COCOON_VMM`, `$GUEST_BZIMAGE`, `$GUEST_VMLINUX`,
//! `$GUEST_INITRD`, `$COCOON_FILES`), and a script's exit status read back from its console.
//! The test suites and `cocoon run --emulated` both start here.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Result};

use crate::host::{EmulatedHost, HostFile, FILES_DIR, GUEST_DIR, SCRIPT_EXIT};
use crate::tools::HostTools;

/// A file put in `$COCOON_FILES` inside the host.
#[derive(Clone)]
pub struct SuiteFile {
    pub name: String,
    pub contents: Vec<u8>,
}

/// What the host's VMM boots; the ELF vmlinux is optional (only the boot tests use it).
pub struct CocoonFiles<'a> {
    pub vmm: &'a Path,
    pub bzimage: &'a Path,
    pub vmlinux: Option<&'a Path>,
    pub initrd: &'a Path,
}

/// An emulated host holding cocoon's VMM, the guest images and `files`, with the scenario
/// environment variables pointing at them.
pub fn cocoon_host(
    tools: HostTools,
    cocoon: &CocoonFiles<'_>,
    files: Vec<SuiteFile>,
) -> Result<EmulatedHost> {
    let mut host = EmulatedHost::new(tools)?;
    let vmm_in_host = host.add_binary(cocoon.vmm)?;
    host.add_file(&format!("{GUEST_DIR}/bzImage"), cocoon.bzimage)?;
    host.add_file(&format!("{GUEST_DIR}/initramfs.cpio"), cocoon.initrd)?;
    if let Some(vmlinux) = cocoon.vmlinux {
        host.add_file(&format!("{GUEST_DIR}/vmlinux"), vmlinux)?;
        host.set_env("GUEST_VMLINUX", &format!("{GUEST_DIR}/vmlinux"));
    }
    for f in files {
        host.add_bytes(HostFile {
            path: format!("{FILES_DIR}/{}", f.name),
            contents: f.contents,
            perm: 0o755,
        });
    }
    host.set_env("COCOON_VMM", &vmm_in_host);
    host.set_env("GUEST_BZIMAGE", &format!("{GUEST_DIR}/bzImage"));
    host.set_env("GUEST_INITRD", &format!("{GUEST_DIR}/initramfs.cpio"));
    host.set_env("COCOON_FILES", FILES_DIR);
    host.set_env("COCOON_EMULATED_HOST", "1");
    Ok(host)
}

/// Runs `command` in `host` within `deadline`, each console line to `echo` as it arrives; the
/// command's exit status.
pub fn run_command(
    host: EmulatedHost,
    command: &str,
    deadline: Duration,
    echo: impl FnMut(&str, Duration) + Send + 'static,
) -> Result<u8> {
    let finished = host.run(command, deadline, echo)?;
    if finished.timed_out {
        bail!("timed out after {}s", deadline.as_secs());
    }
    script_status(&finished.output)
        .ok_or_else(|| anyhow::anyhow!("the emulated host stopped before the command finished"))
}

/// The script's exit status: the last such line, which the host prints after the command has
/// ended (a container's output on the same console could print one of its own before).
fn script_status(output: &str) -> Option<u8> {
    output
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix(SCRIPT_EXIT))
        .and_then(|s| s.trim().parse::<u8>().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_exit_line_is_the_scripts() {
        let out = format!("{SCRIPT_EXIT} 9\nmore\n{SCRIPT_EXIT} 3\n");
        assert_eq!(script_status(&out), Some(3));
        assert_eq!(script_status("no marker\n"), None);
        assert_eq!(script_status(&format!("{SCRIPT_EXIT} x\n")), None);
    }
}
