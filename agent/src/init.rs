//! What PID 1 of a cocoon guest sets up before anything else: the kernel filesystems (proc, sysfs,
//! devtmpfs, devpts, cgroup2, tmpfs on /run, /tmp and /dev/shm), the loopback interface, and the
//! reaping of orphaned processes.

use std::fs;
use std::os::fd::{AsRawFd, RawFd};

use nix::mount::{mount, MsFlags};
use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType};
use nix::sys::wait::{waitpid, WaitPidFlag};
use nix::unistd::Pid;

struct KernelMount {
    source: &'static str,
    target: &'static str,
    fstype: &'static str,
    flags: MsFlags,
    data: Option<&'static str>,
}

const fn km(
    source: &'static str,
    target: &'static str,
    fstype: &'static str,
    flags: MsFlags,
    data: Option<&'static str>,
) -> KernelMount {
    KernelMount {
        source,
        target,
        fstype,
        flags,
        data,
    }
}

const NOSUID_NODEV_NOEXEC: MsFlags = MsFlags::MS_NOSUID
    .union(MsFlags::MS_NODEV)
    .union(MsFlags::MS_NOEXEC);

/// In order: later targets live inside earlier ones.
const KERNEL_MOUNTS: [KernelMount; 8] = [
    km("proc", "/proc", "proc", NOSUID_NODEV_NOEXEC, None),
    km("sysfs", "/sys", "sysfs", NOSUID_NODEV_NOEXEC, None),
    km(
        "devtmpfs",
        "/dev",
        "devtmpfs",
        MsFlags::MS_NOSUID,
        Some("mode=0755"),
    ),
    km(
        "devpts",
        "/dev/pts",
        "devpts",
        MsFlags::MS_NOSUID.union(MsFlags::MS_NOEXEC),
        Some("newinstance,ptmxmode=0666,mode=0620"),
    ),
    km(
        "shm",
        "/dev/shm",
        "tmpfs",
        NOSUID_NODEV_NOEXEC,
        Some("mode=1777"),
    ),
    km(
        "cgroup2",
        "/sys/fs/cgroup",
        "cgroup2",
        NOSUID_NODEV_NOEXEC,
        None,
    ),
    km(
        "tmpfs",
        "/run",
        "tmpfs",
        MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV),
        Some("mode=0755"),
    ),
    km(
        "tmpfs",
        "/tmp",
        "tmpfs",
        MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV),
        Some("mode=1777"),
    ),
];

fn mount_all() -> Result<(), String> {
    for m in &KERNEL_MOUNTS {
        let _ = fs::create_dir_all(m.target);
        match mount(Some(m.source), m.target, Some(m.fstype), m.flags, m.data) {
            Ok(()) => {}
            // Already there (a second call, or the kernel mounted devtmpfs itself).
            Err(nix::errno::Errno::EBUSY) => {}
            Err(e) => return Err(format!("mounting {} on {}: {e}", m.fstype, m.target)),
        }
    }
    Ok(())
}

/// `ifreq` for SIOCGIFFLAGS/SIOCSIFFLAGS: the interface name and its flags (the rest of the union
/// is padding for this use).
#[repr(C)]
struct IfReqFlags {
    name: [libc::c_char; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

fn lo_request() -> IfReqFlags {
    let mut req = IfReqFlags {
        name: [0; libc::IFNAMSIZ],
        flags: 0,
        _pad: [0; 22],
    };
    for (d, s) in req.name.iter_mut().zip(b"lo") {
        *d = *s as libc::c_char;
    }
    req
}

/// Runs `f` on a new IPv4 datagram socket (what the interface ioctls go through), closed after.
fn with_inet_socket<T>(f: impl FnOnce(RawFd) -> T) -> Option<T> {
    let fd = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .ok()?;
    Some(f(fd.as_raw_fd()))
}

fn loopback_flags() -> Option<libc::c_short> {
    with_inet_socket(|fd| {
        let mut req = lo_request();
        // SAFETY: SIOCGIFFLAGS on the open socket `fd` fills the flags of the ifreq we own, which
        // is large enough.
        let ret = unsafe { libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut req) };
        (ret == 0).then_some(req.flags)
    })
    .flatten()
}

fn bring_up_loopback() -> Result<(), String> {
    let flags = loopback_flags().ok_or("reading the flags of lo")?;
    let ok = with_inet_socket(|fd| {
        let mut req = lo_request();
        req.flags = flags | libc::IFF_UP as libc::c_short;
        // SAFETY: SIOCSIFFLAGS on the open socket `fd` reads the ifreq we own.
        unsafe { libc::ioctl(fd, libc::SIOCSIFFLAGS, &req) == 0 }
    });
    if ok == Some(true) {
        Ok(())
    } else {
        Err("bringing up lo".into())
    }
}

pub fn loopback_is_up() -> bool {
    loopback_flags().is_some_and(|f| f & libc::IFF_UP as libc::c_short != 0)
}

/// Controllers the root cgroup offers (cpu, memory, pids, io, ...).
pub fn cgroup_controllers() -> Vec<String> {
    fs::read_to_string("/sys/fs/cgroup/cgroup.controllers")
        .map(|s| s.split_whitespace().map(str::to_string).collect())
        .unwrap_or_default()
}

/// Moves PID 1 off the initramfs onto a fresh tmpfs, as `switch_root` does: the kernel refuses
/// `pivot_root` while the caller's root is the initial ramfs, and every container needs it. The
/// agent keeps running from the initramfs copy it was started from; it never re-executes itself.
fn leave_initramfs() -> Result<(), String> {
    let step = |what: &str, e: nix::errno::Errno| format!("leaving the initramfs ({what}): {e}");
    let new_root = "/cocoon-root";
    fs::create_dir_all(new_root).map_err(|e| format!("creating {new_root}: {e}"))?;
    mount(
        Some("tmpfs"),
        new_root,
        Some("tmpfs"),
        MsFlags::MS_NOSUID,
        Some("mode=0755"),
    )
    .map_err(|e| step("mounting a tmpfs", e))?;
    nix::unistd::chdir(new_root).map_err(|e| step("chdir", e))?;
    mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)
        .map_err(|e| step("moving the tmpfs onto /", e))?;
    nix::unistd::chroot(".").map_err(|e| step("chroot", e))?;
    nix::unistd::chdir("/").map_err(|e| step("chdir /", e))
}

/// Everything PID 1 sets up. Errors name the step.
pub fn setup_pid1() -> Result<(), String> {
    if std::process::id() == 1 {
        leave_initramfs()?;
    }
    mount_all()?;
    bring_up_loopback()
}

/// Reaps every child that exits, for ever (orphans are re-parented to PID 1).
pub fn reap_forever() -> ! {
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::__WALL)) {
            Ok(_) => {}
            // No children right now: wait for one to appear.
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(100)),
        }
    }
}
