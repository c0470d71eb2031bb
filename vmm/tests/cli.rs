//! Bad input to `cocoon-vmm` gets one clear error line and exit status 1, before any VM exists.
//! These run on any Linux host: every check happens before KVM is touched, except the /dev/kvm
//! permission check, which needs a /dev/kvm that an unprivileged user cannot open.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const VMM: &str = env!("CARGO_BIN_EXE_cocoon-vmm");

/// A scratch directory, removed on drop.
struct Scratch(tempfile::TempDir);

impl Scratch {
    fn new(tag: &str) -> Self {
        Self(
            tempfile::Builder::new()
                .prefix(&format!("cocoon-cli-{tag}-"))
                .tempdir()
                .unwrap(),
        )
    }
    fn dir(&self) -> &Path {
        self.0.path()
    }
    fn file(&self, name: &str, contents: &[u8]) -> PathBuf {
        let p = self.dir().join(name);
        std::fs::write(&p, contents).unwrap();
        p
    }
}

/// Bytes that pass for a bzImage as far as format detection goes.
fn fake_bzimage() -> Vec<u8> {
    let mut image = vec![0u8; 0x400];
    image[0x202..0x206].copy_from_slice(b"HdrS");
    image
}

fn vmm(args: &[&str]) -> Output {
    Command::new(VMM)
        .args(args)
        .output()
        .expect("run cocoon-vmm")
}

/// Asserts a failed run printed exactly one line on stderr containing every `needles`.
fn assert_one_error_line(out: &Output, needles: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    assert_eq!(stderr.lines().count(), 1, "want one line, got: {stderr}");
    assert!(stderr.starts_with("cocoon-vmm: "), "{stderr}");
    for n in needles {
        assert!(stderr.contains(n), "'{n}' missing from: {stderr}");
    }
    assert!(out.stdout.is_empty(), "nothing on stdout");
}

fn path_str(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn missing_kernel_flag() {
    assert_one_error_line(&vmm(&[]), &["--kernel", "--help"]);
}

#[test]
fn nonexistent_kernel_file() {
    let out = vmm(&["--kernel", "/nonexistent/bzImage"]);
    assert_one_error_line(&out, &["/nonexistent/bzImage", "No such file", "--kernel"]);
}

#[test]
fn kernel_that_is_not_a_kernel() {
    let s = Scratch::new("notkernel");
    let k = s.file("junk", b"#!/bin/sh\necho hi\n");
    let out = vmm(&["--kernel", path_str(&k)]);
    assert_one_error_line(&out, &["neither a bzImage nor an ELF vmlinux"]);
}

#[test]
fn zero_and_tiny_memory() {
    let s = Scratch::new("mem0");
    let k = s.file("bzImage", &fake_bzimage());
    for m in ["0", "8"] {
        let out = vmm(&["--kernel", path_str(&k), "--memory-mib", m]);
        assert_one_error_line(&out, &["at least 32 MiB", "--memory-mib"]);
    }
}

#[test]
fn memory_larger_than_the_host() {
    let s = Scratch::new("membig");
    let k = s.file("bzImage", &fake_bzimage());
    let out = vmm(&["--kernel", path_str(&k), "--memory-mib", "4000000000"]);
    assert_one_error_line(&out, &["more than this host's", "MiB"]);
}

#[test]
fn unreadable_initrd() {
    let s = Scratch::new("initrd");
    let k = s.file("bzImage", &fake_bzimage());
    let out = vmm(&["--kernel", path_str(&k), "--initrd", "/nonexistent/initrd"]);
    assert_one_error_line(&out, &["initrd /nonexistent/initrd", "--initrd"]);
    let dir = s.dir().join("a-directory");
    std::fs::create_dir_all(&dir).unwrap();
    let out = vmm(&["--kernel", path_str(&k), "--initrd", path_str(&dir)]);
    assert_one_error_line(&out, &["not a regular file"]);
}

#[test]
fn vcpu_count_out_of_range() {
    let s = Scratch::new("vcpus");
    let k = s.file("bzImage", &fake_bzimage());
    let out = vmm(&["--kernel", path_str(&k), "--vcpus", "0"]);
    assert_one_error_line(&out, &["--vcpus must be between 1 and 254"]);
    let out = vmm(&["--kernel", path_str(&k), "--vcpus", "1000"]);
    assert_one_error_line(&out, &["1000", "--vcpus"]);
}

#[test]
fn tampered_kernel_is_refused() {
    let s = Scratch::new("digest");
    let k = s.file("bzImage", &fake_bzimage());
    let wrong = "0".repeat(64);
    let out = vmm(&["--kernel", path_str(&k), "--kernel-sha256", &wrong]);
    assert_one_error_line(&out, &["has sha256", "expected 0000", "refusing to boot"]);
    let out = vmm(&["--kernel", path_str(&k), "--kernel-sha256", "xyz"]);
    assert_one_error_line(&out, &["64 hex digits"]);
}

#[test]
fn bad_console_and_config_file() {
    let s = Scratch::new("config");
    let k = s.file("bzImage", &fake_bzimage());
    let out = vmm(&["--kernel", path_str(&k), "--console", "tcp:1"]);
    assert_one_error_line(&out, &["stdout, off, file:PATH or unix:PATH"]);

    let bad = s.file("vm.json", b"{\"kernel\": \"x\", \"memory\": 64}");
    let out = vmm(&["--config", path_str(&bad)]);
    assert_one_error_line(&out, &["vm.json", "unknown field `memory`"]);

    let out = vmm(&["--config", path_str(&bad), "--vcpus", "2"]);
    assert_one_error_line(&out, &["cannot be used with"]);

    let zero_mem = format!(r#"{{"kernel": "{}", "memory_mib": 0}}"#, k.display());
    let cfg = s.file("zero.json", zero_mem.as_bytes());
    let out = vmm(&["--config", path_str(&cfg)]);
    assert_one_error_line(&out, &["at least 32 MiB"]);
}

#[test]
fn bad_disks() {
    let s = Scratch::new("disk");
    let k = s.file("bzImage", &fake_bzimage());
    let out = vmm(&["--kernel", path_str(&k), "--disk", "/img"]);
    assert_one_error_line(&out, &["path=FILE[,ro]"]);
    let out = vmm(&[
        "--kernel",
        path_str(&k),
        "--disk",
        "path=/nonexistent/disk.img",
    ]);
    assert_one_error_line(
        &out,
        &["disk /nonexistent/disk.img", "No such file", "--disk"],
    );
}

#[test]
fn no_access_to_dev_kvm() {
    // Needs: root (to drop to an unprivileged user) and a /dev/kvm that user cannot open.
    let is_root = nix_uid() == 0;
    let restricted = std::fs::metadata("/dev/kvm")
        .map(|m| m.permissions().mode() & 0o006 == 0)
        .unwrap_or(false);
    if !is_root || !restricted {
        let _ = std::io::Write::write_all(
            &mut std::io::stderr(),
            b"SKIPPED no_access_to_dev_kvm: needs root and a /dev/kvm closed to other users\n",
        );
        return;
    }
    let s = Scratch::new("nokvm");
    let k = s.file("bzImage", &fake_bzimage());
    std::fs::set_permissions(s.dir(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&k, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = Command::new(VMM)
        .args(["--kernel", path_str(&k)])
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    assert_one_error_line(&out, &["/dev/kvm", "permission denied", "kvm' group"]);
}

fn nix_uid() -> u32 {
    nix::unistd::getuid().as_raw()
}
