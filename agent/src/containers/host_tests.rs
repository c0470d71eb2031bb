//! Real containers on this machine: as root, namespaces, cgroups and loop devices are real here.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use cocoon_common::lock;
use cocoon_protocol::{ErrorKind, ExitStatus, Reply, Rootfs, StdioPorts};
use oci_spec::runtime::{
    Capability, LinuxCapabilities, LinuxSeccompAction, LinuxSeccompBuilder, LinuxSyscallBuilder,
    Process, Spec,
};

use super::cgroup::CGROUP_ROOT;
use super::Sandbox;
use crate::errors::AgentResult;
use crate::events::EventBus;
use crate::layout::Layout;
use crate::reaper::Reaper;

/// A read-only loop device over an image, detached on drop.
struct LoopDevice(String);

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.0).status();
    }
}

fn skip(test: &str, why: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {why}");
}

/// The tests' one reaper: like the agent's, it collects every child of this process, so
/// the tests' own commands run under its spawn lock. This process is made a subreaper, as the
/// agent is PID 1: the processes the spawn helper makes come to it when the helper exits.
static REAPER: std::sync::LazyLock<Arc<Reaper>> = std::sync::LazyLock::new(|| {
    nix::sys::prctl::set_child_subreaper(true).expect("PR_SET_CHILD_SUBREAPER");
    let reaper = Arc::new(Reaper::default());
    let running = reaper.clone();
    std::thread::spawn(move || running.run());
    reaper
});

/// The agent's binary, beside this test binary's folder (`cargo test -p cocoon-agent` builds
/// it with the tests: the package has integration tests), run as the spawn helper.
fn agent_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("this test binary's path");
    let binary = exe
        .parent()
        .and_then(Path::parent)
        .map(|dir| dir.join("cocoon-agent"))
        .expect("the test binary's folder has a parent");
    assert!(
        binary.exists(),
        "{} is missing: build it with `cargo build -p cocoon-agent` (`cargo test -p cocoon-agent` does)",
        binary.display()
    );
    binary
}

/// An agent's sandbox on this host over a busybox root on a loop device; its cgroups and
/// device go on drop.
struct HostSandbox {
    sandbox: Arc<Sandbox>,
    reaper: Arc<Reaper>,
    device: Option<LoopDevice>,
    cgroup_parent: String,
    _dir: tempfile::TempDir,
}

impl HostSandbox {
    /// None after saying why it cannot run here.
    fn new(test: &str) -> Option<Self> {
        if !nix::unistd::geteuid().is_root() {
            skip(test, "needs root (namespaces, cgroups, mounts)");
            return None;
        }
        let reaper = REAPER.clone();
        let spawning = reaper.spawn_lock();
        let dir = tempfile::tempdir().unwrap();
        let (tree, image) = (dir.path().join("tree"), dir.path().join("rootfs.ext4"));
        cocoon_guest_image::rootfs::busybox_rootfs(&tree, Path::new("/bin/busybox"))
            .and_then(|()| cocoon_guest_image::rootfs::ext4_image(&tree, &image, 0))
            .expect("building the busybox rootfs (busybox-static, e2fsprogs)");
        let out = Command::new("losetup")
            .args(["--find", "--show", "--read-only"])
            .arg(&image)
            .output()
            .expect("running losetup");
        if !out.status.success() {
            let why = String::from_utf8_lossy(&out.stderr);
            skip(test, &format!("no loop device: {}", why.trim()));
            return None;
        }
        let device = LoopDevice(String::from_utf8_lossy(&out.stdout).trim().to_string());
        drop(spawning);
        let cgroup_parent = format!("/cocoon-test-{}-{test}", std::process::id());
        let sandbox = Sandbox::new(
            Layout {
                bundles: dir.path().join("bundles"),
                consoles: dir.path().join("tty"),
                state: dir.path().join("state"),
                cgroup_parent: cgroup_parent.clone(),
                spawner: agent_binary(),
                etc: dir.path().join("etc"),
            },
            reaper.clone(),
            Arc::new(EventBus::default()),
        );
        Some(Self {
            sandbox,
            reaper,
            device: Some(device),
            cgroup_parent,
            _dir: dir,
        })
    }

    fn rootfs(&self) -> Rootfs {
        Rootfs::BlockDevice {
            device: self.device.as_ref().unwrap().0.clone(),
            fstype: "ext4".into(),
            read_only: true,
        }
    }

    fn bundle(&self, id: &str) -> PathBuf {
        self.sandbox.layout.bundles.join(id)
    }
}

impl Drop for HostSandbox {
    fn drop(&mut self) {
        // Commands below must not have their children reaped by the reaper thread.
        let _spawning = self.reaper.spawn_lock();
        drop(self.device.take());
        let parent = self.cgroup_parent.trim_start_matches('/');
        for controller in fs::read_dir(CGROUP_ROOT).unwrap().flatten() {
            let _ = fs::remove_dir(controller.path().join(parent));
        }
        let _ = fs::remove_dir(Path::new(CGROUP_ROOT).join(parent));
    }
}

/// A spec running `sh -c script`, with the host's network (no loopback set up here).
fn spec_running(script: &str) -> Spec {
    let mut spec = Spec::default();
    let mut process = spec.process().clone().unwrap();
    process.set_args(Some(vec!["sh".into(), "-c".into(), script.into()]));
    spec.set_process(Some(process));
    let mut linux = spec.linux().clone().unwrap();
    let namespaces = linux.namespaces().clone().unwrap_or_default();
    linux.set_namespaces(Some(
        namespaces
            .into_iter()
            .filter(|n| n.typ() != oci_spec::runtime::LinuxNamespaceType::Network)
            .collect(),
    ));
    spec.set_linux(Some(linux));
    spec
}

fn exec(host: &HostSandbox, id: &str, exec_id: &str, script: &str) -> AgentResult<Reply> {
    let mut process = Process::default();
    process
        .set_args(Some(vec!["sh".into(), "-c".into(), script.into()]))
        .set_capabilities(None)
        .set_no_new_privileges(None)
        .set_rlimits(None);
    host.sandbox
        .exec(id, exec_id, &process, &StdioPorts::default())
}

fn exit_code(reply: AgentResult<Reply>) -> i32 {
    match reply {
        Ok(Reply::Exited { status }) => status.code(),
        other => panic!("not an exit: {other:?}"),
    }
}

#[test]
fn a_container_runs_isolated_on_this_host() {
    let Some(host) = HostSandbox::new("a_container_runs_isolated_on_this_host") else {
        return;
    };
    // PID 1 of its own pid namespace, its own hostname, a read-only root, no new privileges.
    let mut spec = spec_running(
        "test $$ = 1 && test \"$(hostname)\" = unit-box && ! touch /x 2>/dev/null && grep -q 'NoNewPrivs:.1' /proc/self/status && exit 7",
    );
    spec.set_hostname(Some("unit-box".into()));
    let mut root = spec.root().clone().unwrap();
    root.set_readonly(Some(true));
    spec.set_root(Some(root));

    let sandbox = &host.sandbox;
    let result = sandbox
        .create_container("unit", spec, &host.rootfs(), &StdioPorts::default())
        .and_then(|_| sandbox.start("unit"))
        .and_then(|_| sandbox.wait("unit", None));
    let deleted = sandbox.delete("unit");
    assert_eq!(
        result.unwrap(),
        Reply::Exited {
            status: ExitStatus::Exited(7)
        }
    );
    deleted.unwrap();
    assert!(!host.bundle("unit").exists(), "bundle left behind");
}

#[test]
fn a_container_and_an_exec_on_a_tty_get_their_consoles() {
    let Some(host) = HostSandbox::new("a_container_and_an_exec_on_a_tty_get_their_consoles") else {
        return;
    };
    let sandbox = &host.sandbox;
    let mut spec = spec_running("test -t 0 && test -t 1 || exit 3; exec sleep 60");
    let mut process = spec.process().clone().unwrap();
    process.set_terminal(Some(true));
    spec.set_process(Some(process));
    let created = sandbox
        .create_container("tty", spec, &host.rootfs(), &StdioPorts::default())
        .and_then(|_| sandbox.start("tty"));
    let exec_on_tty = created.and_then(|_| {
        let mut process = Process::default();
        process
            .set_args(Some(vec![
                "sh".into(),
                "-c".into(),
                "test -t 0 && test -t 1 && exit 4".into(),
            ]))
            .set_terminal(Some(true));
        sandbox.exec("tty", &"e".repeat(64), &process, &StdioPorts::default())?;
        sandbox.resize_tty("tty", Some(&"e".repeat(64)), 30, 100)?;
        sandbox.wait("tty", Some(&"e".repeat(64)))
    });
    let init_alive = sandbox.entry("tty").map(|e| lock(&e).init.exit.get());
    let deleted = sandbox.delete("tty");
    assert_eq!(exit_code(exec_on_tty), 4, "the exec had no tty");
    assert!(matches!(init_alive, Ok(None)), "init: {init_alive:?}");
    deleted.unwrap();
    assert_eq!(
        fs::read_dir(&host.sandbox.layout.consoles).unwrap().count(),
        0,
        "console sockets left"
    );
}

/// The container's process may do what only its seccomp filter stops (CAP_SYS_ADMIN, in a
/// UTS namespace of its own): sethostname. Its execs name no capabilities, rlimits or
/// no_new_privs, so they get the container's.
fn confined_spec(init_script: &str) -> Spec {
    let mut spec = spec_running(init_script);
    let blocked = LinuxSyscallBuilder::default()
        .names(vec!["sethostname".to_string()])
        .action(LinuxSeccompAction::ScmpActErrno)
        .build()
        .unwrap();
    let seccomp = LinuxSeccompBuilder::default()
        .default_action(LinuxSeccompAction::ScmpActAllow)
        .syscalls(vec![blocked])
        .build()
        .unwrap();
    let mut linux = spec.linux().clone().unwrap();
    linux.set_seccomp(Some(seccomp));
    spec.set_linux(Some(linux));
    let mut process = spec.process().clone().unwrap();
    process.set_capabilities(Some(capabilities(&[
        Capability::Chown,
        Capability::SysAdmin,
    ])));
    spec.set_process(Some(process));
    spec
}

/// Exactly `caps`: bounding, effective and permitted; none inheritable or ambient.
fn capabilities(caps: &[Capability]) -> LinuxCapabilities {
    let set: oci_spec::runtime::Capabilities = caps.iter().copied().collect();
    let mut capabilities = LinuxCapabilities::default();
    capabilities
        .set_bounding(Some(set.clone()))
        .set_effective(Some(set.clone()))
        .set_permitted(Some(set))
        .set_inheritable(None)
        .set_ambient(None);
    capabilities
}

/// CapEff/CapBnd of {CHOWN (0), SYS_ADMIN (21)}.
const CONTAINER_CAPS: &str = "0000000000200001";

#[test]
fn an_exec_is_confined_like_its_container() {
    let test = "an_exec_is_confined_like_its_container";
    let Some(host) = HostSandbox::new(test) else {
        return;
    };
    let sandbox = &host.sandbox;
    let init = "hostname blocked 2>/dev/null && exit 3; grep -q '^Seccomp:.2' /proc/self/status || exit 4; exec sleep 60";
    let created = sandbox
        .create_container(
            "confined",
            confined_spec(init),
            &host.rootfs(),
            &StdioPorts::default(),
        )
        .and_then(|_| sandbox.start("confined"));
    let check = format!(
        "grep -q '^Seccomp:.2' /proc/self/status || exit 11; \
         hostname escaped 2>/dev/null && exit 12; \
         grep -q '^NoNewPrivs:.1' /proc/self/status || exit 13; \
         grep -q '^CapEff:.{CONTAINER_CAPS}$' /proc/self/status || exit 14; \
         grep -q '^CapBnd:.{CONTAINER_CAPS}$' /proc/self/status || exit 15; \
         awk '$2 == \"/proc/sys\" && $4 ~ /^ro/' /proc/mounts | grep -q . || exit 16; \
         masked=0; for p in /proc/kcore /proc/keys /proc/timer_list; do \
           [ -e $p ] || continue; grep -q \" $p \" /proc/mounts || exit 17; masked=1; \
         done; [ $masked = 1 ] || exit 17; \
         test \"$(id -u)\" = 0 || exit 18; exit 0"
    );
    let confined = created.and_then(|_| {
        let started = exec(&host, "confined", "check", &check)?;
        assert!(matches!(started, Reply::Started { .. }), "{started:?}");
        sandbox.wait("confined", Some("check"))
    });
    let init_alive = sandbox.entry("confined").map(|e| lock(&e).init.exit.get());
    let deleted = sandbox.delete("confined");
    assert_eq!(
        exit_code(confined),
        0,
        "an exec'd process broke out of its container's confinement (the exit code says which check)"
    );
    assert!(
        matches!(init_alive, Ok(None)),
        "the init process's own checks failed: {init_alive:?}"
    );
    deleted.unwrap();
}

#[test]
fn a_profile_an_exec_cannot_be_given_refuses_the_exec() {
    let test = "a_profile_an_exec_cannot_be_given_refuses_the_exec";
    let Some(host) = HostSandbox::new(test) else {
        return;
    };
    let sandbox = &host.sandbox;
    // Without no_new_privileges and without CAP_SYS_ADMIN, a filter cannot be installed: the
    // exec fails with the reason, rather than run unconfined.
    let mut spec = confined_spec("exec sleep 60");
    let mut process = spec.process().clone().unwrap();
    process.set_capabilities(Some(capabilities(&[Capability::Chown])));
    spec.set_process(Some(process));
    let created = sandbox
        .create_container("strict", spec, &host.rootfs(), &StdioPorts::default())
        .and_then(|_| sandbox.start("strict"));
    let refused = created.and_then(|_| {
        let mut process = Process::default();
        process
            .set_args(Some(vec!["true".into()]))
            .set_no_new_privileges(Some(false));
        sandbox.exec("strict", "loose", &process, &StdioPorts::default())
    });
    let deleted = sandbox.delete("strict");
    let e = refused.expect_err("an exec the filter cannot be put on ran");
    assert!(e.message.contains("seccomp"), "{}", e.message);
    deleted.unwrap();
}

#[test]
fn an_execs_exit_outlives_its_container() {
    let Some(host) = HostSandbox::new("an_execs_exit_outlives_its_container") else {
        return;
    };
    let sandbox = &host.sandbox;
    let spec = spec_running("exec sleep 120");
    sandbox
        .create_container("gone", spec, &host.rootfs(), &StdioPorts::default())
        .and_then(|_| sandbox.start("gone"))
        .and_then(|_| exec(&host, "gone", "late", "exec sleep 60"))
        .unwrap();
    // The host's Wait for the exec is read after the container's Delete.
    sandbox.delete("gone").unwrap();
    assert_eq!(exit_code(sandbox.wait("gone", Some("late"))), 137);
    assert_eq!(exit_code(sandbox.wait("gone", None)), 137);
    let e = sandbox.wait("gone", Some("never")).unwrap_err();
    assert_eq!(e.kind, ErrorKind::NotFound);
}

#[test]
fn many_short_execs_return_their_exact_exit_codes() {
    let test = "many_short_execs_return_their_exact_exit_codes";
    let Some(host) = HostSandbox::new(test) else {
        return;
    };
    let sandbox = &host.sandbox;
    let created = sandbox
        .create_container(
            "busy",
            spec_running("exec sleep 120"),
            &host.rootfs(),
            &StdioPorts::default(),
        )
        .and_then(|_| sandbox.start("busy"));
    let mut wrong = Vec::new();
    let outcome = created.map(|_| {
        for i in 0..200 {
            let exec_id = format!("e{i}");
            let (script, expected) = match i % 4 {
                0 => ("exit 0", 0),
                1 => ("false", 1),
                2 => ("exit 7", 7),
                _ => ("exec sleep 30", 137),
            };
            let got = exec(&host, "busy", &exec_id, script).and_then(|_| {
                if expected == 137 {
                    sandbox.signal("busy", Some(&exec_id), libc::SIGKILL, false)?;
                }
                sandbox.wait("busy", Some(&exec_id))
            });
            match got {
                Ok(Reply::Exited { status }) if status.code() == expected => {}
                other => wrong.push(format!("{exec_id} ({script}): {other:?}")),
            }
        }
    });
    let deleted = sandbox.delete("busy");
    outcome.unwrap();
    assert!(wrong.is_empty(), "exits not as expected: {wrong:#?}");
    deleted.unwrap();
}
