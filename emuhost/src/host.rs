//! The emulated KVM host: an initramfs of busybox, Debian's KVM modules, cocoon's binaries (with
//! their shared libraries), the guest images and a script; booted by qemu TCG with `-cpu max`, which
//! gives its guest AMD SVM, so the script finds a real /dev/kvm.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use cocoon_guest_image::Initramfs;

use crate::process::{run_with_deadline, Finished};
use crate::tools::HostTools;

/// Printed by the host's init once /dev/kvm exists, before the script runs.
pub const HOST_READY: &str = "@@COCOON-HOST-READY";
/// Printed with the script's exit status, just before the host powers off.
pub const SCRIPT_EXIT: &str = "@@COCOON-SCRIPT-EXIT";

/// Paths inside the emulated host.
pub const BIN_DIR: &str = "/cocoon/bin";
pub const GUEST_DIR: &str = "/cocoon/guest";
pub const FILES_DIR: &str = "/cocoon/files";
pub const SCRIPT: &str = "/cocoon/script.sh";

/// What a suite needs of the emulated host beyond the usual (ignored in direct mode, where the
/// machine itself has it).
#[derive(Clone, Debug, Default)]
pub struct HostNeeds {
    /// A tmpfs root instead of the initramfs, so pivot_root works (containerd's runc).
    pub real_root: bool,
    /// Host kernel modules to load, by path under `/lib/modules/VERSION/kernel`.
    pub modules: Vec<String>,
    /// Memory of the emulated host, when more than its default.
    pub memory_mib: Option<u32>,
    /// Files of this machine carried at the same path (plug-ins a carried binary loads by path,
    /// such as iptables' extensions).
    pub files: Vec<PathBuf>,
}

/// Marks a host whose init first moves into a tmpfs root (see [`EmulatedHost::real_root`]).
const REAL_ROOT_MARK: &str = "/cocoon/real-root";

const HOST_INIT: &str = r#"#!/bin/busybox sh
if [ -e /cocoon/real-root ] && [ -z "$COCOON_SWITCHED" ]; then
  # pivot_root (runc, containerd) cannot leave the initramfs: copy it into a tmpfs and switch there.
  /bin/busybox mkdir /newroot
  /bin/busybox mount -t tmpfs -o mode=755 tmpfs /newroot
  for entry in /*; do [ "$entry" = /newroot ] || /bin/busybox cp -a "$entry" /newroot/; done
  export COCOON_SWITCHED=1
  exec /bin/busybox switch_root /newroot /init
fi
/bin/busybox --install -s /bin
export PATH=/bin:/sbin:/cocoon/bin
mkdir -p /proc /sys /dev /tmp /run
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
mkdir -p /dev/pts && mount -t devpts devpts /dev/pts
# Loopback up, as on any machine (passt, cocoon run's network, takes it as its template
# interface when there is no uplink).
ip link set lo up
for m in irqbypass kvm; do insmod /modules/$m.ko || echo "@@COCOON-HOST-ERROR insmod $m failed"; done
# Modules load in passes until one loads nothing more: a module whose dependencies come later in
# the list (bridge before llc, iptable_nat before nf_nat) loads in a later pass.
pending=$(ls /modules/extra/*.ko 2>/dev/null)
while [ -n "$pending" ]; do
  failed=""; loaded=0
  for m in $pending; do
    n=$(basename "$m" .ko); grep -q "^$n " /proc/modules && continue
    if insmod "$m" 2>/dev/null; then loaded=1; else failed="$failed $m"; fi
  done
  pending=$failed
  [ $loaded = 1 ] || break
done
for m in $pending; do echo "@@COCOON-HOST-ERROR insmod $m failed"; done
# vgif=0: with virtual GIF, qemu 7.2's TCG delivers host interrupts right after #VMEXIT while GIF
# is still clear (seen as a stack-guard crash in __svm_vcpu_run, and as guests reset mid-run).
insmod /modules/kvm-amd.ko vgif=0 2>/dev/null || insmod /modules/kvm-intel.ko 2>/dev/null
if [ -c /dev/kvm ]; then
  echo "@@COCOON-HOST-READY cpus=$(grep -c ^processor /proc/cpuinfo) uptime=$(cut -d' ' -f1 /proc/uptime)"
  . /cocoon/env.sh
  cd /tmp
  sh /cocoon/script.sh 2>&1
  echo "@@COCOON-SCRIPT-EXIT $?"
else
  echo "@@COCOON-HOST-ERROR no /dev/kvm after loading the KVM modules"
fi
sync
poweroff -f
"#;

/// One file to put in the emulated host, with its permission bits.
pub struct HostFile {
    pub path: String,
    pub contents: Vec<u8>,
    pub perm: u32,
}

/// The emulated host being put together.
pub struct EmulatedHost {
    tools: HostTools,
    image: Initramfs,
    env: Vec<(String, String)>,
    /// Emulated CPUs: at least as many as the largest guest has vCPUs (fewer hung the host).
    pub cpus: u8,
    pub memory_mib: u32,
    /// Move from the initramfs into a tmpfs root before anything runs, so pivot_root works
    /// (containerd's runc needs it); costs a copy of the image at boot.
    pub real_root: bool,
}

/// Shared libraries `ldd` says a dynamically linked binary needs, as absolute paths.
fn shared_libraries(binary: &Path) -> Result<Vec<PathBuf>> {
    let out = Command::new("ldd")
        .arg(binary)
        .output()
        .context("running ldd")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if text.contains("not a dynamic executable") || text.contains("statically linked") {
        return Ok(Vec::new());
    }
    let mut libs = Vec::new();
    for line in text.lines() {
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        if let Some(p) = path.filter(|p| p.starts_with('/')) {
            libs.push(PathBuf::from(p));
        }
    }
    Ok(libs)
}

/// A copy of `binary` without symbols (smaller initramfs, faster boot), or the original bytes if
/// `strip` is not available.
fn stripped(binary: &Path) -> Result<Vec<u8>> {
    let tmp = std::env::temp_dir().join(format!(
        "cocoon-strip-{}-{}",
        std::process::id(),
        binary.file_name().unwrap_or_default().to_string_lossy()
    ));
    let ok = Command::new("strip")
        .arg("-o")
        .arg(&tmp)
        .arg(binary)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    let bytes = if ok {
        std::fs::read(&tmp)?
    } else {
        std::fs::read(binary).with_context(|| format!("reading {}", binary.display()))?
    };
    let _ = std::fs::remove_file(&tmp);
    Ok(bytes)
}

impl EmulatedHost {
    pub fn new(tools: HostTools) -> Result<Self> {
        let mut image = Initramfs::new();
        image
            .dir("/proc")
            .dir("/sys")
            .dir("/tmp")
            .dir("/run")
            .base_devices()
            .file_from("/bin/busybox", &tools.busybox, 0o755)?
            .symlink("/bin/sh", "busybox");
        image.file_bytes("/init", HOST_INIT.as_bytes().to_vec(), 0o755);
        for module in &tools.modules {
            let name = module.file_name().unwrap().to_string_lossy();
            image.file_from(&format!("/modules/{name}"), module, 0o644)?;
        }
        Ok(Self {
            tools,
            image,
            env: Vec::new(),
            cpus: 2,
            memory_mib: 1536,
            real_root: false,
        })
    }

    /// Adds a host binary at `/cocoon/bin/<name>`, stripped, with the libraries it links against.
    pub fn add_binary(&mut self, binary: &Path) -> Result<String> {
        let name = binary
            .file_name()
            .context("binary has no file name")?
            .to_string_lossy()
            .to_string();
        for lib in shared_libraries(binary)? {
            let dest = lib.to_string_lossy().to_string();
            let real = std::fs::canonicalize(&lib)
                .with_context(|| format!("resolving {}", lib.display()))?;
            self.image.file_from(&dest, &real, 0o755)?;
        }
        let dest = format!("{BIN_DIR}/{name}");
        self.image.file_bytes(&dest, stripped(binary)?, 0o755);
        Ok(dest)
    }

    /// Gives the host what a suite needs beyond the usual (a tmpfs root, modules, memory).
    pub fn meet(&mut self, needs: &HostNeeds) -> Result<()> {
        self.real_root = needs.real_root;
        self.memory_mib = needs.memory_mib.unwrap_or(self.memory_mib);
        for module in &needs.modules {
            self.add_module(module)?;
        }
        for file in &needs.files {
            let path = file.to_string_lossy();
            self.add_file(&path, file)
                .with_context(|| format!("adding {path}"))?;
        }
        Ok(())
    }

    /// Adds a kernel module of the host kernel (`fs/overlayfs/overlay.ko`), loaded at boot after
    /// the KVM modules.
    pub fn add_module(&mut self, relative: &str) -> Result<()> {
        let module = self.tools.module_path(relative);
        let name = module.file_name().context("module has no file name")?;
        let dest = format!("/modules/extra/{}", name.to_string_lossy());
        self.image
            .file_from(&dest, &module, 0o644)
            .with_context(|| format!("adding the module {}", module.display()))?;
        Ok(())
    }

    /// Adds a file at an absolute path inside the host.
    pub fn add_file(&mut self, path: &str, source: &Path) -> Result<()> {
        self.image.file_from(path, source, 0o644)?;
        Ok(())
    }

    pub fn add_bytes(&mut self, file: HostFile) {
        self.image.file_bytes(&file.path, file.contents, file.perm);
    }

    /// Exports a variable to the script.
    pub fn set_env(&mut self, key: &str, value: &str) {
        self.env.push((key.to_string(), value.to_string()));
    }

    /// Boots the host, runs `script` in it, and powers it off. Each output line goes to `on_line`.
    pub fn run(
        mut self,
        script: &str,
        deadline: Duration,
        on_line: impl FnMut(&str, Duration) + Send + 'static,
    ) -> Result<Finished> {
        let mut env = String::new();
        for (k, v) in &self.env {
            if v.contains('\'') {
                bail!("environment value for {k} contains a quote");
            }
            env.push_str(&format!("export {k}='{v}'\n"));
        }
        if self.real_root {
            self.image.file_bytes(REAL_ROOT_MARK, Vec::new(), 0o644);
        }
        self.image
            .file_bytes("/cocoon/env.sh", env.into_bytes(), 0o644)
            .file_bytes(SCRIPT, script.as_bytes().to_vec(), 0o755);
        let dir = tempfile::Builder::new()
            .prefix("cocoon-emuhost-")
            .tempdir()
            .context("creating a temporary directory")?;
        let initrd = dir.path().join("host.cpio");
        self.image.write_file(&initrd)?;
        let mut cmd = Command::new(&self.tools.qemu);
        cmd.args([
            "-machine",
            "pc",
            "-accel",
            "tcg,thread=multi",
            "-cpu",
            "max",
        ])
        .args(["-smp", &self.cpus.to_string()])
        .args(["-m", &self.memory_mib.to_string()])
        .args(["-nodefaults", "-no-user-config", "-no-reboot"])
        .args(["-display", "none", "-monitor", "none", "-serial", "stdio"])
        .arg("-kernel")
        .arg(&self.tools.kernel)
        .arg("-initrd")
        .arg(&initrd)
        .args([
            "-append",
            "console=ttyS0 quiet loglevel=1 panic=-1 rdinit=/init",
        ]);
        let finished = run_with_deadline(cmd, deadline, on_line)
            .with_context(|| format!("starting {}", self.tools.qemu.display()))?;
        drop(dir);
        Ok(finished)
    }
}
