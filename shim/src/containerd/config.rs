//! The shim's configuration: a TOML file (default `/etc/cocoon/config.toml`, or `$COCOON_CONFIG`)
//! naming the VMM, guest kernel and initramfs, the VM size, its bounds, and the log level. Pods
//! may ask for other sizes with annotations, within the bounds.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Deserialize;

pub const DEFAULT_PATH: &str = "/etc/cocoon/config.toml";
pub const DEFAULT_LAYER_CACHE: &str = "/var/lib/cocoon/layers";
pub const VCPUS_ANNOTATION: &str = "io.cocoon.vcpus";
pub const MEMORY_ANNOTATION: &str = "io.cocoon.memory-mib";

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// `cocoon-vmm`; default: next to the shim.
    pub vmm: Option<PathBuf>,
    /// Guest kernel; default: `../guest/bzImage` from the shim (where `make guest` puts it).
    pub kernel: Option<PathBuf>,
    /// Guest initramfs holding the agent; default: `../guest/initramfs.cpio` from the shim.
    pub initrd: Option<PathBuf>,
    pub vcpus: u8,
    pub memory_mib: u32,
    /// The most a pod's annotations may ask for.
    pub max_vcpus: u8,
    pub max_memory_mib: u32,
    /// Empty disks a pod's VM boots with, one per container that may join it (virtio-mmio has no
    /// hot-plug): the most containers a pod can hold besides its sandbox container.
    pub pod_disk_slots: u8,
    /// Where images' read-only layer disks are kept, made once per image and shared by its
    /// containers; disks whose layers containerd removed are pruned.
    pub layer_cache: PathBuf,
    /// error, warn, info, debug or trace.
    pub log_level: String,
}

/// Disks a VM can have besides its vsock device.
pub const VM_DISKS: u8 = cocoon_protocol::vmm_api::MAX_VIRTIO_DEVICES as u8 - 1;
/// Slots left beside the sandbox's own root disk (one, or two on an image's layers: then fewer).
pub const MAX_POD_DISK_SLOTS: u8 = VM_DISKS - 1;

impl Default for Config {
    fn default() -> Self {
        Self {
            vmm: None,
            kernel: None,
            initrd: None,
            vcpus: 1,
            memory_mib: 256,
            max_vcpus: 8,
            max_memory_mib: 8192,
            pod_disk_slots: 8,
            layer_cache: DEFAULT_LAYER_CACHE.into(),
            log_level: "info".into(),
        }
    }
}

/// What one sandbox's VM gets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmSize {
    pub vcpus: u8,
    pub memory_mib: u32,
}

impl Config {
    /// `$COCOON_CONFIG`, else the default path; defaults when the default file does not exist.
    pub fn load() -> Result<Self> {
        match std::env::var_os("COCOON_CONFIG") {
            Some(path) => Self::from_file(Path::new(&path)),
            None if Path::new(DEFAULT_PATH).exists() => Self::from_file(Path::new(DEFAULT_PATH)),
            None => Ok(Self::default()),
        }
    }

    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the cocoon config {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("in {}", path.display()))
    }

    pub fn parse(text: &str) -> Result<Self> {
        let config: Self = toml::from_str(text).context("not a valid cocoon config")?;
        if config.vcpus == 0 || config.vcpus > config.max_vcpus {
            bail!(
                "vcpus = {} must be between 1 and max_vcpus = {}",
                config.vcpus,
                config.max_vcpus
            );
        }
        if config.memory_mib < 64 || config.memory_mib > config.max_memory_mib {
            bail!(
                "memory_mib = {} must be between 64 and max_memory_mib = {}",
                config.memory_mib,
                config.max_memory_mib
            );
        }
        if config.pod_disk_slots > MAX_POD_DISK_SLOTS {
            bail!(
                "pod_disk_slots = {} is more than a VM has room for ({MAX_POD_DISK_SLOTS})",
                config.pod_disk_slots
            );
        }
        if !["error", "warn", "info", "debug", "trace"].contains(&config.log_level.as_str()) {
            bail!(
                "log_level = '{}': use error, warn, info, debug or trace",
                config.log_level
            );
        }
        Ok(config)
    }

    /// The VM size for a pod: the configured one, or what its annotations ask within bounds.
    pub fn size_for(&self, annotations: &HashMap<String, String>) -> Result<VmSize> {
        let mut size = VmSize {
            vcpus: self.vcpus,
            memory_mib: self.memory_mib,
        };
        if let Some(value) = annotations.get(VCPUS_ANNOTATION) {
            let vcpus: u8 = value.parse().with_context(|| {
                format!("annotation {VCPUS_ANNOTATION}='{value}' is not a number")
            })?;
            if vcpus == 0 || vcpus > self.max_vcpus {
                bail!("annotation {VCPUS_ANNOTATION}={vcpus} is outside 1..={} (max_vcpus in the cocoon config)", self.max_vcpus);
            }
            size.vcpus = vcpus;
        }
        if let Some(value) = annotations.get(MEMORY_ANNOTATION) {
            let mib: u32 = value.parse().with_context(|| {
                format!("annotation {MEMORY_ANNOTATION}='{value}' is not a number")
            })?;
            if mib < 64 || mib > self.max_memory_mib {
                bail!("annotation {MEMORY_ANNOTATION}={mib} is outside 64..={} (max_memory_mib in the cocoon config)", self.max_memory_mib);
            }
            size.memory_mib = mib;
        }
        Ok(size)
    }
}

/// The VMM, kernel and initramfs: from the config, else where `make` puts them next to the shim.
pub fn guest_files(config: &Config) -> Result<(PathBuf, PathBuf, PathBuf)> {
    let files = cocoon_sandbox::GuestFiles::locate(
        config.vmm.as_deref(),
        config.kernel.as_deref(),
        config.initrd.as_deref(),
    )?;
    Ok((files.vmm, files.kernel, files.initrd))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_config_parses_and_bounds_are_checked() {
        let config = Config::parse(
            r#"
vmm = "/usr/bin/cocoon-vmm"
kernel = "/usr/share/cocoon/bzImage"
initrd = "/usr/share/cocoon/initramfs.cpio"
vcpus = 2
memory_mib = 512
max_vcpus = 4
max_memory_mib = 2048
pod_disk_slots = 4
log_level = "debug"
"#,
        )
        .unwrap();
        assert_eq!((config.vcpus, config.pod_disk_slots), (2, 4));
        assert_eq!(
            config.kernel.as_deref(),
            Some(Path::new("/usr/share/cocoon/bzImage"))
        );
        assert_eq!(Config::parse("").unwrap(), Config::default());
        for bad in [
            "vcpus = 0",
            "vcpus = 9",
            "memory_mib = 10",
            "log_level = \"loud\"",
            "unknown = 1",
            "vcpus = \"two\"",
            "pod_disk_slots = 18",
        ] {
            assert!(Config::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn annotations_resize_within_bounds() {
        let config = Config::default();
        let ask = |pairs: &[(&str, &str)]| {
            config.size_for(
                &pairs
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            )
        };
        assert_eq!(
            ask(&[]).unwrap(),
            VmSize {
                vcpus: 1,
                memory_mib: 256
            }
        );
        assert_eq!(
            ask(&[(VCPUS_ANNOTATION, "2"), (MEMORY_ANNOTATION, "1024")]).unwrap(),
            VmSize {
                vcpus: 2,
                memory_mib: 1024
            }
        );
        for bad in [
            &[(VCPUS_ANNOTATION, "0")][..],
            &[(VCPUS_ANNOTATION, "99")],
            &[(MEMORY_ANNOTATION, "9999999")],
            &[(MEMORY_ANNOTATION, "lots")],
        ] {
            assert!(ask(bad).is_err(), "{bad:?}");
        }
    }
}
