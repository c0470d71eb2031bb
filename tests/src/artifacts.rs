//! Where the things a scenario needs live: cocoon's binaries, the guest images, and the emulated
//! host's ingredients from Debian packages.

use std::path::{Path, PathBuf};

/// The repository root (this crate lives in `<root>/tests`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The cargo profile directory the running executable was built into (`target/debug`, ...).
pub fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current executable path");
    let mut dir = exe
        .parent()
        .expect("executable has a directory")
        .to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir
}

/// A binary of this workspace, built by `make build` (or `cargo build --workspace`); the variable
/// named by [`binary_env_name`] (`COCOON_VMM` for `cocoon-vmm`)
/// overrides where it is.
pub fn workspace_binary(name: &str) -> Result<PathBuf, String> {
    let path = std::env::var_os(binary_env_name(name))
        .map(PathBuf::from)
        .unwrap_or_else(|| profile_dir().join(name));
    if path.is_file() {
        Ok(path)
    } else {
        Err(format!(
            "{} is not built (run `make build`, or `cargo build --workspace`)",
            path.display()
        ))
    }
}

/// The guest kernel (both formats) and initramfs built by `make guest`.
#[derive(Clone, Debug)]
pub struct GuestImages {
    pub bzimage: PathBuf,
    pub vmlinux: PathBuf,
    pub initrd: PathBuf,
}

impl GuestImages {
    /// What an emulated host needs to boot these images with `vmm`.
    pub fn cocoon_files<'a>(&'a self, vmm: &'a Path) -> cocoon_emuhost::CocoonFiles<'a> {
        cocoon_emuhost::CocoonFiles {
            vmm,
            bzimage: &self.bzimage,
            vmlinux: Some(&self.vmlinux),
            initrd: &self.initrd,
        }
    }
}

pub fn guest_dir() -> PathBuf {
    std::env::var_os("COCOON_GUEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target/guest"))
}

pub fn guest_images() -> Result<GuestImages, String> {
    let dir = guest_dir();
    let images = GuestImages {
        bzimage: dir.join("bzImage"),
        vmlinux: dir.join("vmlinux"),
        initrd: dir.join("initramfs.cpio"),
    };
    for p in [&images.bzimage, &images.vmlinux, &images.initrd] {
        if !p.is_file() {
            return Err(format!(
                "guest image {} is missing (run `make guest`)",
                p.display()
            ));
        }
    }
    Ok(images)
}

pub use cocoon_sandbox::has_hardware_virtualization;

/// True when /dev/kvm opens for reading and writing.
pub fn dev_kvm_usable() -> bool {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok()
}

/// `cocoon-agent-e2e` -> `COCOON_AGENT_E2E`.
pub fn binary_env_name(name: &str) -> String {
    name.to_ascii_uppercase().replace(['-', '.'], "_")
}

/// [`binary_env_name`] of a tool's file name: `/usr/lib/cni/host-local` -> `HOST_LOCAL`.
pub fn tool_env_name(path: &Path) -> String {
    binary_env_name(&path.file_name().unwrap_or_default().to_string_lossy())
}
