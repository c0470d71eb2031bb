//! Finding the VMM, the guest kernel and the initramfs.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};

pub struct GuestFiles {
    pub vmm: PathBuf,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
}

fn exe_dir() -> Option<PathBuf> {
    std::env::current_exe()
        .ok()?
        .parent()
        .map(Path::to_path_buf)
}

/// Flag, then environment, then next to this binary (`cocoon-vmm`) and in `../guest` (where
/// `make guest` puts the images relative to `target/debug`).
fn find(flag: Option<&Path>, env: &str, beside: &str, what: &str, fix: &str) -> Result<PathBuf> {
    let candidate = flag
        .map(Path::to_path_buf)
        .or_else(|| std::env::var_os(env).map(PathBuf::from))
        .or_else(|| exe_dir().map(|d| d.join(beside)));
    match candidate {
        Some(path) if path.is_file() => Ok(path),
        Some(path) => bail!("{what} {} not found ({fix})", path.display()),
        None => bail!("no {what} ({fix})"),
    }
}

impl GuestFiles {
    pub fn locate(
        vmm: Option<&Path>,
        kernel: Option<&Path>,
        initrd: Option<&Path>,
    ) -> Result<Self> {
        Ok(Self {
            vmm: find(
                vmm,
                "COCOON_VMM",
                "cocoon-vmm",
                "VMM",
                "build it with `make build`, or set COCOON_VMM",
            )?,
            kernel: find(
                kernel,
                "COCOON_KERNEL",
                "../guest/bzImage",
                "guest kernel",
                "run `make guest`, or pass --kernel",
            )?,
            initrd: find(
                initrd,
                "COCOON_INITRD",
                "../guest/initramfs.cpio",
                "guest initramfs",
                "run `make guest`, or pass --initrd",
            )?,
        })
    }
}

/// Refuses early, in one line, where a microVM cannot boot.
pub fn check_kvm() -> Result<()> {
    if !cocoon_sandbox::cpu_has_virtualization()
        && std::env::var_os("COCOON_SKIP_HW_CHECK").is_none()
    {
        bail!("this CPU has no hardware virtualization (no vmx or svm flag in /proc/cpuinfo), so a microVM cannot boot here: add --emulated to run inside an emulated KVM host (qemu TCG; much slower)");
    }
    if let Err(e) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        bail!("cannot open /dev/kvm: {e} (a microVM needs KVM: load kvm-intel or kvm-amd, or add yourself to the kvm group)");
    }
    Ok(())
}
