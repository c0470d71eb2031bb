//! The `cocoon` command line where no microVM is needed: bad input gets one clear line and a
//! non-zero exit, with nothing left in the runtime root; a machine without hardware
//! virtualization is told about `--emulated`.

use std::path::Path;
use std::process::Command;

struct Outcome {
    code: i32,
    stdout: String,
    stderr: String,
}

fn cocoon(root: &Path, args: &[&str]) -> Outcome {
    cocoon_with(root, args, &[])
}

fn cocoon_with(root: &Path, args: &[&str], env: &[(&str, &Path)]) -> Outcome {
    let out = Command::new(env!("CARGO_BIN_EXE_cocoon"))
        .envs(env.iter().map(|(k, v)| (*k, *v)))
        .arg("--root")
        .arg(root)
        .args(args)
        .env_remove("COCOON_SKIP_HW_CHECK")
        .output()
        .expect("running cocoon");
    Outcome {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn assert_one_line_error(outcome: &Outcome, code: i32, starts: &str) {
    assert_eq!(outcome.code, code, "{}", outcome.stderr);
    assert_eq!(outcome.stderr.lines().count(), 1, "{}", outcome.stderr);
    assert!(
        outcome.stderr.starts_with(&format!("cocoon: {starts}")),
        "{}",
        outcome.stderr
    );
}

#[test]
fn bad_input_gets_one_line_and_leaves_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    let cases: &[(&[&str], i32, &str)] = &[
        (
            &["run", "--memory", "0", "default", "true"],
            125,
            "--memory 0 is too small",
        ),
        (
            &["run", "-v", "nocolon", "default", "true"],
            125,
            "-v 'nocolon'",
        ),
        (
            &["run", "-v", "/no/such/dir:/data", "default", "true"],
            125,
            "-v '/no/such/dir:/data'",
        ),
        (
            &["run", "-e", "NOEQUALS", "default", "true"],
            125,
            "-e 'NOEQUALS'",
        ),
        (&["run", "-u", "root", "default", "true"], 125, "-u 'root'"),
        (
            &["run", "--name", "bad/name", "default", "true"],
            125,
            "invalid name 'bad/name'",
        ),
        (
            &["run", "-d", "-t", "default", "sh"],
            125,
            "-d cannot be combined with -i or -t",
        ),
        (
            &["run", "--emulated", "-i", "default", "cat"],
            125,
            "--emulated cannot take -i or -t",
        ),
        (
            &["exec", "nosuch", "true"],
            125,
            "no container named 'nosuch'",
        ),
        (&["logs", "nosuch"], 1, "no container named 'nosuch'"),
        (&["kill", "nosuch"], 1, "no container named 'nosuch'"),
        (
            &["kill", "-s", "NOPE", "nosuch"],
            1,
            "unknown signal 'NOPE'",
        ),
        (&["rm", "nosuch"], 1, "no container named 'nosuch'"),
    ];
    for (args, code, starts) in cases {
        let outcome = cocoon(&root, args);
        assert_one_line_error(&outcome, *code, starts);
    }
    let left: Vec<_> = std::fs::read_dir(&root)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "left in the runtime root: {left:?}");
    let ps = cocoon(&root, &["ps", "-a"]);
    assert_eq!(ps.code, 0, "{}", ps.stderr);
    assert_eq!(
        ps.stdout.lines().count(),
        1,
        "only the header: {}",
        ps.stdout
    );
}

#[test]
fn without_hardware_virtualization_the_user_is_told_about_emulated_mode() {
    if cocoon_sandbox::has_hardware_virtualization() {
        eprintln!("skipped: this CPU has hardware virtualization, so cocoon run does not refuse");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let kernel = tmp.path().join("k");
    std::fs::write(&kernel, "not used").unwrap();
    let outcome = cocoon_with(
        &tmp.path().join("root"),
        &[
            "run",
            "--kernel",
            &kernel.display().to_string(),
            "--initrd",
            &kernel.display().to_string(),
            "default",
            "true",
        ],
        &[("COCOON_VMM", &kernel)],
    );
    assert_one_line_error(&outcome, 125, "this CPU has no hardware virtualization");
    assert!(
        outcome.stderr.contains("add --emulated"),
        "{}",
        outcome.stderr
    );
}
