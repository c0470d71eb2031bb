//! The network half of `cocoon-bench`: the same busybox httpd serving the same file, in a
//! `cocoon run` microVM (its `-p` port through passt) and in a runc container on a veth of its
//! own network namespace, fetched from the host: throughput guest → host and the round trip of a
//! small request. Each side prints `@@METRIC` lines; [`print_table`] lines them up.
//!
//! cocoon's tap path, a CRI pod's (its guest on a tap joined to CNI's veth), is measured in the
//! benchmark's containerd host instead, against the same runc container there ([`measure_pod`],
//! [`print_pod_table`]).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use cocoon_sandbox::spec::{container_spec, ProcessOptions};
use oci_spec::runtime::{LinuxNamespaceBuilder, LinuxNamespaceType};

use crate::container_bench::{header, metrics, row, METRIC};

/// The file fetched for throughput, in /dev/shm (64 MiB): the default image's root has room for
/// about 11 MiB.
const BIG_MIB: usize = 16;
/// Small requests timed for the round trip.
const ROUND_TRIPS: usize = 20;
/// How long a server may take to answer its first request.
const SERVER_START: Duration = Duration::from_secs(90);
const COCOON_PORT: u16 = 18090;
const NETNS: &str = "cocoon-bench-net";
const RUNC_ADDRESS: &str = "10.77.0.2";

/// The server, the same on every side.
pub fn server_command() -> Vec<String> {
    let script = format!(
        "mkdir -p /dev/shm/www && dd if=/dev/zero of=/dev/shm/www/big bs=1M count={BIG_MIB} \
         2>/dev/null && echo ok > /dev/shm/www/small && exec httpd -f -p 80 -h /dev/shm/www"
    );
    ["sh", "-c", &script].map(String::from).to_vec()
}

/// `GET path` over HTTP/1.0: the body's length.
fn get(address: SocketAddr, path: &str) -> std::io::Result<usize> {
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    stream.write_all(format!("GET /{path} HTTP/1.0\r\n\r\n").as_bytes())?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer)?;
    let body = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(0, |at| answer.len() - at - 4);
    Ok(body)
}

/// Waits until the server answers `/small`, then prints `NAME_http_throughput` and
/// `NAME_http_round_trip`.
fn measure_server(name: &str, address: SocketAddr) -> Result<()> {
    let deadline = Instant::now() + SERVER_START;
    loop {
        match get(address, "small") {
            Ok(3) => break,
            result if Instant::now() > deadline => {
                bail!("{name}: the server at {address} never answered: {result:?}")
            }
            _ => std::thread::sleep(Duration::from_millis(300)),
        }
    }
    let started = Instant::now();
    let bytes = get(address, "big")?;
    let secs = started.elapsed().as_secs_f64();
    if bytes != BIG_MIB << 20 {
        bail!("{name}: {bytes} bytes of {} came back", BIG_MIB << 20);
    }
    println!(
        "{METRIC}{name}_http_throughput {:.1} MiB/s",
        BIG_MIB as f64 / secs
    );
    let mut trips = Vec::new();
    for _ in 0..ROUND_TRIPS {
        let started = Instant::now();
        get(address, "small")?;
        trips.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    trips.sort_by(f64::total_cmp);
    println!(
        "{METRIC}{name}_http_round_trip {:.2} ms",
        trips[ROUND_TRIPS / 2]
    );
    Ok(())
}

/// Runs `cmd`, failing with its stderr when it fails.
fn run(cmd: &mut Command) -> Result<()> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// The cocoon side: `cocoon run -d -p` (passt), measured, then removed.
fn measure_cocoon(cocoon: &Path) -> Result<()> {
    let root = tempfile::Builder::new()
        .prefix("cocoon-bench-root-")
        .tempdir()?;
    let cocoon = || {
        let mut cmd = Command::new(cocoon);
        cmd.arg("--root").arg(root.path());
        cmd
    };
    run(cocoon()
        .args(["run", "-d", "--name", "netbench", "-p"])
        .arg(format!("127.0.0.1:{COCOON_PORT}:80"))
        .args(["default", "--"])
        .args(server_command()))?;
    let measured = measure_server("cocoon_passt", ([127, 0, 0, 1], COCOON_PORT).into());
    let removed = run(cocoon().args(["rm", "-f", "netbench"]));
    measured.and(removed)
}

/// The runc side: a namespace with a veth to this one, the container in it, measured, then all
/// of it removed.
fn measure_runc(runc: &Path, ip: &Path) -> Result<()> {
    let ip = |args: &str| run(Command::new(ip).args(args.split_whitespace()));
    ip(&format!("netns add {NETNS}"))?;
    let measured = (|| {
        ip(&format!(
            "link add bench-host type veth peer name eth0 netns {NETNS}"
        ))?;
        ip("addr add 10.77.0.1/24 dev bench-host")?;
        ip("link set bench-host up")?;
        ip(&format!("-n {NETNS} addr add {RUNC_ADDRESS}/24 dev eth0"))?;
        ip(&format!("-n {NETNS} link set eth0 up"))?;
        ip(&format!("-n {NETNS} link set lo up"))?;
        let dir = tempfile::Builder::new()
            .prefix("cocoon-runc-net-")
            .tempdir()?;
        let bundle = dir.path();
        cocoon_guest_image::rootfs::busybox_rootfs(
            &bundle.join("rootfs"),
            Path::new("/bin/busybox"),
        )?;
        let options = ProcessOptions {
            args: server_command(),
            ..Default::default()
        };
        // A writable root: the server writes its files.
        let mut spec = container_spec(&options, "bench", false);
        let mut linux = spec.linux().clone().unwrap_or_default();
        let mut namespaces = linux.namespaces().clone().unwrap_or_default();
        namespaces.retain(|n| n.typ() != LinuxNamespaceType::Network);
        namespaces.push(
            LinuxNamespaceBuilder::default()
                .typ(LinuxNamespaceType::Network)
                .path(format!("/run/netns/{NETNS}"))
                .build()?,
        );
        linux.set_namespaces(Some(namespaces));
        spec.set_linux(Some(linux));
        spec.save(bundle.join("config.json"))
            .context("writing config.json")?;
        run(Command::new(runc)
            .args(["run", "--no-pivot", "-d", "-b"])
            .arg(bundle)
            .arg("bench-net")
            .stdout(Stdio::null())
            .stderr(Stdio::null()))?;
        let address = SocketAddr::from((RUNC_ADDRESS.parse::<std::net::Ipv4Addr>()?, 80));
        let measured = measure_server("runc_veth", address);
        let _ = run(Command::new(runc).args(["delete", "-f", "bench-net"]));
        measured
    })();
    let _ = ip("link del bench-host");
    let _ = ip(&format!("netns del {NETNS}"));
    measured
}

/// The runc side, unless runc or ip is missing (said on a `@@CASE` line, as a failure is).
fn measure_runc_side(runc: Option<&Path>, ip: Option<&Path>) {
    match (runc, ip) {
        (Some(runc), Some(ip)) => {
            if let Err(e) = measure_runc(runc, ip) {
                println!("@@CASE network-runc FAIL {e:#}");
            }
        }
        _ => println!("@@CASE network-runc skipped: no runc or no ip here"),
    }
}

/// A CRI pod's server at `ip` (cocoon's tap path), then the runc side in the same host; a side
/// that fails says why on a `@@CASE` line and leaves its rows FAILED.
pub fn measure_pod(ip: &str, runc: Option<&Path>, ip_tool: Option<&Path>) -> Result<()> {
    let address = ip
        .parse::<std::net::Ipv4Addr>()
        .map(|ip| SocketAddr::from((ip, 80)));
    match address {
        Ok(address) => {
            if let Err(e) = measure_server("cocoon_tap", address) {
                println!("@@CASE network-pod FAIL {e:#}");
            }
        }
        Err(_) => println!("@@CASE network-pod FAIL no pod address ({ip:?})"),
    }
    measure_runc_side(runc, ip_tool);
    Ok(())
}

/// Both sides; a side that fails says why on a `@@CASE` line (which the benchmark shows from
/// inside the emulated host too) and leaves its rows FAILED.
pub fn measure_network(cocoon: &Path, runc: Option<&Path>, ip: Option<&Path>) -> Result<()> {
    if let Err(e) = measure_cocoon(cocoon) {
        println!("@@CASE network-cocoon FAIL {e:#}");
    }
    measure_runc_side(runc, ip);
    Ok(())
}

/// A network table: `title`, then cocoon's side (metrics named `cocoon_NAME_…`, shown as
/// `label`) against runc's veth, from the metric lines in `output`.
fn print_network_table(title: &str, name: &str, label: &str, output: &str) {
    let m = metrics(output);
    let get = |k: &str| m.get(k).cloned().unwrap_or_else(|| "FAILED".into());
    println!();
    println!("{title}");
    header(label, "runc (veth)");
    row(
        format!("HTTP GET of {BIG_MIB} MiB, container → host"),
        get(&format!("cocoon_{name}_http_throughput")),
        get("runc_veth_http_throughput"),
    );
    row(
        format!("HTTP round trip, small file (median of {ROUND_TRIPS})"),
        get(&format!("cocoon_{name}_http_round_trip")),
        get("runc_veth_http_round_trip"),
    );
}

/// The network table from both sides' metric lines.
pub fn print_table(mode: &str, output: &str) {
    print_network_table(
        &format!("network — {mode}; busybox httpd in the container, fetched from the host; cocoon: `cocoon run -d -p` (a microVM, virtio-net to passt); runc: a veth into the container's namespace"),
        "passt",
        "cocoon (passt)",
        output,
    );
}

/// The CRI pod's network table (the containerd host's metric lines): cocoon's tap path against
/// runc's veth in the same host.
pub fn print_pod_table(mode: &str, output: &str) {
    print_network_table(
        &format!("network, CRI pod — {mode}; the same server fetched from the host; cocoon: a pod through containerd's CRI with CNI's bridge (its microVM on a tap, tc-redirected to the pod's veth); runc: a veth into the container's namespace, in the same host"),
        "tap",
        "cocoon (tap)",
        output,
    );
}
