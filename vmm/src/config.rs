//! VM configuration: from command-line flags or a JSON file, validated before anything is created.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::arch::x86_64::layout::{CMDLINE_MAX_SIZE, MIN_MEMORY_MIB};

/// Kernel command line used when none is given: serial console on COM1, reboot through the i8042
/// (which the VMM reports as "VM stopped"), reboot one second after a panic.
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 reboot=k panic=1";
pub const DEFAULT_VCPUS: u8 = 1;
pub const DEFAULT_MEMORY_MIB: u32 = 128;
/// The MP table numbers CPUs with 8-bit APIC IDs and the IO-APIC takes the next one.
pub const MAX_VCPUS: u8 = 254;

/// Where the guest's serial console goes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum ConsoleConfig {
    /// The VMM's standard output (and standard input, when it is a terminal or a pipe).
    #[default]
    Stdout,
    /// Appended to a file.
    File(PathBuf),
    /// Streamed to a Unix stream socket someone else listens on.
    Unix(PathBuf),
    /// Discarded.
    Off,
}

impl FromStr for ConsoleConfig {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "stdout" => Ok(Self::Stdout),
            "off" => Ok(Self::Off),
            _ => match s.split_once(':') {
                Some(("file", path)) if !path.is_empty() => Ok(Self::File(path.into())),
                Some(("unix", path)) if !path.is_empty() => Ok(Self::Unix(path.into())),
                _ => Err(format!(
                    "invalid console '{s}': use stdout, off, file:PATH or unix:PATH"
                )),
            },
        }
    }
}

impl TryFrom<String> for ConsoleConfig {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl fmt::Display for ConsoleConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Stdout => write!(f, "stdout"),
            Self::Off => write!(f, "off"),
            Self::File(p) => write!(f, "file:{}", p.display()),
            Self::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

impl From<ConsoleConfig> for String {
    fn from(c: ConsoleConfig) -> String {
        c.to_string()
    }
}

/// A disk: a raw image file given to the guest as a virtio-blk device (`/dev/vda`, `/dev/vdb`, ...).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskConfig {
    pub path: PathBuf,
    #[serde(default)]
    pub read_only: bool,
}

impl FromStr for DiskConfig {
    type Err = String;

    /// `path=FILE[,ro|,rw]`
    fn from_str(s: &str) -> Result<Self, String> {
        let usage = || format!("invalid disk '{s}': use path=FILE[,ro]");
        let mut parts = s.split(',');
        let path = parts
            .next()
            .and_then(|p| p.strip_prefix("path="))
            .filter(|p| !p.is_empty())
            .ok_or_else(usage)?;
        let mut read_only = false;
        for option in parts {
            match option {
                "ro" => read_only = true,
                "rw" => read_only = false,
                _ => return Err(usage()),
            }
        }
        Ok(Self {
            path: path.into(),
            read_only,
        })
    }
}

/// Virtio devices have IRQs 5 to 23 on the IO-APIC: at most this many disks (one fewer with a
/// vsock device).
pub const MAX_DISKS: usize = cocoon_protocol::vmm_api::MAX_VIRTIO_DEVICES;

/// The guest's vsock device and the Unix socket its host side listens on (Firecracker's hybrid
/// vsock: connect, write `CONNECT <port>\n`; the guest reaching host port P connects to `<uds>_P`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VsockConfig {
    /// The guest's context ID (3 or more; 0-2 are reserved).
    pub cid: u32,
    pub uds: PathBuf,
}

/// Unix socket paths hold 107 bytes; `<uds>_<port>` must fit too.
pub use cocoon_protocol::socket_path::{MAX_SOCKET_PATH_LEN, MAX_VSOCK_UDS_LEN};

impl FromStr for VsockConfig {
    type Err = String;

    /// `cid=N,uds=PATH` (either order)
    fn from_str(s: &str) -> Result<Self, String> {
        let usage = || format!("invalid vsock '{s}': use cid=N,uds=PATH (N at least 3)");
        let (mut cid, mut uds) = (None, None);
        for part in s.split(',') {
            match part.split_once('=') {
                Some(("cid", n)) => cid = Some(n.parse::<u32>().map_err(|_| usage())?),
                Some(("uds", p)) if !p.is_empty() => uds = Some(PathBuf::from(p)),
                _ => return Err(usage()),
            }
        }
        match (cid, uds) {
            (Some(cid), Some(uds)) => Ok(Self { cid, uds }),
            _ => Err(usage()),
        }
    }
}

fn default_cmdline() -> String {
    DEFAULT_CMDLINE.to_string()
}
fn default_vcpus() -> u8 {
    DEFAULT_VCPUS
}
fn default_memory_mib() -> u32 {
    DEFAULT_MEMORY_MIB
}

/// Everything needed to build and boot one VM. JSON field names match the long flags with `_`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmConfig {
    /// Guest kernel: a bzImage or an ELF vmlinux.
    pub kernel: PathBuf,
    /// Optional initramfs (newc cpio, optionally compressed if the kernel supports it).
    #[serde(default)]
    pub initrd: Option<PathBuf>,
    #[serde(default = "default_cmdline")]
    pub cmdline: String,
    #[serde(default = "default_vcpus")]
    pub vcpus: u8,
    #[serde(default = "default_memory_mib")]
    pub memory_mib: u32,
    #[serde(default)]
    pub console: ConsoleConfig,
    /// Disks, in the order the guest sees them (vda, vdb, ...).
    #[serde(default)]
    pub disks: Vec<DiskConfig>,
    /// Empty writable disks after `disks`, whose images are attached and detached while the VM
    /// runs, through the API socket (a pod's containers join its VM this way).
    #[serde(default)]
    pub disk_slots: u8,
    /// A virtio-vsock device, if any.
    #[serde(default)]
    pub vsock: Option<VsockConfig>,
    /// The VMM's API socket: one JSON request per line, one JSON answer per line.
    #[serde(default)]
    pub api_socket: Option<PathBuf>,
    /// If set, the kernel image must have this sha256 (hex) or the VMM refuses to boot it.
    #[serde(default)]
    pub kernel_sha256: Option<String>,
    /// If set, the initramfs must have this sha256 (hex).
    #[serde(default)]
    pub initrd_sha256: Option<String>,
}

/// A configuration that cannot work, with the fix in its message.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("kernel image {path}: {reason} (pass --kernel with a bzImage or ELF vmlinux; `make guest` builds one)")]
    Kernel { path: PathBuf, reason: String },
    #[error("initrd {path}: {reason} (pass --initrd with a readable initramfs, or leave it out)")]
    Initrd { path: PathBuf, reason: String },
    #[error("memory must be at least {MIN_MEMORY_MIB} MiB, got {0} MiB (set --memory-mib)")]
    MemoryTooSmall(u32),
    #[error("--memory-mib {requested} is more than this host's {host} MiB of memory")]
    MemoryTooLarge { requested: u32, host: u64 },
    #[error("--vcpus must be between 1 and {MAX_VCPUS}, got {0}")]
    Vcpus(u8),
    #[error("the kernel command line is {0} bytes; the limit is {max} (shorten --cmdline)", max = CMDLINE_MAX_SIZE - 1)]
    CmdlineTooLong(usize),
    #[error("the kernel command line contains a NUL byte")]
    CmdlineNul,
    #[error("{what} must be 64 hex digits, got '{value}'")]
    BadSha256 { what: &'static str, value: String },
    #[error("disk {path}: {reason} (pass --disk path=FILE[,ro] with a raw image file)")]
    Disk { path: PathBuf, reason: String },
    #[error("at most {0} disks (slots included) with this configuration, got {1}")]
    TooManyDisks(usize, usize),
    #[error(
        "disk slots are filled through the API socket: pass --api-socket PATH with --disk-slots"
    )]
    SlotsWithoutApi,
    #[error(
        "API socket {path}: {reason} (pass --api-socket with a new path in an existing directory)"
    )]
    ApiSocket { path: PathBuf, reason: String },
    #[error("vsock cid {0} is reserved: use 3 or more (each VM on a host needs its own)")]
    VsockCid(u32),
    #[error("vsock socket {path}: {reason} (pass --vsock cid=N,uds=PATH with a new path in an existing directory)")]
    VsockUds { path: PathBuf, reason: String },
    #[error("config file {path}: {reason}")]
    File { path: PathBuf, reason: String },
}

fn check_readable_file(path: &Path) -> Result<(), String> {
    let meta = std::fs::metadata(path).map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Err("not a regular file".into());
    }
    std::fs::File::open(path)
        .map(drop)
        .map_err(|e| e.to_string())
}

/// A Unix socket the VMM will create: short enough, not there yet, in an existing directory.
fn check_new_socket(path: &Path, max_len: usize) -> Result<(), String> {
    if path.as_os_str().len() > max_len {
        return Err(format!(
            "longer than {max_len} bytes (Unix socket paths are short)"
        ));
    }
    if path.symlink_metadata().is_ok() {
        return Err(
            "already exists (another VM uses it, or a stale socket from a VMM that was killed: remove it)"
                .into(),
        );
    }
    let parent = path.parent().filter(|p| !p.as_os_str().is_empty());
    if parent.is_some_and(|p| !p.is_dir()) {
        return Err("its directory does not exist".into());
    }
    Ok(())
}

fn check_sha256(what: &'static str, value: &Option<String>) -> Result<(), ConfigError> {
    match value {
        Some(v) if v.len() != 64 || !v.bytes().all(|b| b.is_ascii_hexdigit()) => {
            Err(ConfigError::BadSha256 {
                what,
                value: v.clone(),
            })
        }
        _ => Ok(()),
    }
}

/// Total memory of this host in MiB, from /proc/meminfo.
pub fn host_memory_mib() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024)
}

impl VmConfig {
    /// A configuration with defaults for everything but the kernel.
    pub fn new(kernel: impl Into<PathBuf>) -> Self {
        Self {
            kernel: kernel.into(),
            initrd: None,
            cmdline: default_cmdline(),
            vcpus: DEFAULT_VCPUS,
            memory_mib: DEFAULT_MEMORY_MIB,
            console: ConsoleConfig::default(),
            disks: Vec::new(),
            disk_slots: 0,
            vsock: None,
            api_socket: None,
            kernel_sha256: None,
            initrd_sha256: None,
        }
    }

    /// Reads a JSON configuration file.
    pub fn from_json_file(path: &Path) -> Result<Self, ConfigError> {
        let file_error = |reason: String| ConfigError::File {
            path: path.to_path_buf(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| file_error(e.to_string()))?;
        serde_json::from_str(&text).map_err(|e| file_error(e.to_string()))
    }

    /// Checks everything that can be checked before touching KVM.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_readable_file(&self.kernel).map_err(|reason| ConfigError::Kernel {
            path: self.kernel.clone(),
            reason,
        })?;
        if let Some(initrd) = &self.initrd {
            check_readable_file(initrd).map_err(|reason| ConfigError::Initrd {
                path: initrd.clone(),
                reason,
            })?;
        }
        if self.memory_mib < MIN_MEMORY_MIB {
            return Err(ConfigError::MemoryTooSmall(self.memory_mib));
        }
        if let Some(host) = host_memory_mib() {
            if u64::from(self.memory_mib) > host {
                return Err(ConfigError::MemoryTooLarge {
                    requested: self.memory_mib,
                    host,
                });
            }
        }
        if self.vcpus == 0 || self.vcpus > MAX_VCPUS {
            return Err(ConfigError::Vcpus(self.vcpus));
        }
        if self.cmdline.len() >= CMDLINE_MAX_SIZE {
            return Err(ConfigError::CmdlineTooLong(self.cmdline.len()));
        }
        if self.cmdline.contains('\0') {
            return Err(ConfigError::CmdlineNul);
        }
        let max_disks = MAX_DISKS - usize::from(self.vsock.is_some());
        let disks = self.disks.len() + usize::from(self.disk_slots);
        if disks > max_disks {
            return Err(ConfigError::TooManyDisks(max_disks, disks));
        }
        match &self.api_socket {
            None if self.disk_slots > 0 => return Err(ConfigError::SlotsWithoutApi),
            None => {}
            Some(path) => check_new_socket(path, MAX_SOCKET_PATH_LEN).map_err(|reason| {
                ConfigError::ApiSocket {
                    path: path.clone(),
                    reason,
                }
            })?,
        }
        if let Some(vsock) = &self.vsock {
            if vsock.cid < 3 || vsock.cid == u32::MAX {
                return Err(ConfigError::VsockCid(vsock.cid));
            }
            check_new_socket(&vsock.uds, MAX_VSOCK_UDS_LEN).map_err(|reason| {
                ConfigError::VsockUds {
                    path: vsock.uds.clone(),
                    reason,
                }
            })?;
        }
        for disk in &self.disks {
            check_readable_file(&disk.path).map_err(|reason| ConfigError::Disk {
                path: disk.path.clone(),
                reason,
            })?;
        }
        check_sha256("kernel_sha256", &self.kernel_sha256)?;
        check_sha256("initrd_sha256", &self.initrd_sha256)?;
        Ok(())
    }

    pub fn memory_bytes(&self) -> u64 {
        u64::from(self.memory_mib) << 20
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn kernel_file() -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(b"not really a kernel").unwrap();
        f
    }

    #[test]
    fn console_syntax() {
        assert_eq!("stdout".parse(), Ok(ConsoleConfig::Stdout));
        assert_eq!("off".parse(), Ok(ConsoleConfig::Off));
        assert_eq!(
            "file:/tmp/x".parse(),
            Ok(ConsoleConfig::File("/tmp/x".into()))
        );
        assert_eq!(
            "unix:/run/c.sock".parse(),
            Ok(ConsoleConfig::Unix("/run/c.sock".into()))
        );
        let err = "tcp:1".parse::<ConsoleConfig>().unwrap_err();
        assert!(err.contains("stdout, off, file:PATH or unix:PATH"), "{err}");
        assert!("file:".parse::<ConsoleConfig>().is_err());
    }

    #[test]
    fn disk_syntax() {
        assert_eq!(
            "path=/img,ro".parse(),
            Ok(DiskConfig {
                path: "/img".into(),
                read_only: true
            })
        );
        assert_eq!(
            "path=/img".parse(),
            Ok(DiskConfig {
                path: "/img".into(),
                read_only: false
            })
        );
        for bad in ["/img", "path=", "path=/img,fast", "file=/img"] {
            let err = bad.parse::<DiskConfig>().unwrap_err();
            assert!(err.contains("path=FILE[,ro]"), "{err}");
        }
    }

    #[test]
    fn json_round_trip_and_defaults() {
        let k = kernel_file();
        let json = format!(r#"{{"kernel": "{}", "vcpus": 2}}"#, k.path().display());
        let cfg: VmConfig = serde_json::from_str(&json).unwrap();
        assert_eq!(cfg.vcpus, 2);
        assert_eq!(cfg.memory_mib, DEFAULT_MEMORY_MIB);
        assert_eq!(cfg.cmdline, DEFAULT_CMDLINE);
        assert_eq!(cfg.console, ConsoleConfig::Stdout);
        let back: VmConfig = serde_json::from_str(&serde_json::to_string(&cfg).unwrap()).unwrap();
        assert_eq!(back, cfg);
        cfg.validate().unwrap();
    }

    #[test]
    fn unknown_json_fields_are_rejected() {
        let err = serde_json::from_str::<VmConfig>(r#"{"kernel": "k", "memory": 5}"#).unwrap_err();
        assert!(err.to_string().contains("unknown field `memory`"), "{err}");
    }

    #[test]
    fn config_file_errors_name_the_file() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(b"{ not json").unwrap();
        let err = VmConfig::from_json_file(f.path()).unwrap_err();
        assert!(matches!(err, ConfigError::File { .. }));
        assert!(err.to_string().contains(&f.path().display().to_string()));
    }

    #[test]
    fn bad_inputs_have_clear_errors() {
        let k = kernel_file();
        let mut cfg = VmConfig::new("/nonexistent/bzImage");
        let err = cfg.validate().unwrap_err();
        assert!(matches!(err, ConfigError::Kernel { .. }));
        assert!(err.to_string().contains("--kernel"));

        cfg.kernel = k.path().into();
        cfg.memory_mib = 0;
        assert_eq!(cfg.validate(), Err(ConfigError::MemoryTooSmall(0)));

        cfg.memory_mib = u32::MAX;
        assert!(matches!(
            cfg.validate(),
            Err(ConfigError::MemoryTooLarge { .. })
        ));

        cfg.memory_mib = 128;
        cfg.vcpus = 0;
        assert_eq!(cfg.validate(), Err(ConfigError::Vcpus(0)));
        cfg.vcpus = 255;
        assert_eq!(cfg.validate(), Err(ConfigError::Vcpus(255)));

        cfg.vcpus = 1;
        cfg.initrd = Some("/nonexistent/initrd".into());
        assert!(matches!(cfg.validate(), Err(ConfigError::Initrd { .. })));

        cfg.initrd = None;
        cfg.cmdline = "x".repeat(CMDLINE_MAX_SIZE);
        assert!(matches!(
            cfg.validate(),
            Err(ConfigError::CmdlineTooLong(_))
        ));

        cfg.cmdline = DEFAULT_CMDLINE.into();
        cfg.disks = vec!["path=/nonexistent/disk.img".parse().unwrap()];
        assert!(matches!(cfg.validate(), Err(ConfigError::Disk { .. })));
        cfg.disks = vec![];
        cfg.kernel_sha256 = Some("abc".into());
        assert!(matches!(cfg.validate(), Err(ConfigError::BadSha256 { .. })));
    }

    #[test]
    fn disk_slots_need_the_api_socket_and_count_as_disks() {
        let k = kernel_file();
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = VmConfig::new(k.path());
        cfg.disk_slots = 2;
        let err = cfg.validate().unwrap_err();
        assert_eq!(err, ConfigError::SlotsWithoutApi);
        assert!(err.to_string().contains("--api-socket"));
        cfg.api_socket = Some(dir.path().join("api.sock"));
        assert_eq!(cfg.validate(), Ok(()));
        cfg.disk_slots = MAX_DISKS as u8 + 1;
        assert_eq!(
            cfg.validate(),
            Err(ConfigError::TooManyDisks(MAX_DISKS, MAX_DISKS + 1))
        );
        cfg.disk_slots = 1;
        cfg.api_socket = Some(dir.path().to_path_buf());
        let exists = cfg.validate().unwrap_err().to_string();
        assert!(exists.contains("already exists"), "{exists}");
        let parsed: VmConfig = serde_json::from_str(
            r#"{"kernel":"/k","disk_slots":3,"api_socket":"/run/x/api.sock"}"#,
        )
        .unwrap();
        assert_eq!(parsed.disk_slots, 3);
    }
}
