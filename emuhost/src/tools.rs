//! What the emulated KVM host is made of, found on this machine: qemu, Debian's cloud kernel with
//! its KVM modules, and busybox-static (all Debian packages; `make deps` installs them).

use std::path::{Path, PathBuf};

/// What the emulated KVM host is made of, all from Debian packages (`make deps` installs them).
#[derive(Clone, Debug)]
pub struct HostTools {
    pub qemu: PathBuf,
    pub kernel: PathBuf,
    /// irqbypass.ko, kvm.ko, kvm-amd.ko, kvm-intel.ko of the same kernel.
    pub modules: Vec<PathBuf>,
    pub busybox: PathBuf,
}

impl HostTools {
    /// A module of the host kernel, by its path under `/lib/modules/VERSION/kernel`.
    pub fn module_path(&self, relative: &str) -> PathBuf {
        let version = self
            .kernel
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .trim_start_matches("vmlinuz-")
            .to_string();
        Path::new("/lib/modules")
            .join(version)
            .join("kernel")
            .join(relative)
    }
}

fn find_in_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

/// Finds Debian's cloud kernel and its KVM modules, qemu and busybox-static.
pub fn host_tools() -> Result<HostTools, String> {
    let qemu = find_in_path("qemu-system-x86_64").ok_or(
        "qemu-system-x86_64 is not installed (apt-get install qemu-system-x86, or `make deps`)",
    )?;
    let busybox = PathBuf::from("/bin/busybox");
    let static_busybox = std::fs::read(&busybox)
        .map(|b| !cocoon_guest_image::needs_interpreter(&b))
        .unwrap_or(false);
    if !static_busybox {
        return Err("/bin/busybox is missing or not static (apt-get install busybox-static, or `make deps`)".into());
    }
    let mut kernels: Vec<String> = std::fs::read_dir("/boot")
        .map_err(|e| format!("/boot: {e}"))?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with("vmlinuz-") && n.ends_with("-cloud-amd64"))
        .collect();
    kernels.sort();
    let modules_of = |version: &str| -> Option<Vec<PathBuf>> {
        let base = Path::new("/lib/modules").join(version).join("kernel");
        let mods = vec![
            base.join("virt/lib/irqbypass.ko"),
            base.join("arch/x86/kvm/kvm.ko"),
            base.join("arch/x86/kvm/kvm-amd.ko"),
            base.join("arch/x86/kvm/kvm-intel.ko"),
        ];
        mods.iter().all(|m| m.is_file()).then_some(mods)
    };
    for name in kernels.iter().rev() {
        let version = name.trim_start_matches("vmlinuz-");
        if let Some(modules) = modules_of(version) {
            return Ok(HostTools {
                qemu,
                kernel: Path::new("/boot").join(name),
                modules,
                busybox,
            });
        }
    }
    Err("no Debian cloud kernel with KVM modules in /boot (apt-get install linux-image-cloud-amd64, or `make deps`)".into())
}
