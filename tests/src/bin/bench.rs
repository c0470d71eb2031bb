//! `cocoon-bench`: boot latency and VMM memory of cocoon-vmm against qemu `-M microvm`, booting the
//! same kernel and initramfs, measured side by side in one run.
//!
//! Without hardware virtualization it boots the emulated KVM host once and runs the measurements
//! inside it (`cocoon-bench measure`), where both VMMs use the same nested /dev/kvm. Figures there
//! are inflated by the emulation for both; compare the ratio, not the absolute numbers.
//!
//! Then containers (the agent against runc, `cocoon run` against `runc run`) and containerd: `ctr
//! run` through cocoon's shim and through runc's, in an emulated host of its own (a tmpfs root
//! for runc's pivot_root). `cocoon-bench --containerd` prints only that last table.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::mpsc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};
use cocoon_emuhost::cocoon_host;
use cocoon_tests::artifacts::{guest_images, tool_env_name, workspace_binary};
use cocoon_tests::emuhost::SCRIPT_EXIT;
use cocoon_tests::suite::{choose_mode, KvmMode};

const READY: &str = "cocoon-guest: ready";
const RESULT: &str = "@@BENCH ";
const FAILED: &str = "@@BENCH-FAIL ";
const GUEST_MEMORY_MIB: u64 = 128;
/// `quiet`, as in production: the boot is measured, not the emulation of kernel log output.
const CMDLINE: &str = "console=ttyS0 reboot=k panic=1 quiet cocoon.hold";

fn monotonic_ns() -> u128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u128 * 1_000_000_000 + ts.tv_nsec as u128
}

fn realtime_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos()
}

/// RSS of a process and the part of it that is guest memory (mappings at least as large as the
/// guest's RAM), in KiB, from /proc/PID/smaps.
fn rss_split(pid: u32, guest_kib: u64) -> Result<(u64, u64)> {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps"))?;
    let (mut total, mut guest, mut size) = (0u64, 0u64, 0u64);
    for line in smaps.lines() {
        let mut words = line.split_whitespace();
        match (words.next(), words.next()) {
            (Some("Size:"), Some(v)) => size = v.parse().unwrap_or(0),
            (Some("Rss:"), Some(v)) => {
                let rss: u64 = v.parse().unwrap_or(0);
                total += rss;
                if size >= guest_kib {
                    guest += rss;
                }
            }
            _ => {}
        }
    }
    Ok((total, guest))
}

/// What one boot measured. Milliseconds from just before exec.
#[derive(Default, Debug, Clone)]
struct Sample {
    first_entry_ms: Option<f64>,
    init_ms: Option<f64>,
    overhead_kib: Option<u64>,
}

enum Stream {
    Out(String, u128),
    Err(String),
}

fn pump(reader: impl Read + Send + 'static, tx: mpsc::Sender<Stream>, err: bool) {
    std::thread::spawn(move || {
        for line in BufReader::new(reader).lines().map_while(Result::ok) {
            let _ = tx.send(if err {
                Stream::Err(line)
            } else {
                Stream::Out(line, monotonic_ns())
            });
        }
    });
}

fn stop(mut child: Child) {
    // SAFETY: kill(2) of our own child, which we have not reaped yet.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::time::Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Finds the first-vCPU-entry time (ms after exec) in a stderr line, given exec's monotonic and
/// realtime clocks.
type EntryParser = fn(&str, u128, u128) -> Option<f64>;

/// Boots one VM, watching for the first vCPU entry (via `entry_of`) and the guest's /init marker.
fn measure_boot(
    mut cmd: Command,
    entry_of: Option<EntryParser>,
    want_init: bool,
) -> Result<Sample> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let (t0_mono, t0_real) = (monotonic_ns(), realtime_ns());
    let mut child = cmd.spawn().context("starting the VMM")?;
    let (tx, rx) = mpsc::channel();
    pump(child.stdout.take().unwrap(), tx.clone(), false);
    pump(child.stderr.take().unwrap(), tx, true);
    let mut sample = Sample::default();
    let mut stderr_tail: Vec<String> = Vec::new();
    let mut console_tail: Vec<String> = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while std::time::Instant::now() < deadline {
        let Ok(msg) = rx.recv_timeout(Duration::from_millis(100)) else {
            if let Ok(Some(status)) = child.try_wait() {
                while let Ok(Stream::Err(line)) = rx.try_recv() {
                    stderr_tail.push(line);
                }
                while let Ok(msg) = rx.try_recv() {
                    match msg {
                        Stream::Err(line) => stderr_tail.push(line),
                        Stream::Out(line, _) => console_tail.push(line),
                    }
                }
                let console = &console_tail[console_tail.len().saturating_sub(5)..];
                bail!(
                    "{:?} exited early ({status}): {} | console: {}",
                    cmd.get_program(),
                    stderr_tail.join(" | "),
                    console.join(" | ")
                );
            }
            continue;
        };
        match msg {
            Stream::Err(line) => {
                if stderr_tail.len() < 20 {
                    stderr_tail.push(line.clone());
                }
                if let (None, Some(parse)) = (sample.first_entry_ms, entry_of) {
                    sample.first_entry_ms = parse(&line, t0_mono, t0_real);
                }
            }
            Stream::Out(line, at) if line.contains(READY) => {
                sample.init_ms = Some((at - t0_mono) as f64 / 1e6);
                let guest_kib = GUEST_MEMORY_MIB * 1024;
                let (total, guest) = rss_split(child.id(), guest_kib)?;
                sample.overhead_kib = Some(total.saturating_sub(guest));
            }
            Stream::Out(line, _) => {
                if console_tail.len() >= 50 {
                    console_tail.remove(0);
                }
                console_tail.push(line);
            }
        }
        let entry_done = sample.first_entry_ms.is_some() || entry_of.is_none();
        if entry_done && (!want_init || sample.init_ms.is_some()) {
            break;
        }
    }
    stop(child);
    if sample.first_entry_ms.is_none() && sample.init_ms.is_none() {
        bail!("no boot milestone within 120 s");
    }
    Ok(sample)
}

/// `cocoon-vmm: boot-timer first-vcpu-entry monotonic_ns=N`
fn cocoon_entry(line: &str, t0_mono: u128, _: u128) -> Option<f64> {
    let ns: u128 = line
        .strip_prefix("cocoon-vmm: boot-timer first-vcpu-entry monotonic_ns=")?
        .trim()
        .parse()
        .ok()?;
    Some(ns.saturating_sub(t0_mono) as f64 / 1e6)
}

/// qemu's trace line for its first KVM_RUN, `PID@SEC.USEC:kvm_vcpu_ioctl ... type 0xae80 ...`
/// (with `-msg timestamp=on`, the time is CLOCK_REALTIME).
fn qemu_entry(line: &str, _: u128, t0_real: u128) -> Option<f64> {
    if !line.contains("kvm_vcpu_ioctl") || !line.contains("type 0xae80") {
        return None;
    }
    let stamp = line.split_once('@')?.1.split_once(':')?.0;
    let (sec, usec) = stamp.split_once('.')?;
    let ns = sec.parse::<u128>().ok()? * 1_000_000_000 + usec.parse::<u128>().ok()? * 1000;
    Some(ns.saturating_sub(t0_real) as f64 / 1e6)
}

struct MeasureArgs {
    vmm: PathBuf,
    qemu: Option<PathBuf>,
    kernel: PathBuf,
    vmlinux: PathBuf,
    initrd: PathBuf,
    runs: usize,
}

fn cocoon_cmd(a: &MeasureArgs, kernel: &Path) -> Command {
    let mut c = Command::new(&a.vmm);
    c.arg("--kernel")
        .arg(kernel)
        .arg("--initrd")
        .arg(&a.initrd)
        .args([
            "--vcpus",
            "1",
            "--memory-mib",
            &GUEST_MEMORY_MIB.to_string(),
        ])
        .args(["--cmdline", CMDLINE, "--boot-timer"]);
    c
}

/// qemu's `-M microvm` firmware: qboot under /usr/share/qemu with bookworm's qemu 7.2, SeaBIOS
/// under /usr/share/seabios with qemu 10 from bookworm-backports. The emulated host gets it at
/// the first place, where [`qemu_cmd`] points qemu. SeaBIOS loads `-kernel` through the
/// linuxboot_dma option ROM (with `x-option-roms=off` qemu 10's microvm never starts the
/// kernel), so option ROMs stay on and that ROM goes along.
fn microvm_firmware() -> Result<PathBuf> {
    ["/usr/share/qemu/bios-microvm.bin", "/usr/share/seabios/bios-microvm.bin"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .ok_or_else(|| {
            anyhow::anyhow!(
                "no bios-microvm.bin in /usr/share/qemu or /usr/share/seabios (apt-get install qemu-system-x86 seabios)"
            )
        })
}

fn qemu_cmd(a: &MeasureArgs, qemu: &Path, trace: bool) -> Command {
    let mut c = Command::new(qemu);
    c.args(["-M", "microvm,rtc=off,isa-serial=on"])
        .args(["-L", "/usr/share/qemu"])
        .args(["-accel", "kvm", "-cpu", "host", "-smp", "1"])
        .args(["-m", &GUEST_MEMORY_MIB.to_string()])
        .args(["-nodefaults", "-no-user-config", "-no-reboot"])
        .args(["-display", "none", "-serial", "stdio"])
        .arg("-kernel")
        .arg(&a.kernel)
        .arg("-initrd")
        .arg(&a.initrd)
        .args(["-append", CMDLINE]);
    if trace {
        c.args(["-msg", "timestamp=on", "-trace", "kvm_vcpu_ioctl"]);
    }
    c
}

/// Runs inside the KVM host: prints one `@@BENCH` line per sample, or `@@BENCH-FAIL` for a boot
/// that did not reach /init (counted in the table, never hidden).
fn measure(a: &MeasureArgs) -> Result<()> {
    let mut ok = 0;
    let mut record = |name: &str, run: usize, result: Result<Sample>| match result {
        Ok(s) => {
            ok += 1;
            print_sample(name, run, &s);
        }
        Err(e) => println!("{FAILED}{name} run={run} {e:#}"),
    };
    for run in 1..=a.runs {
        record(
            "cocoon-bzimage",
            run,
            measure_boot(cocoon_cmd(a, &a.kernel), Some(cocoon_entry), true),
        );
        record(
            "cocoon-vmlinux",
            run,
            measure_boot(cocoon_cmd(a, &a.vmlinux), Some(cocoon_entry), true),
        );
        if let Some(qemu) = &a.qemu {
            // Untraced for /init and memory; traced (slower) only to see the first KVM_RUN.
            let result = measure_boot(qemu_cmd(a, qemu, false), None, true).and_then(|mut s| {
                let traced = measure_boot(qemu_cmd(a, qemu, true), Some(qemu_entry), false)?;
                s.first_entry_ms = traced.first_entry_ms;
                Ok(s)
            });
            record("qemu-microvm", run, result);
        }
    }
    if ok == 0 {
        bail!("no boot completed");
    }
    Ok(())
}

fn print_sample(name: &str, run: usize, s: &Sample) {
    let f = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.3}"));
    println!(
        "{RESULT}{name} run={run} first_entry_ms={} init_ms={} overhead_kib={}",
        f(s.first_entry_ms),
        f(s.init_ms),
        s.overhead_kib.map_or("-".into(), |v| v.to_string())
    );
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    Some(v[v.len() / 2])
}

/// Collected `@@BENCH` lines of one VMM.
#[derive(Default)]
struct Row {
    entry: Vec<f64>,
    init: Vec<f64>,
    overhead: Vec<f64>,
    failures: Vec<String>,
}

fn parse_rows(output: &str) -> std::collections::BTreeMap<String, Row> {
    let mut rows: std::collections::BTreeMap<String, Row> = Default::default();
    for line in output.lines() {
        if let Some(rest) = line.strip_prefix(FAILED) {
            let (name, why) = rest.split_once(' ').unwrap_or((rest, ""));
            rows.entry(name.to_string())
                .or_default()
                .failures
                .push(why.to_string());
            continue;
        }
        let Some(rest) = line.strip_prefix(RESULT) else {
            continue;
        };
        let mut words = rest.split_whitespace();
        let row = rows
            .entry(words.next().unwrap_or("?").to_string())
            .or_default();
        for w in words {
            let Some((k, v)) = w.split_once('=') else {
                continue;
            };
            let Ok(v) = v.parse::<f64>() else { continue };
            match k {
                "first_entry_ms" => row.entry.push(v),
                "init_ms" => row.init.push(v),
                "overhead_kib" => row.overhead.push(v),
                _ => {}
            }
        }
    }
    rows
}

fn print_table(mode: &str, runs: usize, output: &str) -> Result<()> {
    let rows = parse_rows(output);
    let get = |name: &str| {
        rows.get(name)
            .ok_or_else(|| anyhow!("no samples for {name}"))
    };
    let cocoon = get("cocoon-bzimage")?;
    let cocoon_elf = get("cocoon-vmlinux")?;
    let qemu = rows.get("qemu-microvm");
    let ms = |v: Option<f64>| v.map_or("n/a".into(), |v| format!("{v:.1} ms"));
    let mib = |v: Option<f64>| v.map_or("n/a".into(), |v| format!("{:.1} MiB", v / 1024.0));
    println!();
    println!("cocoon boot benchmark — {mode}; median of {runs} runs; 1 vCPU, {GUEST_MEMORY_MIB} MiB, same kernel and initramfs");
    println!(
        "| {:<28} | {:>24} | {:>20} | {:>24} |",
        "VMM", "exec → first vCPU entry", "exec → guest /init", "VMM RSS − guest memory"
    );
    println!("|{:-<30}|{:->26}|{:->22}|{:->26}|", "", "", "", "");
    let line = |name: &str, r: &Row| {
        println!(
            "| {:<28} | {:>24} | {:>20} | {:>24} |",
            name,
            ms(median(r.entry.clone())),
            ms(median(r.init.clone())),
            mib(median(r.overhead.clone()))
        );
    };
    line("cocoon-vmm (bzImage)", cocoon);
    line("cocoon-vmm (ELF vmlinux)", cocoon_elf);
    if let Some(q) = qemu {
        line("qemu -M microvm (bzImage)", q);
        let ratio = |a: &[f64], b: &[f64]| match (median(a.to_vec()), median(b.to_vec())) {
            (Some(a), Some(b)) if b > 0.0 => format!("{:.2}x", a / b),
            _ => "n/a".into(),
        };
        println!(
            "| {:<28} | {:>24} | {:>20} | {:>24} |",
            "qemu ÷ cocoon (bzImage)",
            ratio(&q.entry, &cocoon.entry),
            ratio(&q.init, &cocoon.init),
            ratio(&q.overhead, &cocoon.overhead)
        );
    } else {
        println!("(qemu-system-x86_64 not found: no qemu row)");
    }
    for (name, row) in &rows {
        for why in &row.failures {
            println!("FAILED boot of {name}: {why}");
        }
    }
    println!("Published anchors (not measured here): Firecracker InstanceStart → /sbin/init ≤ 125 ms, VMM overhead ≤ 5 MiB; Kata CLH/QEMU boot-to-workload 0.39 s / 0.71 s.");
    Ok(())
}

/// Where the guest cannot boot but /dev/kvm works (a paravirtual KVM such as PVM), the VMMs' own
/// start-up cost — exec → first KVM_RUN — can still be measured natively, side by side.
fn native_start_table(a: &MeasureArgs) -> Result<()> {
    let mut cocoon = Row::default();
    let mut qemu_row = Row::default();
    for _ in 0..a.runs {
        let s = measure_boot(cocoon_cmd(a, &a.kernel), Some(cocoon_entry), false)?;
        cocoon.entry.extend(s.first_entry_ms);
        if let Some(q) = &a.qemu {
            let s = measure_boot(qemu_cmd(a, q, true), Some(qemu_entry), false)?;
            qemu_row.entry.extend(s.first_entry_ms);
        }
    }
    let ms = |v: Option<f64>| v.map_or("n/a".into(), |v| format!("{v:.1} ms"));
    println!();
    println!("VMM start-up on this host's own /dev/kvm (not hardware-backed: the guest cannot boot here, only exec → first vCPU entry is measured); median of {} runs", a.runs);
    println!("| {:<28} | {:>24} |", "VMM", "exec → first vCPU entry");
    println!("|{:-<30}|{:->26}|", "", "");
    let c = median(cocoon.entry.clone());
    println!("| {:<28} | {:>24} |", "cocoon-vmm (bzImage)", ms(c));
    if a.qemu.is_some() {
        let q = median(qemu_row.entry.clone());
        println!("| {:<28} | {:>24} |", "qemu -M microvm (bzImage)", ms(q));
        if let (Some(q), Some(c)) = (q, c) {
            println!(
                "| {:<28} | {:>24} |",
                "qemu ÷ cocoon",
                format!("{:.2}x", q / c)
            );
        }
    }
    Ok(())
}

fn find_qemu() -> Option<PathBuf> {
    [
        "/usr/bin/qemu-system-x86_64",
        "/usr/local/bin/qemu-system-x86_64",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.is_file())
}

fn find_runc() -> Option<PathBuf> {
    ["/usr/sbin/runc", "/usr/bin/runc"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
}

/// `measure-ctr` against a private containerd on this host; its output.
fn ctr_direct(vmm: &Path, guest: &cocoon_tests::artifacts::GuestImages) -> Result<String> {
    let scratch = tempfile::Builder::new()
        .prefix("cocoon-bench-ctr-")
        .tempdir()?;
    std::fs::write(
        scratch.path().join("image.tar"),
        cocoon_tests::images::pod_images_archive(),
    )?;
    let shim = workspace_binary("containerd-shim-cocoon-v2").map_err(anyhow::Error::msg)?;
    let me = std::env::current_exe()?.display().to_string();
    let mut cmd = Command::new("sh");
    // The tools by the names the script knows them by (CNI's plugins, runc, ip, the CRI driver).
    for tool in cocoon_tests::containerd::TOOLS {
        cmd.env(tool_env_name(Path::new(tool)), tool);
    }
    if let Ok(cri_pod) = workspace_binary("cocoon-cri-pod") {
        cmd.env("COCOON_CRI_POD", cri_pod);
    }
    let out = cmd
        .arg("-c")
        .arg(cocoon_tests::container_bench::ctr_script(&me))
        .current_dir(scratch.path())
        .env("COCOON_VMM", vmm)
        .env("GUEST_BZIMAGE", &guest.bzimage)
        .env("GUEST_INITRD", &guest.initrd)
        .env("COCOON_FILES", scratch.path())
        .env("CONTAINERD_SHIM_COCOON_V2", shim)
        .output()?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `cocoon-bench --containerd`: only the containerd table.
fn containerd_main() -> Result<()> {
    if !cocoon_tests::containerd::installed() {
        bail!("containerd and ctr are not installed (make deps installs them)");
    }
    let vmm = workspace_binary("cocoon-vmm").map_err(anyhow::Error::msg)?;
    let guest = guest_images().map_err(anyhow::Error::msg)?;
    let (mode, tools) = choose_mode()?;
    let (name, output) = match mode {
        KvmMode::Direct => (
            "direct KVM (hardware virtualization)",
            ctr_direct(&vmm, &guest)?,
        ),
        KvmMode::EmulatedHost => (
            "emulated KVM host (qemu TCG -cpu max, nested SVM)",
            ctr_in_emulated_host(tools.expect("tools"), &vmm, &guest)?,
        ),
    };
    cocoon_tests::container_bench::print_ctr_table(name, &output);
    cocoon_tests::network_bench::print_pod_table(name, &output);
    Ok(())
}

/// `measure-ctr` inside an emulated host that can run containerd; its output.
fn ctr_in_emulated_host(
    tools: cocoon_emuhost::HostTools,
    vmm: &Path,
    guest: &cocoon_tests::artifacts::GuestImages,
) -> Result<String> {
    let files = vec![cocoon_tests::suite::SuiteFile {
        name: "image.tar".into(),
        contents: cocoon_tests::images::pod_images_archive(),
    }];
    let mut host = cocoon_host(tools, &guest.cocoon_files(vmm), files)?;
    host.meet(&cocoon_tests::containerd::host_needs())?;
    for tool in cocoon_tests::containerd::TOOLS {
        let in_host = host.add_binary(Path::new(tool))?;
        host.set_env(&tool_env_name(Path::new(tool)), &in_host);
    }
    let cri_pod = workspace_binary("cocoon-cri-pod").map_err(anyhow::Error::msg)?;
    let cri_pod_in_host = host.add_binary(&cri_pod)?;
    host.set_env("COCOON_CRI_POD", &cri_pod_in_host);
    let shim = workspace_binary("containerd-shim-cocoon-v2").map_err(anyhow::Error::msg)?;
    let shim_in_host = host.add_binary(&shim)?;
    host.set_env("CONTAINERD_SHIM_COCOON_V2", &shim_in_host);
    let me = host.add_binary(&std::env::current_exe()?)?;
    let script = format!(
        "mkdir -p /tmp/ctr-bench && cd /tmp/ctr-bench || exit 1\n{}",
        cocoon_tests::container_bench::ctr_script(&me)
    );
    let finished = host.run(&script, Duration::from_secs(900), |line, _| {
        if line.starts_with("@@METRIC") || line.starts_with("@@CASE") {
            eprintln!("{line}");
        }
    })?;
    if !finished.output.contains(SCRIPT_EXIT) {
        let tail: Vec<&str> = finished.output.lines().rev().take(30).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        bail!("the emulated host did not finish:\n{}", tail.join("\n"));
    }
    Ok(finished.output)
}

fn host_main(runs: usize) -> Result<()> {
    let vmm = workspace_binary("cocoon-vmm").map_err(anyhow::Error::msg)?;
    let guest = guest_images().map_err(anyhow::Error::msg)?;
    let (mode, tools) = choose_mode()?;
    let qemu = find_qemu();
    match mode {
        KvmMode::Direct => {
            let args = MeasureArgs {
                vmm,
                qemu,
                kernel: guest.bzimage.clone(),
                vmlinux: guest.vmlinux.clone(),
                initrd: guest.initrd.clone(),
                runs,
            };
            let exe = std::env::current_exe()?;
            let mut cmd = Command::new(exe);
            cmd.arg("measure")
                .arg(&args.vmm)
                .arg(args.qemu.as_deref().unwrap_or(Path::new("-")))
                .arg(&args.kernel)
                .arg(&args.vmlinux)
                .arg(&args.initrd)
                .arg(runs.to_string());
            let out = cmd.output()?;
            let text = String::from_utf8_lossy(&out.stdout).to_string();
            if !out.status.success() {
                bail!("measure failed: {}", String::from_utf8_lossy(&out.stderr));
            }
            print_table("direct KVM (hardware virtualization)", runs, &text)?;
            // Containers: the cocoon side, then runc, on this host.
            let scratch = tempfile::Builder::new().prefix("cocoon-bench-").tempdir()?;
            let rootfs = scratch.path().join("rootfs.ext4");
            std::fs::write(&rootfs, cocoon_tests::images::default_rootfs_image())?;
            let e2e = workspace_binary("cocoon-agent-e2e").map_err(anyhow::Error::msg)?;
            let mut output = String::from_utf8_lossy(
                &Command::new(e2e)
                    .arg(&args.vmm)
                    .arg(&args.kernel)
                    .arg(&args.initrd)
                    .arg(&rootfs)
                    .arg("--bench-only")
                    .output()?
                    .stdout,
            )
            .into_owned();
            if let Some(runc) = find_runc() {
                let out = Command::new(std::env::current_exe()?)
                    .arg("measure-runc")
                    .arg(runc)
                    .output()?;
                output.push_str(&String::from_utf8_lossy(&out.stdout));
            }
            // The launcher's measurements: this binary again, `cocoon run` finding its guest
            // and default image through the environment.
            let cocoon = workspace_binary("cocoon").map_err(anyhow::Error::msg)?;
            let runc = find_runc().unwrap_or_else(|| "-".into());
            let ip = ["/usr/sbin/ip", "/sbin/ip"]
                .into_iter()
                .map(PathBuf::from)
                .find(|p| p.exists())
                .unwrap_or_else(|| "-".into());
            for (measurement, ip) in [("measure-launcher", None), ("measure-network", Some(&ip))] {
                let out = Command::new(std::env::current_exe()?)
                    .arg(measurement)
                    .arg(&cocoon)
                    .arg(&runc)
                    .args(ip)
                    .env("COCOON_VMM", &args.vmm)
                    .env("COCOON_KERNEL", &args.kernel)
                    .env("COCOON_INITRD", &args.initrd)
                    .env("COCOON_DEFAULT_IMAGE", &rootfs)
                    .output()?;
                output.push_str(&String::from_utf8_lossy(&out.stdout));
            }
            if cocoon_tests::containerd::installed() {
                output.push_str(&ctr_direct(&args.vmm, &guest)?);
            }
            cocoon_tests::container_bench::print_table(
                "direct KVM (hardware virtualization)",
                &output,
            );
            cocoon_tests::network_bench::print_table(
                "direct KVM (hardware virtualization)",
                &output,
            );
            cocoon_tests::container_bench::print_ctr_table(
                "direct KVM (hardware virtualization)",
                &output,
            );
            cocoon_tests::network_bench::print_pod_table(
                "direct KVM (hardware virtualization)",
                &output,
            );
            Ok(())
        }
        KvmMode::EmulatedHost => {
            eprintln!("cocoon-bench: no vmx/svm here: measuring inside the emulated KVM host (qemu TCG, -cpu max); this takes a few minutes");
            let tools = tools.expect("tools");
            let rootfs = cocoon_tests::images::default_rootfs_image();
            let build = || -> Result<(cocoon_tests::emuhost::EmulatedHost, String)> {
                let files = vec![cocoon_tests::suite::SuiteFile {
                    name: "rootfs.ext4".into(),
                    contents: rootfs.clone(),
                }];
                let mut host = cocoon_host(tools.clone(), &guest.cocoon_files(&vmm), files)?;
                let me = host.add_binary(&std::env::current_exe()?)?;
                let e2e = workspace_binary("cocoon-agent-e2e").map_err(anyhow::Error::msg)?;
                let e2e_in_host = host.add_binary(&e2e)?;
                let cocoon = workspace_binary("cocoon").map_err(anyhow::Error::msg)?;
                let cocoon_in_host = host.add_binary(&cocoon)?;
                let runc_in_host = match find_runc() {
                    Some(runc) => host.add_binary(&runc)?,
                    None => "-".into(),
                };
                // `cocoon run`'s network (passt, which sandboxes itself with pivot_root: a real
                // root), and the runc side's veth.
                if let Some(passt) = Some(Path::new("/usr/bin/passt")).filter(|p| p.exists()) {
                    host.add_binary(passt)?;
                    host.real_root = true;
                }
                let ip_in_host = match ["/usr/sbin/ip", "/sbin/ip"]
                    .map(Path::new)
                    .into_iter()
                    .find(|p| p.exists())
                {
                    Some(ip) => {
                        host.add_module("drivers/net/veth.ko")?;
                        host.add_binary(ip)?
                    }
                    None => "-".into(),
                };
                let qemu_in_host = match &qemu {
                    Some(q) => {
                        let path = host.add_binary(q)?;
                        host.add_file("/usr/share/qemu/bios-microvm.bin", &microvm_firmware()?)?;
                        host.add_file(
                            "/usr/share/qemu/linuxboot_dma.bin",
                            Path::new("/usr/share/qemu/linuxboot_dma.bin"),
                        )?;
                        path
                    }
                    None => "-".into(),
                };
                let script = format!(
                    "{me} measure \"$COCOON_VMM\" {qemu_in_host} \"$GUEST_BZIMAGE\" \"$GUEST_VMLINUX\" \"$GUEST_INITRD\" {runs} || exit 1\n\
                     cp \"$COCOON_FILES/rootfs.ext4\" /tmp/rootfs.ext4\n\
                     for attempt in 1 2; do timeout 300 {e2e_in_host} \"$COCOON_VMM\" \"$GUEST_BZIMAGE\" \"$GUEST_INITRD\" /tmp/rootfs.ext4 --bench-only > /tmp/e2e.out 2>&1; \
                     grep -q 'guest crashed' /tmp/e2e.out || break; echo '@@CASE RETRIED: the guest crashed under the emulated host'; done; cat /tmp/e2e.out\n\
                     [ {runc_in_host} = - ] || {me} measure-runc {runc_in_host}\n\
                     export COCOON_KERNEL=\"$GUEST_BZIMAGE\" COCOON_INITRD=\"$GUEST_INITRD\" COCOON_DEFAULT_IMAGE=\"$COCOON_FILES/rootfs.ext4\"\n\
                     timeout 600 {me} measure-launcher {cocoon_in_host} {runc_in_host}\n\
                     timeout 300 {me} measure-network {cocoon_in_host} {runc_in_host} {ip_in_host}; true"
                );
                Ok((host, script))
            };
            // The emulated host's own kernel has been seen to panic under nested SVM (README
            // "Known faults"): then the whole measurement runs once more, and says so.
            let mut attempt = 1;
            let finished = loop {
                let (host, script) = build()?;
                let finished = host.run(&script, Duration::from_secs(1500), |line, _| {
                    if line.starts_with(RESULT)
                        || line.starts_with(FAILED)
                        || line.starts_with("@@METRIC")
                        || line.starts_with("@@CASE")
                    {
                        eprintln!("{line}");
                    }
                })?;
                if !finished.output.contains(SCRIPT_EXIT) && attempt == 1 {
                    let tail: Vec<&str> = finished.output.lines().rev().take(12).collect();
                    let tail: Vec<&str> = tail.into_iter().rev().collect();
                    eprintln!(
                        "cocoon-bench: RETRIED: the emulated host did not finish (README \"Known faults\"); end of its log:\n{}",
                        tail.join("\n")
                    );
                    attempt += 1;
                    continue;
                }
                break finished;
            };
            let status = finished
                .output
                .lines()
                .find_map(|l| l.strip_prefix(SCRIPT_EXIT))
                .map(str::trim);
            if status != Some("0") {
                let tail: Vec<&str> = finished.output.lines().rev().take(40).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                bail!(
                    "measuring in the emulated host failed:\n{}",
                    tail.join("\n")
                );
            }
            print_table(
                "emulated KVM host (qemu TCG -cpu max, nested SVM)",
                runs,
                &finished.output,
            )?;
            cocoon_tests::container_bench::print_table(
                "emulated KVM host (qemu TCG -cpu max, nested SVM)",
                &finished.output,
            );
            cocoon_tests::network_bench::print_table(
                "emulated KVM host (qemu TCG -cpu max, nested SVM)",
                &finished.output,
            );
            // containerd gets a host of its own (a tmpfs root, overlayfs, more memory), so that a
            // fault of the emulated host there cannot cost the figures above.
            let ctr_output = if cocoon_tests::containerd::installed() {
                ctr_in_emulated_host(tools, &vmm, &guest).unwrap_or_else(|e| {
                    eprintln!("cocoon-bench: containerd measurements failed: {e:#}");
                    String::new()
                })
            } else {
                String::new()
            };
            cocoon_tests::container_bench::print_ctr_table(
                "emulated KVM host (qemu TCG -cpu max, nested SVM)",
                &ctr_output,
            );
            cocoon_tests::network_bench::print_pod_table(
                "emulated KVM host (qemu TCG -cpu max, nested SVM)",
                &ctr_output,
            );
            if cocoon_tests::artifacts::dev_kvm_usable() {
                native_start_table(&MeasureArgs {
                    vmm,
                    qemu,
                    kernel: guest.bzimage.clone(),
                    vmlinux: guest.vmlinux.clone(),
                    initrd: guest.initrd.clone(),
                    runs: runs.max(5),
                })?;
            }
            Ok(())
        }
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("measure") if args.len() == 7 => {
            let qemu = (args[2] != "-").then(|| PathBuf::from(&args[2]));
            args[6]
                .parse()
                .map_err(|_| anyhow!("bad run count"))
                .and_then(|runs| {
                    measure(&MeasureArgs {
                        vmm: args[1].clone().into(),
                        qemu,
                        kernel: args[3].clone().into(),
                        vmlinux: args[4].clone().into(),
                        initrd: args[5].clone().into(),
                        runs,
                    })
                })
        }
        Some("measure-runc") if args.len() == 2 => {
            cocoon_tests::container_bench::measure_runc(Path::new(&args[1]))
        }
        Some("measure-ctr") if args.len() == 2 => {
            cocoon_tests::container_bench::measure_ctr(Path::new(&args[1]))
        }
        Some("measure-pod") if args.len() == 4 => {
            let given = |a: &String| (a != "-").then(|| PathBuf::from(a));
            cocoon_tests::network_bench::measure_pod(
                &args[1],
                given(&args[2]).as_deref(),
                given(&args[3]).as_deref(),
            )
        }
        Some("measure-network") if args.len() == 4 => {
            let given = |a: &String| (a != "-").then(|| PathBuf::from(a));
            cocoon_tests::network_bench::measure_network(
                Path::new(&args[1]),
                given(&args[2]).as_deref(),
                given(&args[3]).as_deref(),
            )
        }
        Some("measure-launcher") if args.len() == 3 => {
            cocoon_tests::container_bench::measure_launcher(
                Path::new(&args[1]),
                (args[2] != "-").then(|| Path::new(&args[2])),
            )
        }
        Some("--runs") => match args.get(1).and_then(|r| r.parse().ok()) {
            Some(runs) => host_main(runs),
            None => Err(anyhow!("usage: cocoon-bench [--runs N] | --containerd")),
        },
        Some("--containerd") if args.len() == 1 => containerd_main(),
        None => host_main(3),
        _ => Err(anyhow!("usage: cocoon-bench [--runs N] | --containerd")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cocoon-bench: error: {e:#}");
            ExitCode::from(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_qemu_trace_timestamps() {
        let t0 = 1_700_000_000_000_000_000u128;
        let line = "1234@1700000000.250000:kvm_vcpu_ioctl cpu_index 0, type 0xae80, arg (nil)";
        assert_eq!(qemu_entry(line, 0, t0), Some(250.0));
        assert_eq!(
            qemu_entry(
                "1@1.0:kvm_vcpu_ioctl cpu_index 0, type 0x4090ae82, arg 0x1",
                0,
                0
            ),
            None
        );
    }

    #[test]
    fn parses_cocoon_boot_timer() {
        let line = "cocoon-vmm: boot-timer first-vcpu-entry monotonic_ns=3000000";
        assert_eq!(cocoon_entry(line, 1_000_000, 0), Some(2.0));
        assert_eq!(cocoon_entry("other", 0, 0), None);
    }

    #[test]
    fn medians_ignore_missing_values() {
        assert_eq!(median(vec![3.0, f64::NAN, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![]), None);
    }
}
