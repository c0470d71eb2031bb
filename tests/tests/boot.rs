//! The VMM boots our guest kernel to userspace under real KVM (directly where the CPU has vmx/svm,
//! else in the emulated KVM host), in both image formats, with 1 and 2 vCPUs, and ends the way the
//! guest ended: 0 after a reboot or SIGTERM, 2 after a kernel panic or a triple fault.
//!
//! All scenarios share one run (one emulated-host boot); each test asserts on its own scenario.

use std::sync::LazyLock;
use std::time::Duration;

use cocoon_tests::suite::{scenario_result, SuiteFile};
use cocoon_tests::{run_suite, Scenario, ScenarioResult, SuiteError, SuiteRun};

const READY: &str = "cocoon-guest: ready";

/// A 64-bit ELF "kernel" whose first instruction is `ud2`. With the boot IDT empty, the #UD cannot
/// be delivered, nor the #GP and #DF that follow: the vCPU triple faults at its entry point.
fn triple_fault_elf() -> Vec<u8> {
    const ENTRY: u64 = 0x100_0000;
    const CODE_OFFSET: u64 = 0x78;
    let mut elf = Vec::new();
    elf.extend_from_slice(b"\x7fELF\x02\x01\x01\x00");
    elf.extend_from_slice(&[0u8; 8]);
    elf.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    elf.extend_from_slice(&0x3eu16.to_le_bytes()); // EM_X86_64
    elf.extend_from_slice(&1u32.to_le_bytes());
    elf.extend_from_slice(&ENTRY.to_le_bytes());
    elf.extend_from_slice(&64u64.to_le_bytes()); // e_phoff
    elf.extend_from_slice(&0u64.to_le_bytes()); // e_shoff
    elf.extend_from_slice(&0u32.to_le_bytes()); // e_flags
    for v in [64u16, 56, 1, 64, 0, 0] {
        // e_ehsize, e_phentsize, e_phnum, e_shentsize, e_shnum, e_shstrndx
        elf.extend_from_slice(&v.to_le_bytes());
    }
    elf.extend_from_slice(&1u32.to_le_bytes()); // PT_LOAD
    elf.extend_from_slice(&5u32.to_le_bytes()); // R+X
    for v in [CODE_OFFSET, ENTRY, ENTRY, 2, 2, 0x1000] {
        // p_offset, p_vaddr, p_paddr, p_filesz, p_memsz, p_align
        elf.extend_from_slice(&v.to_le_bytes());
    }
    assert_eq!(elf.len() as u64, CODE_OFFSET);
    elf.extend_from_slice(&[0x0f, 0x0b]);
    elf
}

/// Lines the console-flooding guest writes (66 bytes each with the tty's CR LF: 40 KB, two and
/// a half times the bound its scenario gives the console file; the emulated host's serial port
/// takes about 2.5 KB/s).
const FLOOD_LINES: u32 = 600;

/// An initramfs whose /init (busybox sh) writes [`FLOOD_LINES`] numbered lines to the console
/// as fast as it can, says it is done, and reboots: a guest that floods its serial port.
fn console_flood_initramfs() -> Vec<u8> {
    let init = format!(
        "#!/bin/busybox sh\n\
         i=0\n\
         while [ $i -lt {FLOOD_LINES} ]; do\n\
         echo \"console flood line $i: 0123456789012345678901234567890123456789\"\n\
         i=$((i + 1))\n\
         done\n\
         echo 'console flood done'\n\
         /bin/busybox reboot -f\n"
    );
    let mut image = cocoon_guest_image::Initramfs::new();
    image
        .base_devices()
        .file_from("/bin/busybox", std::path::Path::new("/bin/busybox"), 0o755)
        .expect("busybox-static (make deps installs it)")
        .file_bytes("/init", init.into_bytes(), 0o755);
    image.write_to(Vec::new()).expect("an initramfs in memory")
}

fn scenarios() -> Vec<Scenario> {
    let boot = |vcpus: u32, kernel: &str| {
        format!(
            "cocoon_boot --kernel \"{kernel}\" --initrd \"$GUEST_INITRD\" --vcpus {vcpus} --memory-mib 128 --log-level info\necho \"vmm-exit=$?\""
        )
    };
    vec![
        Scenario::new("bzimage_1_vcpu", &boot(1, "$GUEST_BZIMAGE")),
        Scenario::new("bzimage_2_vcpus", &boot(2, "$GUEST_BZIMAGE")),
        Scenario::new("vmlinux_2_vcpus", &boot(2, "$GUEST_VMLINUX")),
        Scenario::new(
            "json_config_and_file_console",
            r#"cat > vm.json <<JSON
{"kernel": "$GUEST_BZIMAGE", "initrd": "$GUEST_INITRD", "vcpus": 2, "memory_mib": 96,
 "cmdline": "console=ttyS0 reboot=k panic=1 quiet", "console": "file:$PWD/console.log"}
JSON
cocoon_boot --config vm.json
echo "vmm-exit=$?"
echo "--- console.log"
cat console.log"#,
        ),
        Scenario::new(
            "console_flood_is_bounded",
            r#"start=$(date +%s)
BOOT_DEADLINE=120 cocoon_boot --kernel "$GUEST_BZIMAGE" --initrd "$COCOON_FILES/flood.cpio" --console "file:$PWD/console.log" --console-max-bytes 16384 --cmdline "console=ttyS0 reboot=k panic=1 quiet"
echo "vmm-exit=$? flood-secs=$(($(date +%s) - start))"
echo "console-files=$(ls console.log* | tr '\n' ' ')"
echo "console-bytes=$(wc -c < console.log) $(wc -c < console.log.1)"
whole='^console flood line [0-9]*: 0123456789012345678901234567890123456789$'
echo "done-lines=$(grep -c '^console flood done' console.log)"
# The guest's tty ends its lines with CR LF.
echo "earlier-first=$(tr -d '\r' < console.log.1 | grep -m1 "$whole" | cut -d: -f1)"
echo "earlier-last=$(tr -d '\r' < console.log.1 | grep "$whole" | tail -n 1 | cut -d: -f1)"
echo "current-first=$(tr -d '\r' < console.log | grep -m1 "$whole" | cut -d: -f1)"
"$COCOON_VMM" --kernel "$GUEST_BZIMAGE" --console-max-bytes 10 2>&1
echo "small-exit=$?""#,
        ),
        Scenario::new(
            "pinned_image_digests",
            r#"k=$(sha256sum "$GUEST_BZIMAGE" | cut -d' ' -f1)
i=$(sha256sum "$GUEST_INITRD" | cut -d' ' -f1)
cocoon_boot --kernel "$GUEST_BZIMAGE" --initrd "$GUEST_INITRD" --kernel-sha256 "$k" --initrd-sha256 "$i" --console off
echo "matching-exit=$?"
bad=$(echo "$i" | tr '0-9a-f' '1-9a-f0')
cocoon_boot --kernel "$GUEST_BZIMAGE" --initrd "$GUEST_INITRD" --initrd-sha256 "$bad"
echo "tampered-exit=$?""#,
        ),
        Scenario::new(
            "sigterm_stops_a_running_guest",
            r#"start_held() {
  "$COCOON_VMM" --kernel "$GUEST_BZIMAGE" --initrd "$GUEST_INITRD" --vcpus 2 --log-level info --cmdline "console=ttyS0 reboot=k panic=1 cocoon.hold" > console.log 2>&1 &
  pid=$!
  i=0
  while ! grep -q "cocoon-guest: ready" console.log && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done
  grep -q "cocoon-guest: ready" console.log
}
n=1
while ! start_held && [ "${COCOON_EMULATED_HOST:-0}" = 1 ] && [ $n -le 2 ]; do
  kill -USR1 $pid; sleep 1
  echo "@@COCOON-RETRY attempt $n: the guest did not come up in 60s under the emulated host; $(grep 'cocoon-vmm: vCPU' console.log | tr '\n' '|')"
  kill -KILL $pid; wait $pid
  n=$((n+1))
done
grep -q "cocoon-guest: ready" console.log && echo "guest-held"
kill -USR1 $pid
i=0
while [ "$(grep -c "cocoon-vmm: vCPU" console.log)" -lt 2 ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done
kill -TERM $pid
i=0
while kill -0 $pid 2>/dev/null && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
kill -0 $pid 2>/dev/null && { echo "still-running-after-10s"; kill -KILL $pid; }
wait $pid
echo "vmm-exit=$?"
cat console.log"#,
        ),
        Scenario::new(
            "virtio_blk_disks",
            r#"dd if=/dev/zero of=ro.img bs=1024 count=1024 2>/dev/null
printf 'read-only disk from the host\n' | dd of=ro.img conv=notrunc 2>/dev/null
dd if=/dev/zero of=rw.img bs=1024 count=2048 2>/dev/null
printf 'writable disk from the host\n' | dd of=rw.img conv=notrunc 2>/dev/null
cocoon_boot --kernel "$GUEST_BZIMAGE" --initrd "$GUEST_INITRD" --vcpus 2 --disk "path=$PWD/ro.img,ro" --disk "path=$PWD/rw.img" --disk "path=$COCOON_FILES/rootfs.ext4,ro" --cmdline "console=ttyS0 reboot=k panic=1 quiet cocoon.probe_disks"
echo "vmm-exit=$?"
echo "rw-after=$(dd if=rw.img bs=512 skip=1 count=1 2>/dev/null | head -n 1)"
echo "ro-after-bytes=$(dd if=ro.img bs=512 skip=1 count=1 2>/dev/null | tr -d '\000' | wc -c)""#,
        ),
        Scenario::new(
            "guest_panic_is_a_failure",
            r#"cocoon_boot --kernel "$GUEST_BZIMAGE" --initrd "$GUEST_INITRD" --cmdline "console=ttyS0 reboot=k panic=1 rdinit=/does-not-exist"
echo "vmm-exit=$?""#,
        ),
        Scenario::new(
            "triple_fault_is_a_failure",
            r#"COCOON_EXPECT_CRASH=1 cocoon_boot --kernel "$COCOON_FILES/triple-fault.elf"
echo "vmm-exit=$?""#,
        ),
    ]
}

fn busybox_applets() -> usize {
    let out = std::process::Command::new("/bin/busybox")
        .arg("--list")
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| *l != "busybox")
        .count()
}

static SUITE: LazyLock<Result<SuiteRun, SuiteError>> = LazyLock::new(|| {
    let files = vec![
        SuiteFile {
            name: "triple-fault.elf".into(),
            contents: triple_fault_elf(),
        },
        SuiteFile {
            name: "rootfs.ext4".into(),
            contents: cocoon_tests::images::default_rootfs_image(),
        },
        SuiteFile {
            name: "flood.cpio".into(),
            contents: console_flood_initramfs(),
        },
    ];
    run_suite(&scenarios(), files, &[], 2, Duration::from_secs(600))
});

/// The named scenario's result; None (after saying why) when end-to-end tests cannot run here.
fn scenario(test: &str, name: &str) -> Option<&'static ScenarioResult> {
    scenario_result(&SUITE, test, name)
}

fn value_after<'a>(output: &'a str, key: &str) -> Option<&'a str> {
    output
        .lines()
        .find_map(|l| l.trim().strip_prefix(key))
        .map(str::trim)
}

/// Asserts the guest reached userspace with `cpus` CPUs online and the VMM exited 0.
fn assert_booted(result: &ScenarioResult, cpus: u32) {
    let out = &result.output;
    let ready = out
        .lines()
        .find(|l| l.contains(READY))
        .unwrap_or_else(|| panic!("no '{READY}' marker in:\n{out}"));
    assert!(
        ready.contains(&format!("cpus={cpus} ")),
        "guest saw the wrong CPU count: {ready}"
    );
    assert_eq!(value_after(out, "vmm-exit="), Some("0"), "{out}");
}

#[test]
fn bzimage_boots_to_userspace_with_one_vcpu() {
    if let Some(r) = scenario("bzimage_boots_to_userspace_with_one_vcpu", "bzimage_1_vcpu") {
        assert_booted(r, 1);
        assert!(r.output.contains("guest stopped"), "{}", r.output);
    }
}

#[test]
fn bzimage_boots_with_two_vcpus() {
    if let Some(r) = scenario("bzimage_boots_with_two_vcpus", "bzimage_2_vcpus") {
        assert_booted(r, 2);
    }
}

#[test]
fn agent_sets_up_cgroup2_and_loopback_as_pid1() {
    let Some(r) = scenario(
        "agent_sets_up_cgroup2_and_loopback_as_pid1",
        "bzimage_2_vcpus",
    ) else {
        return;
    };
    let ready = r
        .output
        .lines()
        .find(|l| l.contains(READY))
        .unwrap_or_else(|| panic!("no marker: {}", r.output));
    let controllers = value_after(ready.split(" cgroup=").nth(1).unwrap_or(""), "")
        .and_then(|v| v.split_whitespace().next())
        .unwrap_or_else(|| panic!("no cgroup controllers reported: {ready}"));
    for wanted in ["cpu", "memory", "pids", "io", "cpuset"] {
        assert!(
            controllers.split(',').any(|c| c == wanted),
            "cgroup v2 controller {wanted} missing from the guest kernel: {ready}"
        );
    }
    assert!(ready.ends_with("lo=up"), "{ready}");
}

#[test]
fn elf_vmlinux_boots_with_two_vcpus() {
    if let Some(r) = scenario("elf_vmlinux_boots_with_two_vcpus", "vmlinux_2_vcpus") {
        assert_booted(r, 2);
        assert!(r.output.contains("Elf kernel"), "{}", r.output);
    }
}

#[test]
fn json_config_boots_with_console_to_a_file() {
    let Some(r) = scenario(
        "json_config_boots_with_console_to_a_file",
        "json_config_and_file_console",
    ) else {
        return;
    };
    let (before, console) = r.output.split_once("--- console.log").expect("marker");
    assert_eq!(value_after(before, "vmm-exit="), Some("0"), "{}", r.output);
    assert!(
        !before.contains(READY),
        "console went to stdout instead of the file: {before}"
    );
    assert!(console.contains(&format!("{READY} cpus=2 ")), "{console}");
}

#[test]
fn a_guest_that_floods_its_console_costs_the_host_a_bounded_file() {
    let Some(r) = scenario(
        "a_guest_that_floods_its_console_costs_the_host_a_bounded_file",
        "console_flood_is_bounded",
    ) else {
        return;
    };
    let out = &r.output;
    assert!(
        value_after(out, "vmm-exit=").is_some_and(|v| v.starts_with("0 ")),
        "{out}"
    );
    // Two generations of at most 16 KiB each, the newest lines in the current one: the guest
    // wrote about 40 KB.
    assert_eq!(
        value_after(out, "console-files="),
        Some("console.log console.log.1"),
        "{out}"
    );
    let sizes: Vec<u64> = value_after(out, "console-bytes=")
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|n| n.parse().ok())
        .collect();
    assert!(
        sizes.len() == 2 && sizes.iter().all(|&n| n > 0 && n <= 16384),
        "{sizes:?}\n{out}"
    );
    assert_eq!(value_after(out, "done-lines="), Some("1"), "{out}");
    // The earlier generation's last whole line comes just before the current one's first: only
    // a line cut at the turn is whole in neither.
    let line_number = |key: &str| -> u32 {
        value_after(out, key)
            .and_then(|v| v.rsplit(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no {key} line number in:\n{out}"))
    };
    let earlier = line_number("earlier-last=");
    let current = line_number("current-first=");
    assert!(
        current == earlier + 1 || current == earlier + 2,
        "the generations meet (a line cut at the turn is shown whole in neither): {earlier} then {current}\n{out}"
    );
    // The first generation went: the oldest lines are nowhere.
    let first_kept = line_number("earlier-first=");
    assert!(
        first_kept > 0 && first_kept < earlier,
        "{first_kept}\n{out}"
    );
    // A bound too small to keep a panic is refused, naming the flag.
    assert!(
        out.contains("--console-max-bytes must be at least 4096, got 10"),
        "{out}"
    );
    assert_ne!(value_after(out, "small-exit="), Some("0"), "{out}");
}

#[test]
fn pinned_digests_boot_and_tampered_images_are_refused() {
    let Some(r) = scenario(
        "pinned_digests_boot_and_tampered_images_are_refused",
        "pinned_image_digests",
    ) else {
        return;
    };
    let out = &r.output;
    assert_eq!(value_after(out, "matching-exit="), Some("0"), "{out}");
    assert_eq!(value_after(out, "tampered-exit="), Some("1"), "{out}");
    assert!(out.contains("refusing to boot it"), "{out}");
}

#[test]
fn sigterm_stops_a_running_guest_cleanly() {
    let Some(r) = scenario(
        "sigterm_stops_a_running_guest_cleanly",
        "sigterm_stops_a_running_guest",
    ) else {
        return;
    };
    let out = &r.output;
    assert!(out.contains("guest-held"), "guest never came up: {out}");
    assert!(!out.contains("still-running-after-10s"), "{out}");
    assert_eq!(value_after(out, "vmm-exit="), Some("0"), "{out}");
    assert!(out.contains("stopped by signal 15"), "{out}");
    // SIGUSR1 made each of the two vCPUs print its registers, and did not stop the VM.
    for vcpu in 0..2 {
        assert!(
            out.contains(&format!("cocoon-vmm: vCPU {vcpu}: rip=0x")),
            "no register dump of vCPU {vcpu}: {out}"
        );
    }
}

#[test]
fn virtio_blk_disks_read_write_flush_and_read_only() {
    let Some(r) = scenario(
        "virtio_blk_disks_read_write_flush_and_read_only",
        "virtio_blk_disks",
    ) else {
        return;
    };
    let out = &r.output;
    assert_booted(r, 2);
    let disk = |name: &str| {
        out.lines()
            .find(|l| l.contains(&format!("cocoon-guest: disk {name} ")))
            .unwrap_or_else(|| panic!("guest did not see {name}: {out}"))
    };
    let vda = disk("vda");
    assert!(
        vda.contains("sectors=2048 ro=1 head=read-only disk from the host write=error:"),
        "{vda}"
    );
    let vdb = disk("vdb");
    assert!(
        vdb.contains("sectors=4096 ro=0 head=writable disk from the host write=ok"),
        "{vdb}"
    );
    assert_eq!(
        value_after(out, "rw-after="),
        Some("written-by-guest vdb"),
        "{out}"
    );
    // The default container image, made on the host by mkfs.ext4 -d, mounts in the guest.
    let vdc = disk("vdc");
    let applets = busybox_applets();
    assert!(
        vdc.contains(&format!("ext4-bin-entries={}", applets + 1)),
        "want busybox and its {applets} applets in /bin: {vdc}"
    );
    assert_eq!(value_after(out, "ro-after-bytes="), Some("0"), "{out}");
}

#[test]
fn guest_kernel_panic_exits_non_zero() {
    if let Some(r) = scenario(
        "guest_kernel_panic_exits_non_zero",
        "guest_panic_is_a_failure",
    ) {
        let out = &r.output;
        assert!(out.contains("Kernel panic - not syncing"), "{out}");
        assert!(
            out.contains("cocoon-vmm: the guest kernel panicked"),
            "{out}"
        );
        assert_eq!(value_after(out, "vmm-exit="), Some("2"), "{out}");
    }
}

#[test]
fn triple_fault_exits_non_zero_with_registers() {
    if let Some(r) = scenario(
        "triple_fault_exits_non_zero_with_registers",
        "triple_fault_is_a_failure",
    ) {
        let out = &r.output;
        assert!(out.contains("triple fault"), "{out}");
        // Intel keeps the faulting state; AMD (the emulated host) resets the vCPU before KVM
        // returns, so only the presence of the dump is portable.
        assert!(
            out.contains("rip=0x") && out.contains("cr0=0x"),
            "registers missing: {out}"
        );
        assert_eq!(value_after(out, "vmm-exit="), Some("2"), "{out}");
    }
}
