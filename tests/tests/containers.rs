//! The guest agent runs OCI containers for a host client over virtio-vsock (hybrid vsock), with
//! the busybox rootfs on a virtio-blk disk. One sandbox serves every case: `cocoon-agent-e2e`
//! drives the agent from the host side and prints `@@CASE <name> ok|FAIL ...`; each test below
//! asserts on its case.
//!
//! Runs under real KVM: directly where the CPU has vmx/svm, else in the emulated KVM host (one
//! boot of it for the whole file).

use std::sync::LazyLock;
use std::time::Duration;

use cocoon_tests::suite::{run_suite_with, scenario_result, value, HostNeeds, SuiteFile};
use cocoon_tests::{Scenario, SuiteError, SuiteRun};

static SUITE: LazyLock<Result<SuiteRun, SuiteError>> = LazyLock::new(|| {
    let mut files = vec![
        SuiteFile {
            name: "rootfs.ext4".into(),
            contents: cocoon_tests::images::default_rootfs_image(),
        },
        SuiteFile {
            name: "image.tar".into(),
            contents: cocoon_tests::images::docker_archive(),
        },
    ];
    // The test-only initramfs whose agent attacks the host through a volume (`make test-guest`);
    // without it the hostile-guest case fails, saying so.
    let hostile = cocoon_tests::artifacts::guest_dir().join("hostile-initramfs.cpio");
    if let Ok(contents) = std::fs::read(&hostile) {
        files.push(SuiteFile {
            name: "hostile-initramfs.cpio".into(),
            contents,
        });
    }
    // Under the emulated KVM host 2-vCPU guests reset mid-run, with no message, in about half of
    // the runs (README: "Known faults of the emulated host"; never seen with 1 vCPU): there the
    // driver's guest gets 1 vCPU, the shim's and the launcher's default, and says so; with hardware
    // KVM it gets 2. A guest that still triple-faults is run once more, loudly.
    let script = r#"
cp "$COCOON_FILES/rootfs.ext4" rootfs.ext4
if [ "${COCOON_EMULATED_HOST:-0}" = 1 ]; then
  export COCOON_E2E_VCPUS=1
  echo "@@NOTE the driver's guest has 1 vCPU: 2-vCPU guests reset at random under the emulated host (README \"Known faults\")"
else
  export COCOON_E2E_VCPUS=2
fi
# If the driver stalls, say where before the suite's deadline ends it all (its output goes to a file).
# The VM's own console and VMM log tell a stalled guest from a stalled VMM or host.
( sleep 400; echo "@@STALL: the agent driver has run 400 s; its output so far:"; tail -n 40 driver.out
  for f in /tmp/cocoon-vm-*/console.log /tmp/cocoon-vm-*/vmm.log; do echo "@@STALL $f:"; tail -n 20 "$f"; done
  grep -E '^(State|SigQ|voluntary_ctxt_switches)' /proc/$(pgrep -f cocoon-vmm | head -n 1)/status ) &
watchdog_pid=$!
attempt=1
while :; do
  "$COCOON_AGENT_E2E" "$COCOON_VMM" "$GUEST_BZIMAGE" "$GUEST_INITRD" "$PWD/rootfs.ext4" > driver.out 2>&1
  driver_exit=$?
  crash=$(grep -m1 'guest crashed' driver.out)
  if [ -n "$crash" ] && [ "${COCOON_EMULATED_HOST:-0}" = 1 ] && [ $attempt -le 1 ]; then
    echo "@@COCOON-RETRY attempt $attempt: the guest crashed under the emulated host: $crash"
    attempt=$((attempt + 1))
    continue
  fi
  break
done
kill $watchdog_pid 2>/dev/null
cat driver.out
echo "driver-exit=$driver_exit"
"#;
    // `cocoon run`, the launcher: one microVM per command (1 vCPU, its default).
    let launcher = r#"
export COCOON_DEFAULT_IMAGE="$COCOON_FILES/rootfs.ext4"
export COCOON_KERNEL="$GUEST_BZIMAGE" COCOON_INITRD="$GUEST_INITRD" COCOON_ROOT="$PWD/state-root"
# A run whose guest crashed is noted; under the emulated host the suite then runs once more
# (README "Known faults of the emulated host"; cocoon_tests::suite::GUEST_CRASH).
run() { "$COCOON" run "$@" 2> run.err; run_rc=$?; cat run.err >&2; grep 'guest triple fault' run.err >> crashes.log; return $run_rc; }
echo "t-start=$(date +%s)"
echo "echo-out=$(run --rm default -- echo hi)"
echo "t-echo=$(date +%s)"
run default -- sh -c 'exit 3'; echo "exit3=$?"
run -e FOO=bar -w /tmp -u 1000:1000 --name box --add-host db:192.0.2.7 default -- sh -c 'echo "who=$(id -u):$(id -g) pwd=$(pwd) foo=$FOO host=$(hostname)"; echo "hosts=$(awk "{ print \$1 \"=\" \$2 }" /etc/hosts | tr "\n" " ")"'
"$COCOON" run default -- sh -c 'trap "echo got-term; exit 9" TERM; echo ready; while :; do sleep 0.1; done' > sig.out &
pid=$!
i=0; while ! grep -q ready sig.out && [ $i -lt 600 ]; do sleep 0.1; i=$((i + 1)); done
kill -TERM $pid; wait $pid; echo "forwarded=$? $(grep -c got-term sig.out)"
echo "t-signal=$(date +%s)"
echo "cat-out=$(echo piped-in | run -i default -- cat)"
run default -- sh -c 'echo written > /etc/note && cat /etc/note'

mkdir -p ro-dir rw-dir/gone-dir; echo ro-content > ro-dir/f; echo old > rw-dir/old; echo keep > rw-dir/keep
echo "ro-vol=$(run -v "$PWD/ro-dir:/data:ro" default -- sh -c 'cat /data/f; touch /data/x 2>/dev/null && echo writable || echo read-only' | tr '\n' ' ')"
run -v "$PWD/rw-dir:/data" default -- sh -c 'echo made > /data/made && rm /data/old && rmdir /data/gone-dir && mkdir /data/sub && echo deep > /data/sub/deep'
echo "rw-vol=$? $(ls rw-dir | tr '\n' ' ')$(cat rw-dir/sub/deep)"
# A hostile guest's copy-back (tests/hostile-agent): its stream tries every way out of the volume
# before sending the real tree. Nothing beside the volume may change, its own files come back,
# and cocoon says what it refused, one line a kind.
outside() { find hostile -path hostile/vol -prune -o -print | sort | while read -r p; do echo "$p $(stat -c '%s %a %Y' "$p") $(md5sum < "$p" 2>/dev/null)"; done; ls -d /escape-* 2>/dev/null; }
if [ -f "$COCOON_FILES/hostile-initramfs.cpio" ]; then
  mkdir -p hostile/vol hostile/canary; echo secret > hostile/canary/secret; echo keep > hostile/vol/keep; echo host-big > hostile/vol/big
  before=$(outside)
  run --initrd "$COCOON_FILES/hostile-initramfs.cpio" -v "$PWD/hostile/vol:/data" default -- sh -c 'echo made > /data/new && rm /data/big' 2> hostile.err
  echo "hostile=$? vol=$(ls -A hostile/vol | tr '\n' ' ')keep=$(cat hostile/vol/keep) new=$(cat hostile/vol/new) big=$(cat hostile/vol/big) setuid=$(stat -c %a hostile/vol/setuid) link-out=$(readlink hostile/vol/link-out)"
  if [ "$(outside)" = "$before" ]; then echo "hostile-outside=unchanged"; else echo "hostile-outside=CHANGED"; outside; fi
  echo "hostile-refusals=$(grep -c '^cocoon: volume ' hostile.err)"
  sed 's/^/hostile-stderr: /' hostile.err
else
  echo "hostile=missing: $COCOON_FILES/hostile-initramfs.cpio (run make test-guest)"
fi
echo "t-volumes=$(date +%s)"

echo "archive=$(run "$COCOON_FILES/image.tar" 2>archive.err)"
echo "archive-progress=$(grep -c 'unpacking layer 2/2: 100%' archive.err)"
echo "archive-override=$(run -e FOO=cli "$COCOON_FILES/image.tar" -- sh -c 'echo $FOO $(pwd)')"
echo "t-archive=$(date +%s)"

bg=$(run -d --name bg default -- sh -c 'echo out-bg; echo err-bg >&2; while :; do sleep 0.2; done'); echo "detach=$? $bg"
echo "ps=$("$COCOON" ps | grep -c '^bg .*Up')"
out=$("$COCOON" exec bg sh -c 'echo in-bg $(hostname); exit 4'); echo "exec=$? $out"
echo "exec-stdin=$(echo via-stdin | "$COCOON" exec -i bg cat)"
"$COCOON" logs bg > log.out 2> log.err; echo "logs=$? out:$(cat log.out) err:$(cat log.err)"
"$COCOON" rm bg 2>err; echo "rm-running=$? lines=$(wc -l < err) $(cat err)"
"$COCOON" kill bg KILL; echo "kill=$?"
i=0; while ! "$COCOON" ps -a | grep -q '^bg .*Exited' && [ $i -lt 300 ]; do sleep 0.1; i=$((i + 1)); done
echo "after-kill=$("$COCOON" ps -a | grep '^bg ' | awk '{print $2, $3}')"
"$COCOON" exec bg true 2>err; echo "exec-ended=$? lines=$(wc -l < err) $(cat err)"
"$COCOON" rm bg; echo "rm=$? left=$(ls "$COCOON_ROOT" | wc -l)"
run -d --rm --name bg2 default -- sleep 1000 > /dev/null
"$COCOON" rm -f bg2 > /dev/null; echo "rm-f=$? left=$(ls "$COCOON_ROOT" | wc -l)"
echo "t-detached=$(date +%s)"

"$COCOON_AGENT_E2E" pty 33 101 40 120 "33 101" "$COCOON" run -t default -- sh -c 'stty size; tty; while [ "$(stty size)" = "33 101" ]; do sleep 0.1; done; stty size; exit 5' > tty.out
echo "tty=$(tr '\n' ' ' < tty.out)"

kvm_mode=$(stat -c %a /dev/kvm); chmod o+rw /dev/kvm
user_dir=$(mktemp -d /tmp/rootless.XXXXXX); chmod 755 "$user_dir"
mkdir -p "$user_dir/xdg" "$user_dir/home"; chown 1000:1000 "$user_dir/xdg" "$user_dir/home"
rootless=$(env -u COCOON_ROOT HOME="$user_dir/home" XDG_RUNTIME_DIR="$user_dir/xdg" "$COCOON_AGENT_E2E" as-user 1000 1000 "$COCOON" run --rm default -- sh -c 'echo in-guest-uid=$(id -u) caps=$(grep CapEff /proc/self/status | cut -f2)' 2>&1)
echo "rootless=$? $rootless state=$(ls "$user_dir/xdg/cocoon" | wc -l) host-uid=$(stat -c %u "$user_dir/xdg/cocoon")"
chmod "$kvm_mode" /dev/kvm; rm -rf "$user_dir"
echo "t-rootless=$(date +%s)"

# The network (`--network default`: passt on a socketpair; README "Networking"), in a network
# namespace of its own with a dummy uplink, so nothing of the machine's network is touched.
# (`timeout wget`, not `wget -T`: busybox 1.35's static wget segfaults with -T.)
cat > net.sh <<'NET'
"$IP" link set lo up
"$IP" link add uplink0 type dummy && "$IP" addr add 198.51.100.1/24 dev uplink0 && "$IP" link set uplink0 up && "$IP" route add default via 198.51.100.254 dev uplink0 || echo "net-setup=FAILED"
mkdir -p www-host www-lo; echo from-host-dummy > www-host/index.html; echo from-host-loopback > www-lo/index.html
httpd -f -p 198.51.100.1:8081 -h www-host & h1=$!
httpd -f -p 127.0.0.1:8082 -h www-lo & h2=$!
web=$("$COCOON" run -d --name web -p 127.0.0.1:18080:80 default -- sh -c 'mkdir -p /www && echo served-by-guest > /www/index.html && exec httpd -f -p 80 -h /www')
echo "net-detach=$? $web"
i=0; until page=$(timeout 3 wget -q -O- http://127.0.0.1:18080/ 2>/dev/null) || [ $i -ge 60 ]; do sleep 0.5; i=$((i + 1)); done
echo "net-published=$page"
echo "net-ps=$("$COCOON" ps | grep '^web ' | grep -o '127.0.0.1:18080->80/tcp')"
"$COCOON" run --rm -p 127.0.0.1:18080:80 default -- true 2>err; echo "net-taken=$? lines=$(wc -l < err) $(cat err)"
"$COCOON" rm -f web > /dev/null; echo "net-rm=$?"
echo "net-outbound=$("$COCOON" run --rm default -- timeout 10 wget -q -O- http://198.51.100.1:8081/ 2>&1)"
echo "net-host-loopback=$("$COCOON" run --rm default -- sh -c 'timeout 5 wget -q -O- http://10.0.2.2:8082/ > /dev/null 2>&1 && echo reachable || echo unreachable')"
echo "net-guest=$("$COCOON" run --rm default -- sh -c 'ip -o -4 addr show eth0 | awk "{print \$4}"; cat /sys/class/net/eth0/mtu /sys/class/net/eth0/address; ip route | grep ^default; grep -c ^nameserver /etc/resolv.conf' | tr '\n' ' ')"
echo "net-none=$("$COCOON" run --rm --network none default -- ls /sys/class/net | tr '\n' ' ')"
kvm_mode=$(stat -c %a /dev/kvm); chmod o+rw /dev/kvm
user_dir=$(mktemp -d /tmp/rootless-net.XXXXXX); chmod 755 "$user_dir"
mkdir -p "$user_dir/xdg" "$user_dir/home"; chown 1000:1000 "$user_dir/xdg" "$user_dir/home"
echo "net-rootless=$(env -u COCOON_ROOT HOME="$user_dir/home" XDG_RUNTIME_DIR="$user_dir/xdg" "$COCOON_AGENT_E2E" as-user 1000 1000 "$COCOON" run --rm default -- timeout 10 wget -q -O- http://198.51.100.1:8081/ 2>&1)"
chmod "$kvm_mode" /dev/kvm; rm -rf "$user_dir"
kill $h1 $h2
echo "net-passts=$(ps | grep -c '[p]asst')"
NET
unshare -n sh net.sh
"$COCOON" run --network bogus default -- true 2>err; echo "net-bogus=$? lines=$(wc -l < err) $(cat err)"
"$COCOON" run -p 80 default -- true 2>err; echo "net-bad-port=$? lines=$(wc -l < err) $(cat err)"
"$COCOON" run --network none -p 8080:80 default -- true 2>err; echo "net-none-port=$? lines=$(wc -l < err) $(cat err)"
echo "t-network=$(date +%s)"

run /nonexistent -- true 2>err; echo "missing-image=$? lines=$(wc -l < err) $(cat err)"
run --memory 0 default -- true 2>err; echo "memory0=$? lines=$(wc -l < err) $(cat err)"
run -v nocolon default -- true 2>err; echo "bad-volume=$? lines=$(wc -l < err) $(cat err)"
run --add-host nocolon default -- true 2>err; echo "bad-add-host=$? lines=$(wc -l < err) $(cat err)"
"$COCOON" exec nosuch true 2>err; echo "unknown-name=$? lines=$(wc -l < err) $(cat err)"
run default 2>err; echo "no-command=$? lines=$(wc -l < err) $(cat err)"
run default -- /no/such/command 2>err; echo "bad-command=$? lines=$(wc -l < err) $(cat err)"
echo "leftovers=$(ls /tmp | grep -c '^cocoon-') state=$(ls "$COCOON_ROOT" | wc -l) vmms=$(ps | grep -c '[c]ocoon-vmm') monitors=$(ps | grep -c '[m]onitor') passts=$(ps | grep -c '[p]asst')"
cut -c1-300 crashes.log 2>/dev/null | sed 's/^/@@COCOON-GUEST-CRASH launcher: /'
"#;
    run_suite_with(
        &[
            Scenario::new("containers", script),
            Scenario::new("launcher", launcher),
        ],
        files,
        &[
            "cocoon-agent-e2e",
            "cocoon",
            "/sbin/mkfs.ext4",
            "/sbin/debugfs",
            // `cocoon run`'s network, and the test's own uplink.
            "/usr/bin/passt",
            "/usr/sbin/ip",
        ],
        2,
        Duration::from_secs(720),
        &HostNeeds {
            // passt sandboxes itself with pivot_root, which cannot leave an initramfs.
            real_root: true,
            modules: vec!["drivers/net/dummy.ko".into()],
            ..HostNeeds::default()
        },
    )
});

/// Asserts the driver reported `case` as passed.
fn assert_case(test: &str, case: &str) {
    let Some(result) = scenario_result(&SUITE, test, "containers") else {
        return;
    };
    let out = &result.output;
    let prefix = format!("@@CASE {case} ");
    let line = out
        .lines()
        .find(|l| l.starts_with(&prefix))
        .unwrap_or_else(|| panic!("the driver never reported case {case}:\n{out}"));
    assert!(
        line.starts_with(&format!("{prefix}ok")),
        "{line}\n--- full driver output ---\n{out}"
    );
}

#[test]
fn sandbox_setup_shares_dns_and_mounts_between_containers() {
    assert_case(
        "sandbox_setup_shares_dns_and_mounts_between_containers",
        "sandbox_setup",
    );
}

#[test]
fn echo_prints_to_stdout_and_exits_zero() {
    assert_case("echo_prints_to_stdout_and_exits_zero", "echo");
}

#[test]
fn exit_code_is_reported() {
    assert_case("exit_code_is_reported", "exit_code");
}

#[test]
fn exec_close_stdin_and_sigkill() {
    assert_case("exec_close_stdin_and_sigkill", "exec_and_sigkill");
}

#[test]
fn sixty_four_mib_of_stdout_arrive_intact() {
    assert_case("sixty_four_mib_of_stdout_arrive_intact", "stdout_64mib");
}

#[test]
fn tty_process_sees_window_size_changes() {
    assert_case("tty_process_sees_window_size_changes", "tty_resize");
}

#[test]
fn stdin_comes_back_through_cat() {
    assert_case("stdin_comes_back_through_cat", "stdin_cat");
}

#[test]
fn memory_limit_exceeded_raises_an_oom_event() {
    assert_case("memory_limit_exceeded_raises_an_oom_event", "oom");
}

#[test]
fn two_containers_share_one_sandbox_but_not_their_processes() {
    assert_case(
        "two_containers_share_one_sandbox_but_not_their_processes",
        "two_containers",
    );
}

#[test]
fn secure_defaults_apply() {
    assert_case("secure_defaults_apply", "hardening");
}

#[test]
fn a_container_with_net_admin_makes_bridges_veths_and_has_tun() {
    assert_case(
        "a_container_with_net_admin_makes_bridges_veths_and_has_tun",
        "net_admin",
    );
}

#[test]
fn user_env_and_cwd_take_effect() {
    assert_case("user_env_and_cwd_take_effect", "user_env_cwd");
}

#[test]
fn seccomp_filter_from_the_spec_applies() {
    assert_case("seccomp_filter_from_the_spec_applies", "seccomp");
}

#[test]
fn stats_update_pause_and_resume() {
    assert_case("stats_update_pause_and_resume", "stats_pause_update");
}

#[test]
fn bad_input_gets_error_answers_and_the_agent_keeps_serving() {
    assert_case(
        "bad_input_gets_error_answers_and_the_agent_keeps_serving",
        "bad_input",
    );
}

#[test]
fn container_latency_is_measured() {
    assert_case("container_latency_is_measured", "latency");
}

#[test]
fn destroying_the_sandbox_stops_the_vm_and_leaves_nothing() {
    assert_case(
        "destroying_the_sandbox_stops_the_vm_and_leaves_nothing",
        "destroy",
    );
}

/// The launcher scenario's output.
fn launcher_output(test: &str) -> Option<String> {
    scenario_result(&SUITE, test, "launcher").map(|r| r.output.clone())
}

#[test]
fn cocoon_run_prints_output_and_returns_exit_codes() {
    let Some(out) = launcher_output("cocoon_run_prints_output_and_returns_exit_codes") else {
        return;
    };
    assert_eq!(value(&out, "echo-out="), "hi", "{out}");
    assert_eq!(value(&out, "exit3="), "3", "{out}");
    assert_eq!(
        value(&out, "forwarded="),
        "9 1",
        "SIGTERM reached the container's trap\n{out}"
    );
    assert!(
        out.lines().any(|l| l == "written"),
        "the root is writable\n{out}"
    );
}

#[test]
fn cocoon_run_applies_env_workdir_user_name_and_stdin() {
    let Some(out) = launcher_output("cocoon_run_applies_env_workdir_user_name_and_stdin") else {
        return;
    };
    assert_eq!(
        value(&out, "who="),
        "1000:1000 pwd=/tmp foo=bar host=box",
        "{out}"
    );
    assert_eq!(
        value(&out, "hosts="),
        "127.0.0.1=localhost ::1=localhost 10.0.2.100=box 192.0.2.7=db ",
        "/etc/hosts: loopback, the container's own name, --add-host's\n{out}"
    );
    assert_eq!(value(&out, "cat-out="), "piped-in", "{out}");
}

#[test]
fn cocoon_run_refuses_bad_input_in_one_line_and_leaves_nothing() {
    let Some(out) = launcher_output("cocoon_run_refuses_bad_input_in_one_line_and_leaves_nothing")
    else {
        return;
    };
    let missing = value(&out, "missing-image=");
    assert!(
        missing.starts_with("125 lines=1 cocoon: image '/nonexistent'"),
        "{out}"
    );
    let memory = value(&out, "memory0=");
    assert!(
        memory.starts_with("125 lines=1 cocoon: --memory 0 is too small"),
        "{out}"
    );
    assert!(
        value(&out, "no-command=").starts_with("125 lines=1 cocoon: no command to run"),
        "{out}"
    );
    assert!(
        value(&out, "bad-volume=").starts_with("125 lines=1 cocoon: -v 'nocolon'"),
        "{out}"
    );
    assert!(
        value(&out, "bad-add-host=")
            .starts_with("125 lines=1 cocoon: --add-host 'nocolon': use HOST:IP"),
        "{out}"
    );
    assert!(
        value(&out, "unknown-name=").starts_with("125 lines=1 cocoon: no container named 'nosuch'"),
        "{out}"
    );
    let bad_command = value(&out, "bad-command=");
    assert!(
        bad_command.starts_with("125 lines=1 cocoon: ") && bad_command.contains("/no/such/command"),
        "{out}"
    );
    assert_eq!(
        value(&out, "leftovers="),
        "0 state=0 vmms=0 monitors=0 passts=0",
        "{out}"
    );
}

#[test]
fn cocoon_run_mounts_volumes_read_only_and_copies_writable_ones_back() {
    let Some(out) =
        launcher_output("cocoon_run_mounts_volumes_read_only_and_copies_writable_ones_back")
    else {
        return;
    };
    assert_eq!(
        value(&out, "ro-vol=").trim(),
        "ro-content read-only",
        "{out}"
    );
    assert_eq!(
        value(&out, "rw-vol="),
        "0 keep made sub deep",
        "added, changed and removed entries reach the host directory\n{out}"
    );
}

#[test]
fn a_hostile_guests_volume_stream_cannot_leave_the_volume() {
    let Some(out) = launcher_output("a_hostile_guests_volume_stream_cannot_leave_the_volume")
    else {
        return;
    };
    assert_eq!(
        value(&out, "hostile="),
        "0 vol=big etc-link keep link-out loop-a loop-b new setuid swapped keep=keep new=made \
         big=host-big setuid=755 link-out=../canary",
        "the volume's own files back, links as links, no setuid bit, the over-limit file's host \
         copy kept, nothing refused made\n{out}"
    );
    assert_eq!(
        value(&out, "hostile-outside="),
        "unchanged",
        "nothing beside the volume (or at /) changed\n{out}"
    );
    // Paths out, through links, without their directory, twice, hard links, devices, fifos,
    // other kinds, over the limit, setuid bits.
    assert_eq!(
        value(&out, "hostile-refusals="),
        "10",
        "one line per kind\n{out}"
    );
}

#[test]
fn cocoon_run_runs_docker_image_archives() {
    let Some(out) = launcher_output("cocoon_run_runs_docker_image_archives") else {
        return;
    };
    assert_eq!(
        value(&out, "archive="),
        "image-cmd=from-image:/srv:lower,upper,:0",
        "the image's command, env and workdir; both layers; the whiteout\n{out}"
    );
    assert_eq!(value(&out, "archive-progress="), "1", "{out}");
    assert_eq!(value(&out, "archive-override="), "cli /srv", "{out}");
}

#[test]
fn cocoon_run_detached_with_ps_exec_logs_kill_and_rm() {
    let Some(out) = launcher_output("cocoon_run_detached_with_ps_exec_logs_kill_and_rm") else {
        return;
    };
    assert_eq!(value(&out, "detach="), "0 bg", "{out}");
    assert_eq!(value(&out, "ps="), "1", "{out}");
    assert_eq!(value(&out, "exec="), "4 in-bg bg", "{out}");
    assert_eq!(value(&out, "exec-stdin="), "via-stdin", "{out}");
    assert_eq!(value(&out, "logs="), "0 out:out-bg err:err-bg", "{out}");
    assert!(
        value(&out, "rm-running=").starts_with("1 lines=1 cocoon: container 'bg' is running"),
        "{out}"
    );
    assert_eq!(value(&out, "kill="), "0", "{out}");
    assert_eq!(value(&out, "after-kill="), "Exited (137)", "{out}");
    assert!(
        value(&out, "exec-ended=")
            .starts_with("125 lines=1 cocoon: container 'bg' is not running (exited (137))"),
        "{out}"
    );
    assert_eq!(value(&out, "rm="), "0 left=0", "{out}");
    assert_eq!(value(&out, "rm-f="), "0 left=0", "{out}");
}

#[test]
fn cocoon_run_tty_gets_a_terminal_with_resize() {
    let Some(out) = launcher_output("cocoon_run_tty_gets_a_terminal_with_resize") else {
        return;
    };
    let tty = value(&out, "tty=");
    for expected in ["33 101", "/dev/pts/0", "40 120", "pty-exit=5"] {
        assert!(tty.contains(expected), "{expected} in {tty}\n{out}");
    }
}

#[test]
fn cocoon_run_works_rootless() {
    let Some(out) = launcher_output("cocoon_run_works_rootless") else {
        return;
    };
    assert_eq!(
        value(&out, "rootless="),
        "0 in-guest-uid=0 caps=00000000a80425fb state=0 host-uid=1000",
        "uid 1000 on the host with /dev/kvm; hardened root in the guest; state under XDG_RUNTIME_DIR\n{out}"
    );
}

#[test]
fn cocoon_run_gets_a_network_through_passt_with_published_ports() {
    let Some(out) = launcher_output("cocoon_run_gets_a_network_through_passt_with_published_ports")
    else {
        return;
    };
    assert!(
        !out.contains("net-setup=FAILED"),
        "the test's dummy uplink\n{out}"
    );
    assert_eq!(value(&out, "net-detach="), "0 web", "{out}");
    assert_eq!(
        value(&out, "net-published="),
        "served-by-guest",
        "-p reaches the guest's server\n{out}"
    );
    assert_eq!(value(&out, "net-ps="), "127.0.0.1:18080->80/tcp", "{out}");
    assert!(
        value(&out, "net-taken=").starts_with(
            "125 lines=1 cocoon: -p 127.0.0.1:18080->80/tcp: host port 18080 cannot be bound"
        ),
        "{out}"
    );
    assert_eq!(value(&out, "net-rm="), "0", "{out}");
    assert_eq!(
        value(&out, "net-outbound="),
        "from-host-dummy",
        "the guest reaches a host address\n{out}"
    );
    assert_eq!(
        value(&out, "net-host-loopback="),
        "unreachable",
        "--no-map-gw: the host's loopback services are out of reach\n{out}"
    );
    // Address, MTU, MAC, default route, and how many nameservers resolv.conf has.
    let guest = value(&out, "net-guest=");
    for part in [
        "10.0.2.100/24 65520 02:63:6f:63:6f:6e ",
        "default via 10.0.2.2 dev eth0",
    ] {
        assert!(guest.contains(part), "{part} in {guest}\n{out}");
    }
    assert!(
        !guest.trim_end().ends_with(" 0"),
        "the guest has DNS servers: {guest}\n{out}"
    );
    assert_eq!(value(&out, "net-none="), "lo ", "{out}");
    assert_eq!(
        value(&out, "net-rootless="),
        "from-host-dummy",
        "passt works for uid 1000 too\n{out}"
    );
    assert_eq!(
        value(&out, "net-passts="),
        "0",
        "no passt outlives its container\n{out}"
    );
    assert!(
        value(&out, "net-bogus=")
            .starts_with("125 lines=1 cocoon: --network 'bogus' is not a network cocoon knows"),
        "{out}"
    );
    assert!(
        value(&out, "net-bad-port=")
            .starts_with("125 lines=1 cocoon: -p '80': give a host port and a container port"),
        "{out}"
    );
    assert!(
        value(&out, "net-none-port=").starts_with("125 lines=1 cocoon: -p needs a network"),
        "{out}"
    );
}
