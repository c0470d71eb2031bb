//! The configuration of one VM, the one type `cocoon-vmm` reads (its `--config` JSON file, or
//! its flags) and the host side writes (`cocoon_sandbox::Vm` writes it into the VM's directory).
//! Only its shape lives here; what can be checked before KVM is touched (files, sizes, sockets)
//! is `cocoon-vmm`'s `config::validate`.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

pub use crate::net_config::*;

/// Kernel command line used when none is given: serial console on COM1, reboot through the i8042
/// (which the VMM reports as "VM stopped"), reboot one second after a panic.
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 reboot=k panic=1";
pub const DEFAULT_VCPUS: u8 = 1;
pub const DEFAULT_MEMORY_MIB: u32 = 128;
/// The MP table numbers CPUs with 8-bit APIC IDs and the IO-APIC takes the next one.
pub const MAX_VCPUS: u8 = 254;
/// What a console file keeps by default: the file and one earlier generation (`PATH.1`), each
/// at most this many bytes, so a guest that writes its serial port for ever costs the host at
/// most twice this (Docker's json-file `max-size` with `max-file=2`).
pub const DEFAULT_CONSOLE_MAX_BYTES: u64 = 1 << 20;
/// The smallest console file bound (a few screens of a panic).
pub const MIN_CONSOLE_MAX_BYTES: u64 = 4096;

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

/// Virtio devices have IRQs 5 to 23 on the IO-APIC: at most this many disks (one fewer for the
/// vsock device and for each network interface).
pub const MAX_DISKS: usize = crate::vmm_api::MAX_VIRTIO_DEVICES;

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
pub use crate::socket_path::{MAX_SOCKET_PATH_LEN, MAX_VSOCK_UDS_LEN};

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
fn default_console_max_bytes() -> u64 {
    DEFAULT_CONSOLE_MAX_BYTES
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
    /// A file console's bound: past it the file becomes `PATH.1` (replacing the one before) and
    /// a new file starts.
    #[serde(default = "default_console_max_bytes")]
    pub console_max_bytes: u64,
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
    /// Network interfaces (virtio-net), in the order the guest finds them.
    #[serde(default)]
    pub nets: Vec<NetConfig>,
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
            console_max_bytes: DEFAULT_CONSOLE_MAX_BYTES,
            disks: Vec::new(),
            disk_slots: 0,
            vsock: None,
            nets: Vec::new(),
            api_socket: None,
            kernel_sha256: None,
            initrd_sha256: None,
        }
    }

    /// Guest memory in bytes.
    pub fn memory_bytes(&self) -> u64 {
        u64::from(self.memory_mib) << 20
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let cfg: VmConfig = serde_json::from_str(r#"{"kernel": "/k", "vcpus": 2}"#).unwrap();
        assert_eq!(cfg.vcpus, 2);
        assert_eq!(cfg.memory_mib, DEFAULT_MEMORY_MIB);
        assert_eq!(cfg.cmdline, DEFAULT_CMDLINE);
        assert_eq!(cfg.console, ConsoleConfig::Stdout);
        let back: VmConfig = serde_json::from_str(&serde_json::to_string(&cfg).unwrap()).unwrap();
        assert_eq!(back, cfg);
    }

    #[test]
    fn unknown_json_fields_are_rejected() {
        let err = serde_json::from_str::<VmConfig>(r#"{"kernel": "k", "memory": 5}"#).unwrap_err();
        assert!(err.to_string().contains("unknown field `memory`"), "{err}");
    }

    #[test]
    fn vsock_syntax() {
        assert_eq!(
            "uds=/run/v.sock,cid=7".parse(),
            Ok(VsockConfig {
                cid: 7,
                uds: "/run/v.sock".into()
            })
        );
        for bad in ["cid=7", "uds=/x", "cid=x,uds=/x", "cid=3,uds="] {
            let err = bad.parse::<VsockConfig>().unwrap_err();
            assert!(err.contains("cid=N,uds=PATH"), "{err}");
        }
    }
}
