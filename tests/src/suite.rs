//! Scenario suites: many scenarios in one run (one emulated-host boot), each scenario's output and
//! exit status picked out of the stream by markers.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use cocoon_emuhost::host::{HOST_READY, SCRIPT_EXIT};
use cocoon_emuhost::process::{run_with_deadline, Finished};
use cocoon_emuhost::{cocoon_host, host_tools, HostTools};
pub use cocoon_emuhost::{HostNeeds, SuiteFile};

use crate::artifacts::{
    binary_env_name, dev_kvm_usable, guest_images, has_hardware_virtualization, tool_env_name,
    workspace_binary,
};

const BEGIN: &str = "@@COCOON-BEGIN ";
const END: &str = "@@COCOON-END ";

/// A named shell script. It can use `$COCOON_VMM`, `$GUEST_BZIMAGE`, `$GUEST_VMLINUX`,
/// `$GUEST_INITRD` and `$COCOON_FILES` (where the suite's extra files are), and runs in a scratch
/// directory of its own.
#[derive(Clone, Debug)]
pub struct Scenario {
    pub name: String,
    pub script: String,
}

impl Scenario {
    pub fn new(name: &str, script: &str) -> Self {
        Self {
            name: name.to_string(),
            script: script.to_string(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct ScenarioResult {
    pub name: String,
    /// Everything the scenario printed (stdout and stderr).
    pub output: String,
    /// The script's exit status.
    pub status: i32,
}

/// How the scenarios reached KVM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KvmMode {
    /// This machine's own /dev/kvm (hardware virtualization).
    Direct,
    /// /dev/kvm inside qemu TCG with `-cpu max` (nested SVM, emulated).
    EmulatedHost,
}

#[derive(Debug)]
pub struct SuiteRun {
    pub mode: KvmMode,
    pub results: BTreeMap<String, ScenarioResult>,
    /// The whole output stream, for failure reports.
    pub log: String,
    /// Seconds from starting qemu until the emulated host had /dev/kvm (None in direct mode).
    pub host_ready_secs: Option<f64>,
    pub wall_secs: f64,
}

/// Why a suite produced no results.
#[derive(Debug, thiserror::Error)]
pub enum SuiteError {
    /// Something the suite needs is absent here (a skip, unless the run requires end-to-end tests).
    #[error("end-to-end scenarios cannot run here: {0}")]
    Unavailable(String),
    /// The suite ran and broke.
    #[error("{0}")]
    Failed(String),
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

impl SuiteRun {
    /// The result of one scenario, or an error that carries the end of the log.
    pub fn get(&self, name: &str) -> Result<&ScenarioResult, String> {
        self.results.get(name).ok_or_else(|| {
            format!(
                "scenario {name} did not complete ({:?}); end of the log:\n{}",
                self.mode,
                tail(&self.log, 60)
            )
        })
    }
}

/// Splits a suite's output into per-scenario results.
pub fn parse_results(log: &str) -> BTreeMap<String, ScenarioResult> {
    let mut results = BTreeMap::new();
    let mut current: Option<(String, String)> = None;
    for line in log.lines() {
        if let Some(name) = line.strip_prefix(BEGIN) {
            current = Some((name.trim().to_string(), String::new()));
        } else if let Some(rest) = line.strip_prefix(END) {
            let mut parts = rest.split_whitespace();
            let name = parts.next().unwrap_or_default().to_string();
            let status = parts
                .next()
                .and_then(|p| p.strip_prefix("status="))
                .and_then(|s| s.parse().ok())
                .unwrap_or(-1);
            if let Some((open, output)) = current.take() {
                if open == name {
                    results.insert(
                        name.clone(),
                        ScenarioResult {
                            name,
                            output,
                            status,
                        },
                    );
                }
            }
        } else if let Some((_, output)) = current.as_mut() {
            output.push_str(line);
            output.push('\n');
        }
    }
    results
}

/// Printed when a boot in the emulated host is retried (see [`PRELUDE`]).
pub const RETRY: &str = "@@COCOON-RETRY";

/// Printed by a scenario, at its end, for each guest of its own that crashed (a triple fault)
/// where no step retried it: under the emulated host the whole suite then runs once more, loudly
/// (README "Known faults of the emulated host"). Under hardware KVM it changes nothing: the steps
/// that lost their guest fail.
pub const GUEST_CRASH: &str = "@@COCOON-GUEST-CRASH";

/// Shell helpers every scenario can use.
///
/// `cocoon_boot ARGS...` runs `$COCOON_VMM ARGS...` with a hard deadline (`$BOOT_DEADLINE`, 45 s;
/// at the deadline the VMM is asked for its vCPUs' registers (SIGUSR1), then killed, and the status
/// reads 137) and prints its output. In the emulated KVM host only,
/// a boot that ran into the deadline, or whose guest triple-faulted (unless the scenario sets
/// COCOON_EXPECT_CRASH=1), is retried, at most twice, loudly: nested SVM under TCG has been seen to
/// stall or reset a guest (a few boots in a hundred). Under hardware KVM either is a failure.
pub const PRELUDE: &str = r#"
cocoon_boot_once() {
  "$COCOON_VMM" "$@" > "$cocoon_boot_out" 2>&1 &
  cocoon_boot_pid=$!
  cocoon_boot_waited=0
  while kill -0 $cocoon_boot_pid 2>/dev/null && [ $cocoon_boot_waited -lt $((${BOOT_DEADLINE:-45} * 10)) ]; do
    sleep 0.1
    cocoon_boot_waited=$((cocoon_boot_waited + 1))
  done
  if kill -0 $cocoon_boot_pid 2>/dev/null; then
    kill -USR1 $cocoon_boot_pid
    sleep 1
    kill -KILL $cocoon_boot_pid
    wait $cocoon_boot_pid
    return 137
  fi
  wait $cocoon_boot_pid
}
cocoon_boot() {
  cocoon_boot_out=$(mktemp)
  cocoon_boot_try=1
  while :; do
    cocoon_boot_once "$@"
    cocoon_boot_rc=$?
    cocoon_boot_why=""
    [ "$cocoon_boot_rc" = 137 ] && cocoon_boot_why="the guest did not finish in ${BOOT_DEADLINE:-45}s"
    [ "$cocoon_boot_rc" = 2 ] && [ -z "${COCOON_EXPECT_CRASH:-}" ] && grep -q 'guest triple fault' "$cocoon_boot_out" && cocoon_boot_why="the guest triple-faulted"
    [ -n "$cocoon_boot_why" ] && [ "${COCOON_EMULATED_HOST:-0}" = 1 ] && [ $cocoon_boot_try -le 2 ] || break
    echo "@@COCOON-RETRY attempt $cocoon_boot_try: $cocoon_boot_why under the emulated host; last output: $(tail -n 6 "$cocoon_boot_out" | tr '\n' '|')"
    cocoon_boot_try=$((cocoon_boot_try + 1))
  done
  cat "$cocoon_boot_out"
  rm -f "$cocoon_boot_out"
  return "$cocoon_boot_rc"
}
"#;

/// The shell script that runs every scenario in turn, each in its own scratch directory.
pub fn suite_script(scenarios: &[Scenario]) -> String {
    let mut script = String::from("#!/bin/sh\nscratch_root=$(mktemp -d)\n");
    script.push_str(PRELUDE);
    for s in scenarios {
        assert!(
            s.name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "scenario names are identifiers: {}",
            s.name
        );
        let _ = write!(
            script,
            "mkdir -p \"$scratch_root/{name}\"\necho '{BEGIN}{name}'\n(cd \"$scratch_root/{name}\" || exit 99\n{body}\n) </dev/null 2>&1\necho \"{END}{name} status=$?\"\n",
            name = s.name,
            body = s.script
        );
    }
    script.push_str("rm -rf \"$scratch_root\"\n");
    script
}

/// Picks how to reach KVM: `COCOON_KVM_MODE=direct|emulated` forces one; otherwise direct where the
/// CPU has vmx/svm and /dev/kvm opens, else the emulated host.
pub fn choose_mode() -> Result<(KvmMode, Option<HostTools>), SuiteError> {
    let forced = std::env::var("COCOON_KVM_MODE").ok();
    let direct_ok = has_hardware_virtualization() && dev_kvm_usable();
    match forced.as_deref() {
        Some("direct") if direct_ok => return Ok((KvmMode::Direct, None)),
        Some("direct") => {
            return Err(SuiteError::Unavailable(
                "COCOON_KVM_MODE=direct, but this CPU has no vmx/svm or /dev/kvm does not open"
                    .into(),
            ))
        }
        Some("emulated") | None => {}
        Some(other) => {
            return Err(SuiteError::Failed(format!(
                "COCOON_KVM_MODE={other}: use direct or emulated"
            )))
        }
    }
    if direct_ok && forced.is_none() {
        return Ok((KvmMode::Direct, None));
    }
    let tools = host_tools().map_err(|why| {
        SuiteError::Unavailable(format!(
            "no hardware virtualization here and no emulated KVM host: {why}"
        ))
    })?;
    Ok((KvmMode::EmulatedHost, Some(tools)))
}

/// Runs `scenarios` under real KVM, directly or in one emulated-host boot.
///
/// `binaries` are more workspace binaries the scenarios run, each in `$<NAME>` (upper case, `-` as
/// `_`: `cocoon-agent-e2e` is `$COCOON_AGENT_E2E`); absolute paths are tools of this host, which
/// the emulated host carries with their libraries (on its PATH).
pub fn run_suite(
    scenarios: &[Scenario],
    files: Vec<SuiteFile>,
    binaries: &[&str],
    guest_vcpus_max: u8,
    deadline: Duration,
) -> Result<SuiteRun, SuiteError> {
    run_suite_with(
        scenarios,
        files,
        binaries,
        guest_vcpus_max,
        deadline,
        &HostNeeds::default(),
    )
}

/// [`run_suite`] with more of the emulated host.
pub fn run_suite_with(
    scenarios: &[Scenario],
    files: Vec<SuiteFile>,
    binaries: &[&str],
    guest_vcpus_max: u8,
    deadline: Duration,
    needs: &HostNeeds,
) -> Result<SuiteRun, SuiteError> {
    let unavailable = SuiteError::Unavailable;
    let vmm = workspace_binary("cocoon-vmm").map_err(unavailable)?;
    let extra_binaries = binaries
        .iter()
        .map(|name| {
            if name.starts_with('/') {
                // A tool of this host (e.g. /sbin/mkfs.ext4), carried with its libraries.
                Ok((tool_env_name(Path::new(name)), PathBuf::from(name)))
            } else {
                Ok((binary_env_name(name), workspace_binary(name)?))
            }
        })
        .collect::<Result<Vec<_>, String>>()
        .map_err(unavailable)?;
    let guest = guest_images().map_err(unavailable)?;
    let (mode, tools) = choose_mode()?;
    let script = suite_script(scenarios);
    let failed = |e: anyhow::Error| SuiteError::Failed(format!("{e:#}"));

    let ready_at = std::sync::Arc::new(std::sync::Mutex::new(None::<f64>));
    let ready_slot = ready_at.clone();
    let on_line = move |line: &str, at: Duration| {
        if line.starts_with(HOST_READY) {
            *ready_slot.lock().unwrap() = Some(at.as_secs_f64());
        }
    };

    let finished: Finished = match mode {
        KvmMode::Direct => {
            let dir = tempfile::Builder::new()
                .prefix("cocoon-suite-")
                .tempdir()
                .map_err(|e| failed(e.into()))?;
            let files_dir = dir.path().join("files");
            std::fs::create_dir_all(&files_dir).map_err(|e| failed(e.into()))?;
            for f in &files {
                std::fs::write(files_dir.join(&f.name), &f.contents)
                    .map_err(|e| failed(e.into()))?;
            }
            let script_path = dir.path().join("suite.sh");
            std::fs::write(&script_path, &script).map_err(|e| failed(e.into()))?;
            let mut cmd = Command::new("sh");
            cmd.arg(&script_path)
                .current_dir(dir.path())
                .env("COCOON_VMM", &vmm)
                .env("GUEST_BZIMAGE", &guest.bzimage)
                .env("GUEST_VMLINUX", &guest.vmlinux)
                .env("GUEST_INITRD", &guest.initrd)
                .env("COCOON_FILES", &files_dir);
            for (env, path) in &extra_binaries {
                cmd.env(env, path);
            }
            let result = run_with_deadline(cmd, deadline, on_line).map_err(|e| failed(e.into()));
            drop(dir);
            result?
        }
        KvmMode::EmulatedHost => {
            let tools = tools.expect("emulated mode comes with its tools");
            // The emulated host itself has been seen to hang (nested SVM under TCG): then the
            // whole suite runs once more, and says so where `cargo test` shows it.
            let mut attempt = 1;
            loop {
                let mut host = cocoon_host(tools.clone(), &guest.cocoon_files(&vmm), files.clone())
                    .map_err(failed)?;
                for (env, path) in &extra_binaries {
                    let in_host = host.add_binary(path).map_err(failed)?;
                    host.set_env(env, &in_host);
                }
                host.cpus = host.cpus.max(guest_vcpus_max);
                host.meet(needs).map_err(failed)?;
                let slot = ready_at.clone();
                let on_line = move |line: &str, at: Duration| {
                    if line.starts_with(HOST_READY) {
                        *slot.lock().unwrap() = Some(at.as_secs_f64());
                    }
                };
                let finished = host.run(&script, deadline, on_line).map_err(failed)?;
                let why = if finished.timed_out {
                    Some("the emulated host did not finish it (deadline)".to_string())
                } else if !finished.output.contains(SCRIPT_EXIT) {
                    Some("the emulated host did not finish it (no exit marker)".to_string())
                } else {
                    guest_crash(&finished.output)
                        .map(|line| format!("a guest crashed under the emulated host: {line}"))
                };
                if let (Some(why), 1) = (why, attempt) {
                    use std::io::Write;
                    let _ = writeln!(
                        std::io::stderr(),
                        "RETRIED the whole suite: {why}; end of its log:\n{}",
                        tail(&finished.output, 20)
                    );
                    attempt += 1;
                    continue;
                }
                break finished;
            }
        }
    };

    if finished.timed_out {
        return Err(SuiteError::Failed(format!(
            "the suite ran past its {}s deadline ({mode:?}); end of the log:\n{}",
            deadline.as_secs(),
            tail(&finished.output, 80)
        )));
    }
    if mode == KvmMode::EmulatedHost && !finished.output.contains(SCRIPT_EXIT) {
        return Err(SuiteError::Failed(format!(
            "the emulated host did not finish the suite (qemu exit {:?}); end of the log:\n{}",
            finished.code,
            tail(&finished.output, 80)
        )));
    }
    let host_ready_secs = *ready_at.lock().unwrap();
    Ok(SuiteRun {
        mode,
        results: parse_results(&finished.output),
        log: finished.output,
        host_ready_secs,
        wall_secs: finished.elapsed.as_secs_f64(),
    })
}

/// The first [`GUEST_CRASH`] line of a suite's log, without the marker.
fn guest_crash(log: &str) -> Option<&str> {
    log.lines()
        .find_map(|l| l.strip_prefix(GUEST_CRASH))
        .map(str::trim)
}

/// The named scenario's result from a suite run; None (after saying why) when end-to-end tests
/// cannot run here and need not. Retried boots are reported where `cargo test` shows them.
pub fn scenario_result<'a>(
    suite: &'a Result<SuiteRun, SuiteError>,
    test: &str,
    name: &str,
) -> Option<&'a ScenarioResult> {
    match suite {
        Ok(run) => {
            let result = run.get(name).unwrap_or_else(|e| panic!("{e}"));
            if result.output.contains(RETRY) {
                report_retry(test, &result.output);
            }
            Some(result)
        }
        Err(SuiteError::Unavailable(why)) if !e2e_required() => {
            report_skip(test, why);
            None
        }
        Err(e) => panic!("{e}"),
    }
}

/// The rest of the line of `output` that starts with `key` (scenarios print `key=value` lines);
/// panics, showing the output, where there is none.
pub fn value<'a>(output: &'a str, key: &str) -> &'a str {
    output
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .unwrap_or_else(|| panic!("no {key} in:\n{output}"))
}

/// True when the run must not skip end-to-end scenarios (`make test` sets COCOON_REQUIRE_E2E=1).
pub fn e2e_required() -> bool {
    std::env::var("COCOON_REQUIRE_E2E").is_ok_and(|v| v == "1")
}

/// Prints the retry lines of a scenario where `cargo test` shows them.
pub fn report_retry(test: &str, output: &str) {
    use std::io::Write;
    for line in output.lines().filter(|l| l.starts_with(RETRY)) {
        let _ = writeln!(std::io::stderr(), "RETRIED in {test}: {line}");
    }
}

/// Prints a skip reason where `cargo test` shows it (not captured by the test harness).
pub fn report_skip(test: &str, why: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {why}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_guest_crash_is_found_by_its_marker_only() {
        let log = "vCPU 0: guest triple fault (expected)\n@@COCOON-GUEST-CRASH  t-image: vCPU 0: guest triple fault\n@@COCOON-GUEST-CRASH second\n";
        assert_eq!(
            guest_crash(log),
            Some("t-image: vCPU 0: guest triple fault")
        );
        assert_eq!(guest_crash("guest triple fault\n"), None);
    }

    #[test]
    fn results_are_split_by_markers() {
        let log = "noise\n@@COCOON-BEGIN a\nhello\n@@COCOON-END a status=0\n@@COCOON-BEGIN b\nx\ny\n@@COCOON-END b status=3\n@@COCOON-BEGIN c\npartial\n";
        let r = parse_results(log);
        assert_eq!(r.len(), 2);
        assert_eq!(r["a"].output, "hello\n");
        assert_eq!(r["a"].status, 0);
        assert_eq!(r["b"].output, "x\ny\n");
        assert_eq!(r["b"].status, 3);
        assert!(!r.contains_key("c"));
    }

    #[test]
    fn cocoon_boot_retries_only_in_the_emulated_host() {
        let fake_vmm = std::env::temp_dir().join(format!("cocoon-fake-vmm-{}", std::process::id()));
        let count = fake_vmm.with_extension("count");
        // A stand-in for the VMM that stalls on its first run and succeeds on its second.
        std::fs::write(
            &fake_vmm,
            format!(
                "#!/bin/sh\necho x >> {c}\n[ $(wc -l < {c}) -ge ${{SUCCEED_ON:-2}} ] && {{ echo booted; exit 0; }}\nsleep 30\n",
                c = count.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(
            &fake_vmm,
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        let run_until = |emulated: &str, succeed_on: &str| {
            let _ = std::fs::remove_file(&count);
            let script = format!("{PRELUDE}\ncocoon_boot --x; echo status=$?");
            let out = Command::new("sh")
                .arg("-c")
                .arg(&script)
                .env("COCOON_VMM", &fake_vmm)
                .env("BOOT_DEADLINE", "1")
                .env("COCOON_EMULATED_HOST", emulated)
                .env("SUCCEED_ON", succeed_on)
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout).to_string()
        };
        let run = |emulated: &str| run_until(emulated, "2");
        let emulated = run("1");
        assert!(
            emulated.contains(RETRY) && emulated.contains("booted"),
            "{emulated}"
        );
        assert!(emulated.ends_with("status=0\n"), "{emulated}");
        let direct = run("0");
        assert!(!direct.contains(RETRY), "{direct}");
        assert!(direct.ends_with("status=137\n"), "{direct}");
        // Three stalls in a row: three attempts, then the stall is the result.
        let hopeless = run_until("1", "99");
        assert_eq!(hopeless.matches(RETRY).count(), 2, "{hopeless}");
        assert!(hopeless.ends_with("status=137\n"), "{hopeless}");
        let attempts = std::fs::read_to_string(&count).unwrap().lines().count();
        assert_eq!(attempts, 3);
        let _ = std::fs::remove_file(&fake_vmm);
        let _ = std::fs::remove_file(&count);
    }

    #[test]
    fn script_runs_each_scenario_with_markers() {
        let script = suite_script(&[
            Scenario::new("one", "echo 1"),
            Scenario::new("two", "exit 4"),
        ]);
        let out = Command::new("sh").arg("-c").arg(&script).output().unwrap();
        let r = parse_results(&String::from_utf8_lossy(&out.stdout));
        assert_eq!(r["one"].output, "1\n");
        assert_eq!(r["one"].status, 0);
        assert_eq!(r["two"].status, 4);
    }
}
