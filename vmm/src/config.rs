//! Checks a VM configuration ([`VmConfig`], shared with the host side in
//! `cocoon_protocol::vm_config`) before anything is created: files readable, sizes in range,
//! sockets creatable. Every error names the fix.

use std::path::{Path, PathBuf};

pub use cocoon_protocol::vm_config::*;

use crate::arch::x86_64::layout::{CMDLINE_MAX_SIZE, MIN_MEMORY_MIB};

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
    #[error("--console-max-bytes must be at least {MIN_CONSOLE_MAX_BYTES}, got {0}")]
    ConsoleMaxBytes(u64),
    #[error("{what} must be 64 hex digits, got '{value}'")]
    BadSha256 { what: &'static str, value: String },
    #[error("disk {path}: {reason} (pass --disk path=FILE[,ro] with a raw image file)")]
    Disk { path: PathBuf, reason: String },
    #[error("at most {0} disks (slots included) with this configuration, got {1} (every virtio device, vsock and nets included, takes one of {MAX_DISKS} interrupt lines)")]
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
    #[error("at most {MAX_DISKS} virtio devices, and {0} network interfaces and the vsock device are more")]
    TooManyNets(usize),
    #[error("net {index}: MTU {mtu} is out of range: use {MIN_MTU} to {MAX_MTU} (mtu=N)")]
    NetMtu { index: usize, mtu: u16 },
    #[error("net {index}: the rate limit {rate} is too high: at most {MAX_RATE} a second")]
    NetRate { index: usize, rate: u64 },
    #[error("nets {0} and {1} have the same MAC address {2}: give each its own (mac=...)")]
    NetMacTaken(usize, usize, MacAddress),
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

/// Largest rate (bytes or frames a second) a limit may name: a bucket's arithmetic stays far from
/// overflow.
pub const MAX_RATE: u64 = 1 << 40;

fn check_nets(nets: &[NetConfig]) -> Result<(), ConfigError> {
    for (index, net) in nets.iter().enumerate() {
        if !(MIN_MTU..=MAX_MTU).contains(&net.mtu) {
            return Err(ConfigError::NetMtu {
                index,
                mtu: net.mtu,
            });
        }
        let rates = [net.tx_rate, net.rx_rate];
        if let Some(rate) = rates
            .iter()
            .flat_map(|r| [r.bytes_per_sec, r.packets_per_sec])
            .find(|r| *r > MAX_RATE)
        {
            return Err(ConfigError::NetRate { index, rate });
        }
        if let Some(mac) = net.mac {
            if let Some(first) = nets[..index].iter().position(|n| n.mac == Some(mac)) {
                return Err(ConfigError::NetMacTaken(first, index, mac));
            }
        }
    }
    Ok(())
}

/// Total memory of this host in MiB, from /proc/meminfo.
pub fn host_memory_mib() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024)
}

/// Reads a JSON configuration file.
pub fn from_json_file(path: &Path) -> Result<VmConfig, ConfigError> {
    let file_error = |reason: String| ConfigError::File {
        path: path.to_path_buf(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| file_error(e.to_string()))?;
    serde_json::from_str(&text).map_err(|e| file_error(e.to_string()))
}

/// Checks everything that can be checked before touching KVM.
pub fn validate(config: &VmConfig) -> Result<(), ConfigError> {
    check_readable_file(&config.kernel).map_err(|reason| ConfigError::Kernel {
        path: config.kernel.clone(),
        reason,
    })?;
    if let Some(initrd) = &config.initrd {
        check_readable_file(initrd).map_err(|reason| ConfigError::Initrd {
            path: initrd.clone(),
            reason,
        })?;
    }
    if config.memory_mib < MIN_MEMORY_MIB {
        return Err(ConfigError::MemoryTooSmall(config.memory_mib));
    }
    if let Some(host) = host_memory_mib() {
        if u64::from(config.memory_mib) > host {
            return Err(ConfigError::MemoryTooLarge {
                requested: config.memory_mib,
                host,
            });
        }
    }
    if config.vcpus == 0 || config.vcpus > MAX_VCPUS {
        return Err(ConfigError::Vcpus(config.vcpus));
    }
    if config.cmdline.len() >= CMDLINE_MAX_SIZE {
        return Err(ConfigError::CmdlineTooLong(config.cmdline.len()));
    }
    if config.cmdline.contains('\0') {
        return Err(ConfigError::CmdlineNul);
    }
    if config.console_max_bytes < MIN_CONSOLE_MAX_BYTES {
        return Err(ConfigError::ConsoleMaxBytes(config.console_max_bytes));
    }
    let others = usize::from(config.vsock.is_some()) + config.nets.len();
    if others > MAX_DISKS {
        return Err(ConfigError::TooManyNets(config.nets.len()));
    }
    let max_disks = MAX_DISKS - others;
    let disks = config.disks.len() + usize::from(config.disk_slots);
    if disks > max_disks {
        return Err(ConfigError::TooManyDisks(max_disks, disks));
    }
    match &config.api_socket {
        None if config.disk_slots > 0 => return Err(ConfigError::SlotsWithoutApi),
        None => {}
        Some(path) => check_new_socket(path, MAX_SOCKET_PATH_LEN).map_err(|reason| {
            ConfigError::ApiSocket {
                path: path.clone(),
                reason,
            }
        })?,
    }
    if let Some(vsock) = &config.vsock {
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
    check_nets(&config.nets)?;
    for disk in &config.disks {
        check_readable_file(&disk.path).map_err(|reason| ConfigError::Disk {
            path: disk.path.clone(),
            reason,
        })?;
    }
    check_sha256("kernel_sha256", &config.kernel_sha256)?;
    check_sha256("initrd_sha256", &config.initrd_sha256)?;
    Ok(())
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
    fn a_parsed_config_naming_a_real_kernel_validates() {
        let k = kernel_file();
        let json = format!(r#"{{"kernel": "{}", "vcpus": 2}}"#, k.path().display());
        let cfg: VmConfig = serde_json::from_str(&json).unwrap();
        validate(&cfg).unwrap();
        assert_eq!(cfg.console_max_bytes, DEFAULT_CONSOLE_MAX_BYTES);
    }

    #[test]
    fn config_file_errors_name_the_file() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(b"{ not json").unwrap();
        let err = from_json_file(f.path()).unwrap_err();
        assert!(matches!(err, ConfigError::File { .. }));
        assert!(err.to_string().contains(&f.path().display().to_string()));
    }

    #[test]
    fn bad_inputs_have_clear_errors() {
        let k = kernel_file();
        let mut cfg = VmConfig::new("/nonexistent/bzImage");
        let err = validate(&cfg).unwrap_err();
        assert!(matches!(err, ConfigError::Kernel { .. }));
        assert!(err.to_string().contains("--kernel"));

        cfg.kernel = k.path().into();
        cfg.memory_mib = 0;
        assert_eq!(validate(&cfg), Err(ConfigError::MemoryTooSmall(0)));

        cfg.memory_mib = u32::MAX;
        assert!(matches!(
            validate(&cfg),
            Err(ConfigError::MemoryTooLarge { .. })
        ));

        cfg.memory_mib = 128;
        cfg.vcpus = 0;
        assert_eq!(validate(&cfg), Err(ConfigError::Vcpus(0)));
        cfg.vcpus = 255;
        assert_eq!(validate(&cfg), Err(ConfigError::Vcpus(255)));

        cfg.vcpus = 1;
        cfg.initrd = Some("/nonexistent/initrd".into());
        assert!(matches!(validate(&cfg), Err(ConfigError::Initrd { .. })));

        cfg.initrd = None;
        cfg.cmdline = "x".repeat(CMDLINE_MAX_SIZE);
        assert!(matches!(
            validate(&cfg),
            Err(ConfigError::CmdlineTooLong(_))
        ));

        cfg.cmdline = DEFAULT_CMDLINE.into();
        cfg.console_max_bytes = MIN_CONSOLE_MAX_BYTES - 1;
        let err = validate(&cfg).unwrap_err();
        assert_eq!(err, ConfigError::ConsoleMaxBytes(MIN_CONSOLE_MAX_BYTES - 1));
        assert!(err.to_string().contains("--console-max-bytes"));

        cfg.console_max_bytes = DEFAULT_CONSOLE_MAX_BYTES;
        cfg.disks = vec!["path=/nonexistent/disk.img".parse().unwrap()];
        assert!(matches!(validate(&cfg), Err(ConfigError::Disk { .. })));
        cfg.disks = vec![];
        cfg.kernel_sha256 = Some("abc".into());
        assert!(matches!(validate(&cfg), Err(ConfigError::BadSha256 { .. })));
    }

    #[test]
    fn disk_slots_need_the_api_socket_and_count_as_disks() {
        let k = kernel_file();
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = VmConfig::new(k.path());
        cfg.disk_slots = 2;
        let err = validate(&cfg).unwrap_err();
        assert_eq!(err, ConfigError::SlotsWithoutApi);
        assert!(err.to_string().contains("--api-socket"));
        cfg.api_socket = Some(dir.path().join("api.sock"));
        assert_eq!(validate(&cfg), Ok(()));
        cfg.disk_slots = MAX_DISKS as u8 + 1;
        assert_eq!(
            validate(&cfg),
            Err(ConfigError::TooManyDisks(MAX_DISKS, MAX_DISKS + 1))
        );
        cfg.disk_slots = 1;
        cfg.api_socket = Some(dir.path().to_path_buf());
        let exists = validate(&cfg).unwrap_err().to_string();
        assert!(exists.contains("already exists"), "{exists}");
        let parsed: VmConfig = serde_json::from_str(
            r#"{"kernel":"/k","disk_slots":3,"api_socket":"/run/x/api.sock"}"#,
        )
        .unwrap();
        assert_eq!(parsed.disk_slots, 3);
    }

    #[test]
    fn nets_are_checked_and_count_as_virtio_devices() {
        let k = kernel_file();
        let mut cfg = VmConfig::new(k.path());
        cfg.nets = vec!["stream-fd=5,mtu=9000".parse().unwrap()];
        assert_eq!(validate(&cfg), Ok(()));
        cfg.nets[0].mtu = 20;
        let err = validate(&cfg).unwrap_err();
        assert_eq!(err, ConfigError::NetMtu { index: 0, mtu: 20 });
        assert!(err.to_string().contains("mtu=N"), "{err}");
        cfg.nets = vec![
            "tap=a,mac=02:00:00:00:00:01".parse().unwrap(),
            "tap=b,mac=02:00:00:00:00:01".parse().unwrap(),
        ];
        assert!(matches!(
            validate(&cfg),
            Err(ConfigError::NetMacTaken(0, 1, _))
        ));
        cfg.nets = vec!["tap=a,tx-bps=99999999999999999".parse().unwrap()];
        assert!(matches!(validate(&cfg), Err(ConfigError::NetRate { .. })));
        cfg.nets = vec!["tap=a".parse().unwrap(); MAX_DISKS];
        cfg.vsock = Some("cid=3,uds=/nonexistent/v.sock".parse().unwrap());
        assert_eq!(validate(&cfg), Err(ConfigError::TooManyNets(MAX_DISKS)));
        cfg.vsock = None;
        cfg.nets.truncate(MAX_DISKS - 1);
        cfg.disk_slots = 2;
        let dir = tempfile::tempdir().unwrap();
        cfg.api_socket = Some(dir.path().join("api.sock"));
        assert!(matches!(
            validate(&cfg),
            Err(ConfigError::TooManyDisks(1, 2))
        ));
    }
}
