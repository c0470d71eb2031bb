//! cocoon-agent-e2e: boots one sandbox and puts the guest agent through every container scenario
//! of the agent issue, from the host side, over hybrid vsock. Prints one line per case,
//! `@@CASE <name> ok <detail>` or `@@CASE <name> FAIL <why>`, and `@@METRIC <name> <value> <unit>`
//! lines for the benchmark. Runs where KVM can boot a guest (the tests run it in the emulated KVM
//! host).
//!
//! Usage: cocoon-agent-e2e VMM KERNEL INITRD ROOTFS_EXT4 [--bench-only]

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use cocoon_protocol::guest_network::{DnsConfig, HostEntry};
use cocoon_protocol::{
    ErrorKind, Event, ExitStatus, Operation, Reply, Rootfs, SandboxMount, StdioPorts,
};
use cocoon_sandbox::client::ClientError;
use cocoon_sandbox::spec::{container_spec, process, ProcessOptions};
use cocoon_sandbox::{AgentClient, HostPort, Vm, VmOptions};
use oci_spec::runtime::{
    Capabilities, Capability, LinuxMemory, LinuxResources, LinuxSeccomp, Mount, Spec,
};

const ROOTFS_DEVICE: &str = "/dev/vda";
const IO_TIMEOUT: Duration = Duration::from_secs(120);

struct Session {
    client: AgentClient,
    uds: PathBuf,
    next_port: AtomicU32,
}

/// The host ends of a process's stdio.
#[derive(Default)]
struct Streams {
    stdin: Option<UnixStream>,
    stdout: Option<UnixStream>,
    stderr: Option<UnixStream>,
}

#[derive(Clone, Copy)]
struct Want {
    stdin: bool,
    stderr: bool,
}

const OUT_ONLY: Want = Want {
    stdin: false,
    stderr: true,
};

fn rootfs() -> Rootfs {
    Rootfs::BlockDevice {
        device: ROOTFS_DEVICE.into(),
        fstype: "ext4".into(),
        read_only: true,
    }
}

fn args(a: &[&str]) -> ProcessOptions {
    ProcessOptions {
        args: a.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

fn read_all(stream: Option<UnixStream>) -> Result<Vec<u8>> {
    let Some(mut stream) = stream else {
        return Ok(Vec::new());
    };
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    let mut out = Vec::new();
    stream
        .read_to_end(&mut out)
        .context("reading process output")?;
    Ok(out)
}

impl Session {
    fn call(&self, op: Operation) -> Result<Reply, ClientError> {
        self.client.call(op)
    }

    /// Binds host ports for the streams wanted, runs `request` (which the agent answers after
    /// connecting to them), then picks up the connections.
    fn with_stdio(
        &self,
        want: Want,
        request: impl FnOnce(StdioPorts) -> Result<Reply, ClientError>,
    ) -> Result<(Reply, Streams)> {
        let bind = |on: bool| -> Result<Option<HostPort>> {
            if !on {
                return Ok(None);
            }
            let port = self.next_port.fetch_add(1, Ordering::Relaxed);
            Ok(Some(HostPort::bind(&self.uds, port)?))
        };
        let (stdin, stdout, stderr) = (bind(want.stdin)?, bind(true)?, bind(want.stderr)?);
        let token = cocoon_sandbox::host_port::new_token()?;
        let ports = StdioPorts {
            stdin: stdin.as_ref().map(|p| p.port),
            stdout: stdout.as_ref().map(|p| p.port),
            stderr: stderr.as_ref().map(|p| p.port),
            token: token.clone(),
        };
        let reply = request(ports)?;
        let accept = |p: Option<HostPort>| -> Result<Option<UnixStream>> {
            p.map(|p| {
                p.accept_with_token(&token, Duration::from_secs(10))
                    .map_err(Into::into)
            })
            .transpose()
        };
        let streams = Streams {
            stdin: accept(stdin)?,
            stdout: accept(stdout)?,
            stderr: accept(stderr)?,
        };
        Ok((reply, streams))
    }

    fn create(&self, id: &str, spec: Spec, want: Want) -> Result<Streams> {
        let (reply, streams) = self.with_stdio(want, |stdio| {
            self.call(Operation::CreateContainer {
                container_id: id.into(),
                spec: Box::new(spec),
                rootfs: rootfs(),
                stdio,
            })
        })?;
        match reply {
            Reply::Started { .. } => Ok(streams),
            other => bail!("create answered {other:?}"),
        }
    }

    fn start(&self, id: &str) -> Result<()> {
        self.call(Operation::Start {
            container_id: id.into(),
        })?;
        Ok(())
    }

    fn wait(&self, id: &str, exec_id: Option<&str>) -> Result<ExitStatus> {
        match self.call(Operation::Wait {
            container_id: id.into(),
            exec_id: exec_id.map(str::to_string),
        })? {
            Reply::Exited { status } => Ok(status),
            other => bail!("wait answered {other:?}"),
        }
    }

    fn delete(&self, id: &str) -> Result<()> {
        self.call(Operation::Delete {
            container_id: id.into(),
        })?;
        Ok(())
    }

    fn exec(
        &self,
        id: &str,
        exec_id: &str,
        options: &ProcessOptions,
        want: Want,
    ) -> Result<Streams> {
        let (_, streams) = self.with_stdio(want, |stdio| {
            self.call(Operation::Exec {
                container_id: id.into(),
                exec_id: exec_id.into(),
                process: Box::new(process(options)),
                stdio,
            })
        })?;
        Ok(streams)
    }

    /// Runs a container to its end: (stdout, stderr, status).
    fn run(&self, id: &str, spec: Spec) -> Result<(String, String, ExitStatus)> {
        let streams = self.create(id, spec, OUT_ONLY)?;
        self.start(id)?;
        let err_reader = std::thread::spawn(move || read_all(streams.stderr));
        let out = read_all(streams.stdout)?;
        let err = err_reader
            .join()
            .map_err(|_| anyhow!("stderr reader panicked"))??;
        let status = self.wait(id, None)?;
        self.delete(id)?;
        Ok((
            String::from_utf8_lossy(&out).into_owned(),
            String::from_utf8_lossy(&err).into_owned(),
            status,
        ))
    }

    fn sleeper(&self, id: &str, tag: &str) -> Result<()> {
        self.create(
            id,
            container_spec(&args(&["sleep", tag]), id, true),
            OUT_ONLY,
        )?;
        self.start(id)
    }

    /// Waits for an event matching `pred`, skipping others.
    fn expect_event(&self, what: &str, pred: impl Fn(&Event) -> bool) -> Result<Event> {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Some(e) = self.client.next_event(Duration::from_millis(200)) {
                if pred(&e) {
                    return Ok(e);
                }
            }
        }
        bail!("no {what} event within 60 s")
    }
}

fn expect_error(result: Result<Reply, ClientError>, kind: ErrorKind, what: &str) -> Result<String> {
    match result {
        Err(ClientError::Agent(e)) if e.kind == kind => Ok(e.message),
        other => bail!("{what}: expected a {kind:?} error, got {other:?}"),
    }
}

/// A spec whose container binds the sandbox's shared directory and DNS settings under /tmp.
fn pod_member_spec(id: &str, command: &str) -> Spec {
    let mut spec = container_spec(&args(&["sh", "-c", command]), id, true);
    let mut mounts = spec.mounts().clone().unwrap_or_default();
    for (source, target) in [
        ("/run/cocoon/shared", "/tmp/shared"),
        ("/etc/resolv.conf", "/tmp/resolv.conf"),
        ("/etc/hosts", "/tmp/hosts"),
    ] {
        let mut bind = Mount::default();
        bind.set_destination(target.into())
            .set_typ(Some("bind".into()))
            .set_source(Some(source.into()))
            .set_options(Some(vec!["rbind".into(), "rw".into()]));
        mounts.push(bind);
    }
    spec.set_mounts(Some(mounts));
    spec
}

fn case_sandbox_setup(s: &Session) -> Result<String> {
    let create = || {
        s.call(Operation::CreateSandbox {
            hostname: "pod-host".into(),
            dns: DnsConfig {
                servers: vec!["192.0.2.53".into()],
                search: vec!["pod.example".into()],
                options: vec!["ndots:2".into()],
            },
            hosts: vec![HostEntry {
                address: "192.0.2.7".parse().unwrap(),
                names: vec!["db".into(), "db.pod.example".into()],
            }],
            mounts: vec![SandboxMount {
                source: "tmpfs".into(),
                target: "/run/cocoon/shared".into(),
                fstype: "tmpfs".into(),
                options: vec!["size=1m".into()],
            }],
        })
    };
    create()?;
    expect_error(create(), ErrorKind::AlreadyExists, "a second CreateSandbox")?;
    let (out, err, status) = s.run(
        "pod-writer",
        pod_member_spec(
            "pod-writer",
            "echo from-writer > /tmp/shared/note; cat /tmp/resolv.conf; echo ---; cat /etc/resolv.conf 2>/dev/null || echo none; tail -n 1 /tmp/hosts",
        ),
    )?;
    // The guest's resolv.conf as the spec binds it; the agent binds none of its own into a
    // read-only root without one to mount on (a writable root gets it: the launcher's network).
    let bound = "nameserver 192.0.2.53\nsearch pod.example\noptions ndots:2\n";
    let hosts = "192.0.2.7\tdb db.pod.example\n";
    if status != ExitStatus::Exited(0) || out != format!("{bound}---\nnone\n{hosts}") {
        bail!("writer: status {status:?} out {out:?} err {err:?}");
    }
    let (out, err, status) = s.run(
        "pod-reader",
        pod_member_spec("pod-reader", "cat /tmp/shared/note"),
    )?;
    if status != ExitStatus::Exited(0) || out != "from-writer\n" {
        bail!("reader: status {status:?} out {out:?} err {err:?}");
    }
    Ok("DNS and /etc/hosts reached the containers; a file one wrote to the shared mount, the other read".into())
}

fn case_echo(s: &Session) -> Result<String> {
    let (out, err, status) = s.run(
        "echo",
        container_spec(&args(&["echo", "hello from the guest"]), "echo", true),
    )?;
    if out != "hello from the guest\n" || status != ExitStatus::Exited(0) {
        bail!("stdout {out:?} stderr {err:?} status {status:?}");
    }
    Ok("stdout and exit 0".into())
}

fn case_exit_code(s: &Session) -> Result<String> {
    let (_, _, status) = s.run(
        "exit3",
        container_spec(&args(&["sh", "-c", "echo oops >&2; exit 3"]), "exit3", true),
    )?;
    if status != ExitStatus::Exited(3) {
        bail!("status {status:?}");
    }
    Ok("exit 3".into())
}

fn case_exec_and_sigkill(s: &Session) -> Result<String> {
    s.sleeper("sleeper", "600")?;
    let streams = s.exec("sleeper", "e1", &args(&["echo", "from exec"]), OUT_ONLY)?;
    let out = read_all(streams.stdout)?;
    let exec_status = s.wait("sleeper", Some("e1"))?;
    if out != b"from exec\n" || exec_status != ExitStatus::Exited(0) {
        bail!(
            "exec stdout {:?} status {exec_status:?}",
            String::from_utf8_lossy(&out)
        );
    }
    // stdin closed through the agent ends a `cat`.
    let mut streams = s.exec(
        "sleeper",
        "cat",
        &args(&["cat"]),
        Want {
            stdin: true,
            stderr: false,
        },
    )?;
    streams.stdin.as_mut().unwrap().write_all(b"typed")?;
    std::thread::sleep(Duration::from_millis(300));
    s.call(Operation::CloseStdin {
        container_id: "sleeper".into(),
        exec_id: Some("cat".into()),
    })?;
    let cat_out = read_all(streams.stdout)?;
    let cat_status = s.wait("sleeper", Some("cat"))?;
    if cat_out != b"typed" || cat_status != ExitStatus::Exited(0) {
        bail!(
            "cat after CloseStdin: {:?} {cat_status:?}",
            String::from_utf8_lossy(&cat_out)
        );
    }
    let pids = match s.call(Operation::ListPids {
        container_id: "sleeper".into(),
    })? {
        Reply::Pids { pids } => pids,
        other => bail!("pids answered {other:?}"),
    };
    if pids.is_empty() {
        bail!("no pids listed for a running container");
    }
    s.call(Operation::Signal {
        container_id: "sleeper".into(),
        exec_id: None,
        signal: libc::SIGKILL,
        all: false,
    })?;
    let status = s.wait("sleeper", None)?;
    if status != ExitStatus::Signaled(libc::SIGKILL) {
        bail!("after SIGKILL: {status:?}");
    }
    s.expect_event("exit", |e| {
        matches!(e, Event::Exit { container_id, exec_id: None, status: ExitStatus::Signaled(9) } if container_id == "sleeper")
    })?;
    let after = expect_error(
        s.call(Operation::Exec {
            container_id: "sleeper".into(),
            exec_id: "late".into(),
            process: Box::new(process(&args(&["true"]))),
            stdio: StdioPorts::default(),
        }),
        ErrorKind::FailedPrecondition,
        "exec into a stopped container",
    )?;
    s.delete("sleeper")?;
    Ok(format!(
        "exec, CloseStdin, {} pids, SIGKILL -> signal 9; late exec: {after}",
        pids.len()
    ))
}

fn case_stdout_64mib(s: &Session) -> Result<String> {
    const TOTAL: usize = 64 << 20;
    const LINE: &[u8] = b"0123456789abcde\n";
    let spec = container_spec(
        &args(&["sh", "-c", "yes 0123456789abcde | head -c 67108864"]),
        "bulk",
        true,
    );
    let streams = s.create("bulk", spec, OUT_ONLY)?;
    let started = Instant::now();
    s.start("bulk")?;
    let mut stdout = streams.stdout.context("no stdout")?;
    stdout.set_read_timeout(Some(IO_TIMEOUT))?;
    let mut buf = vec![0u8; 1 << 16];
    let mut total = 0usize;
    loop {
        let n = stdout.read(&mut buf)?;
        if n == 0 {
            break;
        }
        for (i, b) in buf[..n].iter().enumerate() {
            if *b != LINE[(total + i) % LINE.len()] {
                bail!(
                    "byte {} is {b:#x}, expected {:#x}",
                    total + i,
                    LINE[(total + i) % LINE.len()]
                );
            }
        }
        total += n;
    }
    let secs = started.elapsed().as_secs_f64();
    let status = s.wait("bulk", None)?;
    s.delete("bulk")?;
    if total != TOTAL || status != ExitStatus::Exited(0) {
        bail!("{total} bytes of {TOTAL}, status {status:?}");
    }
    let rate = TOTAL as f64 / (1 << 20) as f64 / secs;
    println!("@@METRIC stdout_throughput {rate:.1} MiB/s");
    Ok(format!("64 MiB intact, {rate:.1} MiB/s"))
}

/// Reads from a tty stream until `needle` shows up.
fn read_until(stream: &mut UnixStream, needle: &str, seen: &mut String) -> Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut buf = [0u8; 1024];
    while !seen.contains(needle) {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            bail!("tty closed before {needle:?}; saw {seen:?}");
        }
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    Ok(())
}

fn case_tty_resize(s: &Session) -> Result<String> {
    let mut options = args(&["sh", "-c", "stty size; read line; stty size"]);
    options.terminal = true;
    let streams = s.create(
        "tty",
        container_spec(&options, "tty", true),
        Want {
            stdin: true,
            stderr: false,
        },
    )?;
    let resize = |rows, cols| {
        s.call(Operation::ResizeTty {
            container_id: "tty".into(),
            exec_id: None,
            rows,
            cols,
        })
    };
    resize(24, 80)?;
    s.start("tty")?;
    let mut out = streams.stdout.context("no tty output")?;
    let mut seen = String::new();
    read_until(&mut out, "24 80", &mut seen)?;
    resize(40, 120)?;
    streams
        .stdin
        .as_ref()
        .context("no tty input")?
        .write_all(b"go\n")?;
    read_until(&mut out, "40 120", &mut seen)?;
    let status = s.wait("tty", None)?;
    s.delete("tty")?;
    if status != ExitStatus::Exited(0) {
        bail!("status {status:?}");
    }
    Ok("stty saw 24x80, then 40x120".into())
}

fn case_stdin_cat(s: &Session) -> Result<String> {
    let streams = s.create(
        "cat",
        container_spec(&args(&["cat"]), "cat", true),
        Want {
            stdin: true,
            stderr: false,
        },
    )?;
    s.start("cat")?;
    let data: Vec<u8> = (0..(1u32 << 20)).map(|i| (i * 7 % 251) as u8).collect();
    let mut stdin = streams.stdin.context("no stdin")?;
    let payload = data.clone();
    let writer = std::thread::spawn(move || -> std::io::Result<()> {
        stdin.write_all(&payload)?;
        // End of input: the VMM tells the guest, `cat` sees end of file.
        stdin.shutdown(std::net::Shutdown::Write)
    });
    let out = read_all(streams.stdout)?;
    writer.join().map_err(|_| anyhow!("writer panicked"))??;
    let status = s.wait("cat", None)?;
    s.delete("cat")?;
    if out != data || status != ExitStatus::Exited(0) {
        bail!(
            "{} bytes back of {}, status {status:?}",
            out.len(),
            data.len()
        );
    }
    Ok("1 MiB through cat, EOF on half-close".into())
}

fn case_oom(s: &Session) -> Result<String> {
    let mut spec = container_spec(&args(&["tail", "/dev/zero"]), "oom", true);
    let mut memory = LinuxMemory::default();
    memory.set_limit(Some(32 << 20));
    let mut resources = LinuxResources::default();
    resources.set_memory(Some(memory));
    let mut linux = spec.linux().clone().unwrap_or_default();
    linux.set_resources(Some(resources));
    spec.set_linux(Some(linux));
    let _streams = s.create("oom", spec, OUT_ONLY)?;
    s.start("oom")?;
    s.expect_event(
        "OOM",
        |e| matches!(e, Event::Oom { container_id } if container_id == "oom"),
    )?;
    let status = s.wait("oom", None)?;
    s.delete("oom")?;
    if status != ExitStatus::Signaled(libc::SIGKILL) {
        bail!("status {status:?}");
    }
    Ok("OOM event, killed by signal 9".into())
}

fn case_two_containers(s: &Session) -> Result<String> {
    s.sleeper("pod-a", "601")?;
    s.sleeper("pod-b", "602")?;
    let ps = |id: &str| -> Result<String> {
        let streams = s.exec(id, "ps", &args(&["ps", "-o", "pid,args"]), OUT_ONLY)?;
        let out = read_all(streams.stdout)?;
        s.wait(id, Some("ps"))?;
        Ok(String::from_utf8_lossy(&out).into_owned())
    };
    let (a, b) = (ps("pod-a")?, ps("pod-b")?);
    for id in ["pod-a", "pod-b"] {
        s.delete(id)?;
    }
    if !a.contains("sleep 601")
        || a.contains("sleep 602")
        || !b.contains("sleep 602")
        || b.contains("sleep 601")
    {
        bail!("process views leak: a={a:?} b={b:?}");
    }
    Ok("both ran in one VM; each sees only its own processes".into())
}

fn case_hardening(s: &Session) -> Result<String> {
    let (out, _, status) = s.run(
        "hardened",
        container_spec(
            &args(&["sh", "-c", "grep -E 'NoNewPrivs|CapBnd|CapEff' /proc/self/status; touch /x 2>/dev/null; echo touch=$?; hostname; grep -E ' /proc/sys proc ro,' /proc/self/mounts; grep -cE ' /proc/(timer_list|kcore|keys|sched_debug) ' /proc/self/mounts"]),
            "hardened-host",
            true,
        ),
    )?;
    let want = [
        "NoNewPrivs:\t1",
        "CapBnd:\t00000000a80425fb",
        "CapEff:\t00000000a80425fb",
        "touch=1",
        "hardened-host",
        " /proc/sys proc ro,",
    ];
    if status != ExitStatus::Exited(0) || want.iter().any(|w| !out.contains(w)) {
        bail!("status {status:?}, output {out:?}");
    }
    let masked: u32 = out
        .lines()
        .last()
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or(0);
    if masked == 0 {
        bail!("no masked /proc paths: {out:?}");
    }
    Ok(format!("no_new_privs, Docker caps, read-only root, hostname, read-only /proc/sys, {masked} masked /proc paths"))
}

/// A container given CAP_NET_ADMIN can do in the guest what it could under runc: a bridge, a veth
/// pair, tun/tap (the guest kernel has them; they live in the VM's network, the pod's).
fn case_net_admin(s: &Session) -> Result<String> {
    let script = "brctl addbr br-test && brctl delbr br-test && echo bridge=ok; \
        ip link add v-test type veth && ip link del v-test && echo veth=ok; \
        grep -qw tun /proc/misc && echo tun=ok";
    let mut spec = container_spec(&args(&["sh", "-c", script]), "net-admin", true);
    let mut process = spec.process().clone().context("the spec has a process")?;
    let mut caps = process.capabilities().clone().unwrap_or_default();
    let with_net_admin = |set: &Option<Capabilities>| {
        let mut set = set.clone().unwrap_or_default();
        set.insert(Capability::NetAdmin);
        Some(set)
    };
    let (bounding, effective, permitted) = (
        with_net_admin(caps.bounding()),
        with_net_admin(caps.effective()),
        with_net_admin(caps.permitted()),
    );
    caps.set_bounding(bounding)
        .set_effective(effective)
        .set_permitted(permitted);
    process.set_capabilities(Some(caps));
    spec.set_process(Some(process));
    let (out, err, status) = s.run("net-admin", spec)?;
    if status != ExitStatus::Exited(0) || out != "bridge=ok\nveth=ok\ntun=ok\n" {
        bail!("status {status:?}, output {out:?}, stderr {err:?}");
    }
    Ok("with CAP_NET_ADMIN: brctl addbr, a veth pair, tun".into())
}

fn case_user_env_cwd(s: &Session) -> Result<String> {
    let mut options = args(&["sh", "-c", "id -u; id -g; pwd; echo $FOO"]);
    options.uid = 1000;
    options.gid = 1000;
    options.cwd = Some("/tmp".into());
    options.env = vec!["FOO=bar baz".into()];
    let (out, err, status) = s.run("user", container_spec(&options, "user", true))?;
    if out != "1000\n1000\n/tmp\nbar baz\n" || status != ExitStatus::Exited(0) {
        bail!("output {out:?} stderr {err:?} status {status:?}");
    }
    Ok("uid, gid, cwd, env".into())
}

fn case_seccomp(s: &Session) -> Result<String> {
    let mut spec = container_spec(
        &args(&["sh", "-c", "mkdir /tmp/blocked; echo rc=$?"]),
        "seccomp",
        true,
    );
    let seccomp: LinuxSeccomp = serde_json::from_value(serde_json::json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64"],
        "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}]
    }))?;
    let mut linux = spec.linux().clone().unwrap_or_default();
    linux.set_seccomp(Some(seccomp));
    spec.set_linux(Some(linux));
    let (out, err, status) = s.run("seccomp", spec)?;
    if !out.contains("rc=1")
        || !err.contains("Operation not permitted")
        || status != ExitStatus::Exited(0)
    {
        bail!("output {out:?} stderr {err:?} status {status:?}");
    }
    Ok("mkdir denied with EPERM by the spec's filter".into())
}

fn case_stats_pause_update(s: &Session) -> Result<String> {
    s.sleeper("stats", "603")?;
    let stats = |s: &Session| -> Result<cocoon_protocol::ContainerStats> {
        match s.call(Operation::Stats {
            container_id: "stats".into(),
        })? {
            Reply::Stats { stats } => Ok(stats),
            other => bail!("stats answered {other:?}"),
        }
    };
    let before = stats(s)?;
    if before.memory_current_bytes == 0 || before.pids_current == 0 {
        bail!("implausible stats {before:?}");
    }
    let mut memory = LinuxMemory::default();
    memory.set_limit(Some(64 << 20));
    let mut resources = LinuxResources::default();
    resources.set_memory(Some(memory));
    s.call(Operation::UpdateResources {
        container_id: "stats".into(),
        resources: Box::new(resources),
    })?;
    let after = stats(s)?;
    if after.memory_limit_bytes != Some(64 << 20) {
        bail!("memory limit after update: {:?}", after.memory_limit_bytes);
    }
    s.call(Operation::Pause {
        container_id: "stats".into(),
    })?;
    let paused = s.exec("stats", "while-paused", &args(&["true"]), OUT_ONLY);
    s.call(Operation::Resume {
        container_id: "stats".into(),
    })?;
    let streams = s.exec("stats", "resumed", &args(&["echo", "resumed"]), OUT_ONLY)?;
    let out = read_all(streams.stdout)?;
    s.delete("stats")?;
    if paused.is_ok() {
        bail!("exec into a paused container was accepted");
    }
    if out != b"resumed\n" {
        bail!(
            "exec after resume printed {:?}",
            String::from_utf8_lossy(&out)
        );
    }
    Ok(format!(
        "memory {} KiB, {} pids; limit updated; pause refused exec, resume allowed it",
        before.memory_current_bytes >> 10,
        before.pids_current
    ))
}

fn case_bad_input(s: &Session, uds: &std::path::Path) -> Result<String> {
    let mut notes = Vec::new();
    notes.push(expect_error(
        s.call(Operation::Start {
            container_id: "nope".into(),
        }),
        ErrorKind::NotFound,
        "start of an unknown container",
    )?);
    s.sleeper("twice", "604")?;
    notes.push(expect_error(
        s.call(Operation::Start {
            container_id: "twice".into(),
        }),
        ErrorKind::FailedPrecondition,
        "second start",
    )?);
    s.delete("twice")?;
    let missing = s.call(Operation::CreateContainer {
        container_id: "norootfs".into(),
        spec: Box::new(container_spec(&args(&["true"]), "x", true)),
        rootfs: Rootfs::BlockDevice {
            device: "/dev/vdz".into(),
            fstype: "ext4".into(),
            read_only: true,
        },
        stdio: StdioPorts::default(),
    });
    notes.push(expect_error(
        missing,
        ErrorKind::NotFound,
        "missing rootfs",
    )?);
    let badcmd = s.call(Operation::CreateContainer {
        container_id: "badcmd".into(),
        spec: Box::new(container_spec(&args(&["/no/such/binary"]), "x", true)),
        rootfs: rootfs(),
        stdio: StdioPorts::default(),
    });
    match badcmd {
        Err(ClientError::Agent(e)) => notes.push(e.message),
        other => bail!("bad command path: expected an error, got {other:?}"),
    }
    let dup = s.call(Operation::CreateContainer {
        container_id: "../escape".into(),
        spec: Box::new(container_spec(&args(&["true"]), "x", true)),
        rootfs: rootfs(),
        stdio: StdioPorts::default(),
    });
    notes.push(expect_error(
        dup,
        ErrorKind::InvalidArgument,
        "path-like id",
    )?);

    // Malformed JSON in a well-formed frame: an error answer, and the connection stays usable.
    let mut raw = cocoon_sandbox::client::connect_vsock(uds, cocoon_protocol::AGENT_PORT)?;
    let garbage = b"{not json";
    let mut frame = Vec::new();
    frame.extend_from_slice(&cocoon_protocol::frame::MAGIC);
    frame.extend_from_slice(&cocoon_protocol::PROTOCOL_VERSION.to_be_bytes());
    frame.extend_from_slice(&[0, 0]);
    frame.extend_from_slice(&(garbage.len() as u32).to_be_bytes());
    frame.extend_from_slice(garbage);
    raw.write_all(&frame)?;
    raw.set_read_timeout(Some(Duration::from_secs(30)))?;
    match cocoon_protocol::read_message(&mut raw)? {
        cocoon_protocol::Message::Response(r) if r.result.is_err() => {}
        other => bail!("malformed message answered {other:?}"),
    }
    // An oversized frame: an error answer, then the agent closes that connection.
    let mut header = Vec::new();
    header.extend_from_slice(&cocoon_protocol::frame::MAGIC);
    header.extend_from_slice(&cocoon_protocol::PROTOCOL_VERSION.to_be_bytes());
    header.extend_from_slice(&[0, 0]);
    header.extend_from_slice(&(8u32 << 20).to_be_bytes());
    raw.write_all(&header)?;
    match cocoon_protocol::read_message(&mut raw)? {
        cocoon_protocol::Message::Response(r) if r.result.is_err() => {}
        other => bail!("oversized frame answered {other:?}"),
    }
    let mut rest = Vec::new();
    let _ = raw.read_to_end(&mut rest);
    // And the agent still serves.
    match s.call(Operation::Version)? {
        Reply::Version { .. } => {}
        other => bail!("version after bad input: {other:?}"),
    }
    Ok(notes.join(" | "))
}

fn case_latency(s: &Session) -> Result<String> {
    let mut samples = Vec::new();
    for i in 0..5 {
        let id = format!("lat{i}");
        let started = Instant::now();
        let (_, _, status) = s.run(&id, container_spec(&args(&["true"]), &id, true))?;
        if status != ExitStatus::Exited(0) {
            bail!("true exited {status:?}");
        }
        samples.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    samples.sort_by(f64::total_cmp);
    let median = samples[samples.len() / 2];
    println!("@@METRIC container_run_true {median:.0} ms");
    Ok(format!(
        "create+start+wait+delete of `true`: median {median:.0} ms of 5"
    ))
}

fn main() -> Result<()> {
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some("pty") {
        // `pty ROWS COLS ROWS2 COLS2 MARKER CMD...`: CMD on a terminal, resized after MARKER.
        let num = |i: usize| -> Result<u16> {
            argv.get(i)
                .and_then(|v| v.parse().ok())
                .context("usage: cocoon-agent-e2e pty ROWS COLS ROWS2 COLS2 MARKER CMD...")
        };
        let (output, code) = cocoon_tests::pty::run_on_pty(
            argv.get(7..)
                .filter(|c| !c.is_empty())
                .context("no command")?,
            (num(2)?, num(3)?),
            argv.get(6).context("no marker")?,
            (num(4)?, num(5)?),
        )?;
        print!("{output}");
        println!("pty-exit={code}");
        return Ok(());
    }
    if argv.get(1).map(String::as_str) == Some("as-user") {
        // `as-user UID GID CMD...`: CMD as that user, with no supplementary groups.
        use std::os::unix::process::CommandExt;
        let id = |i: usize| -> Result<u32> {
            argv.get(i)
                .and_then(|v| v.parse().ok())
                .context("usage: cocoon-agent-e2e as-user UID GID CMD...")
        };
        let command = argv
            .get(4..)
            .filter(|c| !c.is_empty())
            .context("no command")?;
        let status = std::process::Command::new(&command[0])
            .args(&command[1..])
            .uid(id(2)?)
            .gid(id(3)?)
            .status()
            .with_context(|| format!("running {}", command[0]))?;
        std::process::exit(status.code().unwrap_or(1));
    }
    if argv.len() < 5 {
        bail!("usage: cocoon-agent-e2e VMM KERNEL INITRD ROOTFS_EXT4 [--bench-only]");
    }
    let bench_only = argv.iter().any(|a| a == "--bench-only");
    let options = VmOptions {
        vmm: argv[1].clone().into(),
        kernel: argv[2].clone().into(),
        initrd: argv[3].clone().into(),
        vcpus: std::env::var("COCOON_E2E_VCPUS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1),
        memory_mib: 256,
        disks: vec![(argv[4].clone().into(), true)],
        disk_slots: 0,
        cid: 3,
        extra_cmdline: String::new(),
        runtime_dir: None,
        nets: Vec::new(),
        netns: None,
    };
    let booted = Instant::now();
    let mut vm = Vm::spawn(&options)?;
    let uds = vm.uds();
    let client = match vm.connect_agent(Duration::from_secs(90)) {
        Ok(c) => c,
        Err(e) => {
            let (code, stderr) = vm.shut_down(Duration::from_secs(1))?;
            bail!(
                "{e}; vmm exit {code:?} stderr {stderr:?}; console:\n{}",
                vm.console()
            );
        }
    };
    let ready_ms = booted.elapsed().as_secs_f64() * 1000.0;
    println!("@@METRIC agent_ready {ready_ms:.0} ms");
    println!("@@METRIC vcpus {}", options.vcpus);
    let session = Session {
        client,
        uds: uds.clone(),
        next_port: AtomicU32::new(2000),
    };
    type Case = fn(&Session) -> Result<String>;
    let mut cases: Vec<(&str, Case)> = vec![
        ("latency", case_latency),
        ("stdout_64mib", case_stdout_64mib),
    ];
    if !bench_only {
        cases.extend([
            ("sandbox_setup", case_sandbox_setup as Case),
            ("echo", case_echo),
            ("exit_code", case_exit_code),
            ("exec_and_sigkill", case_exec_and_sigkill),
            ("tty_resize", case_tty_resize),
            ("stdin_cat", case_stdin_cat),
            ("oom", case_oom),
            ("two_containers", case_two_containers),
            ("hardening", case_hardening),
            ("net_admin", case_net_admin),
            ("user_env_cwd", case_user_env_cwd),
            ("seccomp", case_seccomp),
            ("stats_pause_update", case_stats_pause_update),
        ]);
    }
    let mut failed = false;
    for (name, case) in cases {
        let started = Instant::now();
        match case(&session) {
            Ok(detail) => println!(
                "@@CASE {name} ok {detail} ({:.1} s)",
                started.elapsed().as_secs_f64()
            ),
            Err(e) => {
                failed = true;
                println!("@@CASE {name} FAIL {e:#}");
            }
        }
    }
    if !bench_only {
        match case_bad_input(&session, &uds) {
            Ok(detail) => println!("@@CASE bad_input ok {detail}"),
            Err(e) => {
                failed = true;
                println!("@@CASE bad_input FAIL {e:#}");
            }
        }
    }
    // Destroying the sandbox powers the guest off; the VMM then exits 0 on its own.
    let destroyed = session.call(Operation::DestroySandbox);
    drop(session);
    let (code, stderr) = vm.shut_down(Duration::from_secs(30))?;
    let dir = vm.runtime_dir().to_path_buf();
    let console = vm.console();
    drop(vm);
    match destroyed {
        Ok(Reply::Done) if code == Some(0) && !dir.exists() => println!(
            "@@CASE destroy ok answered; vmm exited 0 after DestroySandbox; runtime dir removed"
        ),
        other => {
            failed = true;
            println!(
                "@@CASE destroy FAIL answer {other:?}, vmm exit {code:?}, dir left: {}, stderr {stderr:?}",
                dir.exists()
            );
        }
    }
    if failed || std::env::var_os("COCOON_E2E_CONSOLE").is_some() {
        println!("--- guest console ---\n{console}");
    }
    Ok(())
}
