//! The `ferry` binary's command-line contract: exit codes and one-line errors for bad input.
//!
//! Besides what it checks, this test makes `cargo test --workspace` build `target/<profile>/ferry`
//! (Cargo builds a package's binaries for its integration tests), which the end-to-end tests in
//! `tests/` run.

#![allow(clippy::unwrap_used)]

use std::process::Command;

fn ferry(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(args)
        .env_remove("FERRY_CONFIG")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

fn config(text: &str) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ferry.toml");
    std::fs::write(&path, text).unwrap();
    (dir, path.display().to_string())
}

#[test]
fn version_and_usage_errors() {
    let (code, out) = ferry(&["--version"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("ferry "), "{out}");
    let (code, _) = ferry(&["run"]);
    assert_eq!(code, 2, "missing --config is a usage error");
    let (code, out) = ferry(&["run", "--config", "x.toml", "--until", "not-an-lsn"]);
    assert_eq!(code, 2, "a bad --until is a usage error: {out}");
    assert!(out.contains("LSN"), "{out}");
}

#[test]
fn a_misspelt_key_names_its_place_and_the_closest_key() {
    let (_dir, path) = config(
        "[source]\ntype = \"postgres\"\nurl = \"postgres://u@h/db\"\nslott = \"x\"\n\n[spool]\ndir = \"/tmp/x\"\n",
    );
    let (code, out) = ferry(&["run", "--config", &path]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains(&format!("{path}:4:")), "{out}");
    assert!(out.contains("did you mean `slot`"), "{out}");
    assert_eq!(out.trim().lines().count(), 1, "one line: {out}");
}

#[test]
fn run_refuses_options_that_do_not_apply_and_bad_tls_settings() {
    let (_dir, path) = config(
        "[source]\ntype = \"mysql\"\nurl = \"mysql://u@127.0.0.1:1/db\"\nserver_id = 7\n\n[spool]\ndir = \"/tmp/x\"\n",
    );
    let (code, out) = ferry(&["run", "--config", &path, "--until", "0/10"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("does not apply to a mysql source"), "{out}");

    let (dir, path) = config("");
    let spool = dir.path().join("spool");
    std::fs::write(
        &path,
        format!(
            "[source]\ntype = \"postgres\"\nurl = \"postgres://u@127.0.0.1:1/db?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem\"\n\n[spool]\ndir = \"{}\"\n",
            spool.display()
        ),
    )
    .unwrap();
    let (code, out) = ferry(&["run", "--config", &path]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("sslrootcert /nonexistent/ca.pem"), "{out}");
}

#[test]
fn every_bad_input_is_one_line_and_exit_1_without_a_panic() {
    let base = "[source]\ntype = \"postgres\"\nurl = \"postgres://u@127.0.0.1:1/db\"\n\n[spool]\ndir = \"/tmp/ferry-cli-x\"\n";
    let cases: [(String, &str); 7] = [
        ("[source\ntype = 1".into(), "ferry.toml:1:8: unclosed table"),
        (
            base.replace("\"postgres\"\nurl", "\"oracle\"\nurl"),
            "postgres",
        ),
        (
            base.replace("postgres://u@", "postgres://u:${FERRY_TEST_UNSET_VAR}@"),
            "FERRY_TEST_UNSET_VAR",
        ),
        (
            base.replace(
                "postgres://u@",
                "postgres://u:${file:/nonexistent/ferry-pw}@",
            ),
            "secret file /nonexistent/ferry-pw",
        ),
        (
            format!(
                "{base}\n[[sink]]\nname = \"s\"\ntype = \"postgres\"\nurl = \"postgres://u@h/db\"\non_error = \"ignore\"\n"
            ),
            "halt",
        ),
        (
            format!("{base}\n[[sink]]\nname = \"k\"\ntype = \"kafka\"\nbrokers = \"b:9092\"\n"),
            "needs `topic`",
        ),
        (
            format!("shutdown_grace_seconds = \"ten\"\n{base}"),
            "expected a whole number",
        ),
    ];
    for (text, expect) in cases {
        let (_dir, path) = config(&text);
        for cmd in ["run", "check"] {
            let (code, out) = ferry(&[cmd, "--config", &path]);
            assert_eq!(code, 1, "{cmd} {text:?}: {out}");
            assert!(out.contains(expect), "{cmd} {text:?}: {out}");
            assert_eq!(out.trim().lines().count(), 1, "one line: {out}");
            assert!(
                !out.contains("panicked") && !out.contains("backtrace"),
                "{out}"
            );
        }
    }
    // An unreachable host: `check` names it and exits 1.
    let (_dir, path) = config(base);
    let (code, out) = ferry(&["check", "--config", &path]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("error: cannot connect to the source"), "{out}");
    assert!(!out.contains("panicked"), "{out}");
}
