//! What this host must have before a sandbox can start: the VMM, the guest kernel and initramfs
//! (found by flag, environment or next to the running binary), and a KVM that can boot them.
//! Shared by the launcher and the containerd shim, so both refuse early with the same words.

use std::path::{Path, PathBuf};

/// A sandbox cannot start on this host, with the fix in the message.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("{what} {} not found ({fix})", path.display())]
    NotFound {
        what: &'static str,
        path: PathBuf,
        fix: &'static str,
    },
    #[error("no {what} ({fix})")]
    Unknown {
        what: &'static str,
        fix: &'static str,
    },
    #[error("this CPU has no hardware virtualization (no vmx or svm flag in /proc/cpuinfo), so a microVM cannot boot here: add --emulated to run inside an emulated KVM host (qemu TCG; much slower)")]
    NoHardwareVirtualization,
    #[error("cannot open /dev/kvm: {0} (a microVM needs KVM: load kvm-intel or kvm-amd, or add yourself to the kvm group)")]
    DevKvm(std::io::Error),
}

/// The files a sandbox boots from.
#[derive(Clone, Debug)]
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
fn find(
    flag: Option<&Path>,
    env: &str,
    beside: &str,
    what: &'static str,
    fix: &'static str,
) -> Result<PathBuf, HostError> {
    let candidate = flag
        .map(Path::to_path_buf)
        .or_else(|| std::env::var_os(env).map(PathBuf::from))
        .or_else(|| exe_dir().map(|d| d.join(beside)));
    match candidate {
        Some(path) if path.is_file() => Ok(path),
        Some(path) => Err(HostError::NotFound { what, path, fix }),
        None => Err(HostError::Unknown { what, fix }),
    }
}

impl GuestFiles {
    /// Each file from its flag if given, else `$COCOON_VMM`, `$COCOON_KERNEL`, `$COCOON_INITRD`,
    /// else where `make` puts it.
    pub fn locate(
        vmm: Option<&Path>,
        kernel: Option<&Path>,
        initrd: Option<&Path>,
    ) -> Result<Self, HostError> {
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

/// Refuses early, in one line, where a microVM cannot boot: no vmx/svm (unless
/// `COCOON_SKIP_HW_CHECK` is set, for a nested KVM that works without them), no usable /dev/kvm.
pub fn check_kvm() -> Result<(), HostError> {
    if !cocoon_common::has_hardware_virtualization()
        && std::env::var_os("COCOON_SKIP_HW_CHECK").is_none()
    {
        return Err(HostError::NoHardwareVirtualization);
    }
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .map(drop)
        .map_err(HostError::DevKvm)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_file_names_itself_and_the_fix() {
        let err = GuestFiles::locate(Some(Path::new("/nonexistent/cocoon-vmm")), None, None)
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "VMM /nonexistent/cocoon-vmm not found (build it with `make build`, or set COCOON_VMM)"
        );
    }
}
