//! Debian's containerd (1.6) drives `containerd-shim-cocoon-v2` through `ctr`, for real: the shim's
//! start protocol (address on stdout), Create (rootfs from containerd's overlay snapshot, a VM per
//! sandbox), stdio through containerd's FIFOs, Delete (and the shim's `delete` clean-up), and
//! nothing left behind. Where this CPU has hardware virtualization the container runs and prints;
//! where it has none (like the machines this is built on) the shim refuses Create with its one-line
//! reason, which must reach `ctr`, and everything must still be cleaned up. Running containers under
//! containerd inside the emulated KVM host is not wired yet (see README).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use cocoon_tests::artifacts::workspace_binary;
use cocoon_tests::suite::{e2e_required, report_skip};

const NAMESPACE: &str = "cocoon-test";
const IMAGE: &str = "docker.io/library/cocoon-test:latest";
const SHIM: &str = "containerd-shim-cocoon-v2";

struct Containerd {
    dir: tempfile::TempDir,
    daemon: Child,
    socket: PathBuf,
}

fn has_hardware_virtualization() -> bool {
    std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .split_whitespace()
        .any(|f| f == "vmx" || f == "svm")
}

/// Processes running the binary `name` (by the file name of their argv[0]).
fn processes_named(name: &str) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let pid = e.file_name().to_string_lossy().parse().ok()?;
            let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
            let argv0 = cmdline.split(|b| *b == 0).next()?;
            let argv0 =
                Path::new(<std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(argv0));
            (argv0.file_name()? == name).then_some(pid)
        })
        .collect()
}

fn mounts_under(dir: &Path) -> Vec<String> {
    let needle = dir.display().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4).map(str::to_string))
        .filter(|m| m.starts_with(&needle))
        .collect()
}

impl Containerd {
    fn start(shim_dir: &Path) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("cocoon-containerd-")
            .tempdir()
            .unwrap();
        let socket = dir.path().join("containerd.sock");
        let config = dir.path().join("config.toml");
        std::fs::write(
            &config,
            format!(
                "version = 2\nroot = \"{root}\"\nstate = \"{state}\"\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n[grpc]\n  address = \"{sock}\"\n[ttrpc]\n  address = \"{sock}.ttrpc\"\n",
                root = dir.path().join("root").display(),
                state = dir.path().join("state").display(),
                sock = socket.display(),
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.path().join("containerd.log")).unwrap();
        let path = format!(
            "{}:{}",
            shim_dir.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let daemon = Command::new("containerd")
            .arg("--config")
            .arg(&config)
            .env("PATH", path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting containerd");
        let started = Instant::now();
        while !socket.exists() && started.elapsed() < Duration::from_secs(20) {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(
            socket.exists(),
            "containerd did not come up:\n{}",
            std::fs::read_to_string(dir.path().join("containerd.log")).unwrap_or_default()
        );
        Self {
            dir,
            daemon,
            socket,
        }
    }

    fn ctr(&self, args: &[&str]) -> Output {
        Command::new("ctr")
            .arg("--address")
            .arg(&self.socket)
            .arg("--namespace")
            .arg(NAMESPACE)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("running ctr")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        // SAFETY: kill(2) of the containerd we started and have not reaped.
        unsafe { libc::kill(self.daemon.id() as i32, libc::SIGTERM) };
        let _ = self.daemon.wait();
        for mount in mounts_under(self.dir.path()).iter().rev() {
            let _ = nix::mount::umount2(mount.as_str(), nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn ctr_runs_through_the_cocoon_shim_and_leaves_nothing() {
    let test = "ctr_runs_through_the_cocoon_shim_and_leaves_nothing";
    let tools = ["containerd", "ctr"]
        .iter()
        .all(|t| Command::new(t).arg("--version").output().is_ok());
    // SAFETY: geteuid(2) cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    if !tools || !root {
        let why = if !tools {
            "containerd and ctr are not installed (make deps installs them)"
        } else {
            "containerd needs root"
        };
        assert!(!e2e_required(), "{test}: {why}");
        report_skip(test, why);
        return;
    }
    let shim = match workspace_binary(SHIM) {
        Ok(p) => p,
        Err(e) => {
            assert!(!e2e_required(), "{test}: {e}");
            report_skip(test, &e);
            return;
        }
    };
    let shims_before = processes_named(SHIM).len();
    let containerd = Containerd::start(shim.parent().unwrap());

    let archive = containerd.dir.path().join("image.tar");
    std::fs::write(&archive, cocoon_tests::images::docker_archive()).unwrap();
    let import = containerd.ctr(&["images", "import", &archive.display().to_string()]);
    assert!(
        import.status.success(),
        "ctr images import: {}{}",
        text(&import.stderr),
        containerd.log()
    );
    let images = text(&containerd.ctr(&["images", "ls", "-q"]).stdout);
    assert!(images.lines().any(|l| l == IMAGE), "{images}");

    let run = containerd.ctr(&[
        "run",
        "--rm",
        "--runtime",
        "io.containerd.cocoon.v2",
        IMAGE,
        "t1",
        "echo",
        "hello from cocoon",
    ]);
    let (stdout, stderr) = (text(&run.stdout), text(&run.stderr));
    if has_hardware_virtualization() {
        assert!(
            run.status.success() && stdout.contains("hello from cocoon"),
            "ctr run: {stdout}{stderr}\n{}",
            containerd.log()
        );
    } else {
        assert!(!run.status.success(), "{stdout}{stderr}");
        assert!(
            stderr.contains("no hardware virtualization") && stderr.contains("--emulated"),
            "the shim's reason reaches ctr: {stderr}\ncontainerd's log:\n{}",
            containerd.log()
        );
    }

    // Nothing left: no task, no container, no shim, no rootfs mount, no VM directory.
    let tasks = text(&containerd.ctr(&["tasks", "ls", "-q"]).stdout);
    assert!(tasks.trim().is_empty(), "tasks left: {tasks}");
    let containers = text(&containerd.ctr(&["containers", "ls", "-q"]).stdout);
    assert!(
        containers.trim().is_empty(),
        "containers left: {containers}"
    );
    let started = Instant::now();
    while processes_named(SHIM).len() > shims_before && started.elapsed() < Duration::from_secs(10)
    {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        processes_named(SHIM).len(),
        shims_before,
        "a shim is still running\n{}",
        containerd.log()
    );
    let state = containerd.dir.path().join("state");
    assert!(
        mounts_under(&state).is_empty(),
        "mounts left: {:?}",
        mounts_under(&state)
    );
    let vm_dirs: Vec<_> = std::fs::read_dir("/run/cocoon/ctr")
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(vm_dirs.is_empty(), "VM directories left: {vm_dirs:?}");
}
