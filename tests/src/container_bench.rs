//! The container half of `cocoon-bench`: the same busybox container run by cocoon (a microVM, the
//! agent over vsock) and by runc on the same host, side by side. Each side prints `@@METRIC` lines;
//! [`print_table`] lines them up.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use cocoon_sandbox::spec::{container_spec, ProcessOptions};

pub const METRIC: &str = "@@METRIC ";
const RUNS: usize = 5;
const BULK_BYTES: usize = 64 << 20;

fn args(a: &[&str]) -> ProcessOptions {
    ProcessOptions {
        args: a.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

fn write_bundle(bundle: &Path, options: &ProcessOptions) -> Result<()> {
    let spec = container_spec(options, "bench", true);
    spec.save(bundle.join("config.json"))
        .context("writing config.json")?;
    Ok(())
}

/// Makes sure a cgroup v2 hierarchy is mounted where runc looks for it.
fn ensure_cgroup2() -> Result<()> {
    if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        return Ok(());
    }
    std::fs::create_dir_all("/sys/fs/cgroup")?;
    let status = Command::new("mount")
        .args(["-t", "cgroup2", "none", "/sys/fs/cgroup"])
        .status()?;
    if !status.success() {
        bail!("mounting cgroup2 at /sys/fs/cgroup failed");
    }
    Ok(())
}

/// `runc run` of the bundle: (bytes the container wrote to stdout, wall seconds).
fn runc_run(runc: &Path, bundle: &Path, id: &str) -> Result<(usize, f64)> {
    let started = Instant::now();
    let mut child = Command::new(runc)
        // The emulated host runs from its initramfs, where pivot_root cannot work.
        .args(["run", "--no-pivot", "-b"])
        .arg(bundle)
        .arg(id)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting runc")?;
    let mut stdout = child.stdout.take().context("no stdout")?;
    let mut buf = vec![0u8; 1 << 16];
    let mut total = 0;
    loop {
        let n = stdout.read(&mut buf)?;
        if n == 0 {
            break;
        }
        total += n;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "runc run failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok((total, started.elapsed().as_secs_f64()))
}

/// Resident memory (KiB) of `root` and all its descendants now, from /proc.
fn tree_rss_kib(root: u32) -> u64 {
    let mut parents = Vec::new();
    let mut rss = BTreeMap::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(status) = std::fs::read_to_string(entry.path().join("status")) else {
            continue;
        };
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        };
        if let Some(ppid) = field("PPid:") {
            parents.push((pid, ppid as u32));
        }
        rss.insert(pid, field("VmRSS:").unwrap_or(0));
    }
    let mut tree = vec![root];
    let mut grew = true;
    while grew {
        grew = false;
        for (pid, ppid) in &parents {
            if tree.contains(ppid) && !tree.contains(pid) {
                tree.push(*pid);
                grew = true;
            }
        }
    }
    tree.iter().map(|p| rss.get(p).copied().unwrap_or(0)).sum()
}

/// Runs `cmd` to the end, sampling its process tree's memory: (wall seconds, peak RSS in KiB).
pub fn measure_tree(mut cmd: Command) -> Result<(f64, u64)> {
    let started = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting the measured command")?;
    let mut peak = 0;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        peak = peak.max(tree_rss_kib(child.id()));
        std::thread::sleep(std::time::Duration::from_millis(5));
    };
    let secs = started.elapsed().as_secs_f64();
    if !status.success() {
        let mut err = String::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = e.read_to_string(&mut err);
        }
        bail!("{cmd:?} failed ({status}): {err}");
    }
    Ok((secs, peak))
}

fn median(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

/// RUNS runs of the command `make(i)` builds: median wall milliseconds and peak RSS in MiB.
fn sampled(mut make: impl FnMut(usize) -> Command) -> Result<(f64, f64)> {
    let (mut walls, mut peaks) = (Vec::new(), Vec::new());
    for i in 0..RUNS {
        let (secs, peak) = measure_tree(make(i))?;
        walls.push(secs * 1000.0);
        peaks.push(peak as f64 / 1024.0);
    }
    Ok((median(walls), median(peaks)))
}

/// `cocoon run --rm default -- true` and `runc run` of the same busybox tree, each RUNS times:
/// wall time and the peak resident memory of everything each started on the host. The launcher
/// finds its kernel, initramfs and default image through COCOON_KERNEL, COCOON_INITRD and
/// COCOON_DEFAULT_IMAGE.
pub fn measure_launcher(cocoon: &Path, runc: Option<&Path>) -> Result<()> {
    let root = tempfile::Builder::new()
        .prefix("cocoon-bench-root-")
        .tempdir()?;
    let (wall, rss) = sampled(|_| {
        let mut cmd = Command::new(cocoon);
        cmd.arg("--root")
            .arg(root.path())
            .args(["run", "--rm", "default", "--", "true"]);
        cmd
    })?;
    println!("{METRIC}launcher_run_true {wall:.0} ms");
    println!("{METRIC}launcher_peak_rss {rss:.1} MiB");
    let Some(runc) = runc else {
        return Ok(());
    };
    ensure_cgroup2()?;
    let dir = tempfile::Builder::new().prefix("cocoon-runc-").tempdir()?;
    let bundle = dir.path();
    cocoon_guest_image::rootfs::busybox_rootfs(&bundle.join("rootfs"), Path::new("/bin/busybox"))?;
    write_bundle(bundle, &args(&["true"]))?;
    let (wall, rss) = sampled(|i| {
        let mut cmd = Command::new(runc);
        cmd.args(["run", "--no-pivot", "-b"])
            .arg(bundle)
            .arg(format!("bench-launcher-{i}"));
        cmd
    })?;
    println!("{METRIC}runc_run_true {wall:.0} ms");
    println!("{METRIC}runc_peak_rss {rss:.1} MiB");
    Ok(())
}

/// Runs the runc side (inside the emulated host, or directly) and prints its metrics.
pub fn measure_runc(runc: &Path) -> Result<()> {
    ensure_cgroup2()?;
    let dir = tempfile::Builder::new().prefix("cocoon-runc-").tempdir()?;
    let bundle = dir.path();
    cocoon_guest_image::rootfs::busybox_rootfs(&bundle.join("rootfs"), Path::new("/bin/busybox"))?;

    write_bundle(bundle, &args(&["true"]))?;
    let mut samples = Vec::new();
    for i in 0..RUNS {
        let (_, secs) = runc_run(runc, bundle, &format!("bench-true-{i}"))?;
        samples.push(secs * 1000.0);
    }
    samples.sort_by(f64::total_cmp);
    println!(
        "{METRIC}runc_container_run_true {:.0} ms",
        samples[RUNS / 2]
    );

    write_bundle(
        bundle,
        &args(&["sh", "-c", "yes 0123456789abcde | head -c 67108864"]),
    )?;
    let (bytes, secs) = runc_run(runc, bundle, "bench-bulk")?;
    if bytes != BULK_BYTES {
        bail!("runc container wrote {bytes} bytes, expected {BULK_BYTES}");
    }
    println!(
        "{METRIC}runc_stdout_throughput {:.1} MiB/s",
        BULK_BYTES as f64 / (1 << 20) as f64 / secs
    );
    Ok(())
}

/// The daemon of the shim binary `shim` that serves container `id` (`... -id ID ...`).
fn shim_serving(shim: &str, id: &str) -> Option<u32> {
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .find_map(|entry| {
            let pid = entry.file_name().to_string_lossy().parse::<u32>().ok()?;
            let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
            let args: Vec<String> = cmdline
                .split(|b| *b == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            let is_shim = Path::new(args.first()?).file_name()? == shim;
            let serves = args.windows(2).any(|w| w[0] == "-id" && w[1] == id);
            (is_shim && serves).then_some(pid)
        })
}

/// Through the containerd listening on `address` (the test image imported, in namespace
/// `cocoon-test`), for cocoon's shim and runc's: `ctr run --rm IMAGE ID echo hello`, RUNS times
/// (wall time of ctr), and the resident memory of one idle container's shim and everything under
/// it (for cocoon, the VMM with the guest memory it touched; for runc, the container's process).
pub fn measure_ctr(address: &Path) -> Result<()> {
    let ctr = |args: &[&str]| {
        let mut cmd = Command::new("ctr");
        cmd.arg("--address")
            .arg(address)
            .args(["--namespace", "cocoon-test"])
            .args(args);
        cmd
    };
    let image = crate::containerd::IMAGE;
    for (name, runtime, shim) in [
        (
            "cocoon",
            "io.containerd.cocoon.v2",
            "containerd-shim-cocoon-v2",
        ),
        ("runc", "io.containerd.runc.v2", "containerd-shim-runc-v2"),
    ] {
        let (wall, _) = sampled(|i| {
            let id = format!("bench-{name}-{i}");
            ctr(&[
                "run",
                "--rm",
                "--runtime",
                runtime,
                image,
                &id,
                "echo",
                "hello",
            ])
        })?;
        println!("{METRIC}ctr_run_echo_{name} {wall:.0} ms");

        let id = format!("bench-{name}-idle");
        let started = ctr(&[
            "run",
            "-d",
            "--runtime",
            runtime,
            image,
            &id,
            "sleep",
            "1000",
        ])
        .stdin(Stdio::null())
        .output()?;
        if !started.status.success() {
            bail!(
                "ctr run -d with {runtime}: {}",
                String::from_utf8_lossy(&started.stderr)
            );
        }
        // Let the just-started container settle before reading its footprint.
        std::thread::sleep(std::time::Duration::from_secs(2));
        let rss = shim_serving(shim, &id).map(tree_rss_kib);
        let _ = ctr(&["task", "rm", "-f", &id]).output();
        let _ = ctr(&["containers", "rm", &id]).output();
        let rss = rss.with_context(|| format!("no {shim} serves {id}"))?;
        println!("{METRIC}ctr_idle_rss_{name} {:.1} MiB", rss as f64 / 1024.0);
    }
    Ok(())
}

/// Shell that starts a private containerd (its CRI on) in the current directory, imports
/// `$COCOON_FILES/image.tar` and runs `BENCH measure-ctr` against it (`bench` is the path of
/// cocoon-bench where the script runs); then, with `$COCOON_CRI_POD` and CNI's plugins there, a
/// pod with a network of its own for `BENCH measure-pod` (with `$RUNC` and `$IP` for runc's side).
pub fn ctr_script(bench: &str) -> String {
    format!(
        r#"export COCOON_CRI_SANDBOX={pause}
{setup}
c images import "$COCOON_FILES/image.tar" > /dev/null && {bench} measure-ctr "$containerd_sock"
# cocoon's tap path: a CRI pod with CNI's network (cocoon-cri-pod), then runc's veth, both here.
if [ -n "${{COCOON_CRI_POD:-}}" ] && [ -x cni/bin/bridge ]; then
  ctr --address "$containerd_sock" --namespace k8s.io images import "$COCOON_FILES/image.tar" > cri-import.out 2>&1 \
    || echo "@@CASE network-pod FAIL importing the images for CRI: $(tail -n 2 cri-import.out | tr '\n' ' ')"
  up=$(timeout 300 "$COCOON_CRI_POD" --bench-up "$containerd_sock" cocoon {image} 2>&1)
  pod=$(echo "$up" | sed -n 's/^bench-pod=//p'); ip=$(echo "$up" | sed -n 's/^bench-pod-ip=//p')
  [ -n "$pod" ] || echo "@@CASE network-pod FAIL $(echo "$up" | tail -n 3 | tr '\n' ' ')"
  timeout 300 {bench} measure-pod "${{ip:--}}" "${{RUNC:--}}" "${{IP:--}}"
  [ -z "$pod" ] || timeout 120 "$COCOON_CRI_POD" --bench-down "$containerd_sock" "$pod" > /dev/null
else
  echo "@@CASE network-pod skipped: no cocoon-cri-pod or no CNI plugins here"
fi
stop_containerd
"#,
        setup = crate::containerd::SETUP,
        pause = crate::containerd::PAUSE_IMAGE,
        image = crate::containerd::IMAGE,
    )
}

pub fn metrics(output: &str) -> BTreeMap<String, String> {
    output
        .lines()
        .filter_map(|l| l.strip_prefix(METRIC))
        .filter_map(|l| {
            let (name, value) = l.split_once(' ')?;
            Some((name.to_string(), value.to_string()))
        })
        .collect()
}

/// A table's header: an empty label column and the two sides.
pub fn header(left: &str, right: &str) {
    println!("| {:<44} | {:>18} | {:>18} |", "", left, right);
    println!("|{:-<46}|{:->20}|{:->20}|", "", "", "");
}

/// One row of a side-by-side table.
pub fn row(
    label: impl std::fmt::Display,
    left: impl std::fmt::Display,
    right: impl std::fmt::Display,
) {
    println!(
        "| {:<44} | {:>18} | {:>18} |",
        label.to_string(),
        left,
        right
    );
}

/// The side-by-side table from both sides' metric lines.
pub fn print_table(mode: &str, output: &str) {
    let m = metrics(output);
    let get = |k: &str| m.get(k).cloned().unwrap_or_else(|| "FAILED".into());
    println!();
    let vcpus = get("vcpus");
    println!("containers — {mode}; busybox rootfs, same OCI spec; cocoon: one microVM ({vcpus} vCPU, 256 MiB), agent over vsock; runc: on the same host");
    header("cocoon", "runc");
    row(
        "VMM start → agent answering",
        get("agent_ready"),
        "n/a (no VM)",
    );
    row(
        format!("create+start+exit of `true` (median of {RUNS})"),
        get("container_run_true"),
        get("runc_container_run_true"),
    );
    row(
        "stdout throughput, 64 MiB",
        get("stdout_throughput"),
        get("runc_stdout_throughput"),
    );
    println!();
    println!("launcher — {mode}; `cocoon run --rm default -- true` (a microVM: 1 vCPU, 256 MiB) vs `runc run` of the same busybox tree, median of {RUNS}");
    header("cocoon run", "runc run");
    row(
        "wall time, command start → exit",
        get("launcher_run_true"),
        get("runc_run_true"),
    );
    row(
        "peak host RSS of everything it started",
        get("launcher_peak_rss"),
        get("runc_peak_rss"),
    );
}

/// The containerd table (`ctr run` through both runtimes) from [`measure_ctr`]'s metric lines.
pub fn print_ctr_table(mode: &str, output: &str) {
    let m = metrics(output);
    let get = |k: &str| m.get(k).cloned().unwrap_or_else(|| "FAILED".into());
    if !crate::containerd::installed() {
        println!();
        println!("containerd — not measured: containerd and ctr are not installed (make deps installs them)");
        return;
    }
    println!();
    println!("containerd — {mode}; Debian's containerd 1.6 + ctr, the same imported busybox image; cocoon: io.containerd.cocoon.v2 (a microVM: 1 vCPU, 256 MiB); runc: io.containerd.runc.v2");
    header("cocoon", "runc");
    row(
        format!("`ctr run --rm ... echo hello` (median of {RUNS})"),
        get("ctr_run_echo_cocoon"),
        get("ctr_run_echo_runc"),
    );
    row(
        "RSS of an idle container's shim tree",
        get("ctr_idle_rss_cocoon"),
        get("ctr_idle_rss_runc"),
    );
}
