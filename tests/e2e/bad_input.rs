//! Bad input: a one-line error, the documented exit code, never a panic.

use std::path::Path;

use crate::support::*;

/// Runs cargo-ephem with `args` and checks the exit code and that stderr is
/// one `error:` line mentioning `needle`.
fn rejects(args: &[&str], code: i32, needle: &str) {
    let out = run(ephem().args(args));
    assert_eq!(
        out.status.code(),
        Some(code),
        "{args:?}: {}",
        describe(&out)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error")).collect();
    assert_eq!(
        errors.len(),
        1,
        "{args:?}: expected one error line:\n{stderr}"
    );
    assert!(
        errors[0].contains(needle),
        "{args:?}: {:?} lacks {needle:?}",
        errors[0]
    );
    assert!(
        !stderr.contains("panicked") && !stderr.contains("RUST_BACKTRACE"),
        "{stderr}"
    );
}

#[test]
fn bad_flags_exit_2() {
    rejects(&["test", "--bogus"], 2, "--bogus");
    rejects(&["test", "--partition", "slice:5/4"], 2, "between 1 and 4");
    rejects(&["test", "--partition", "slice:0/4"], 2, "between 1 and 4");
    rejects(&["test", "--partition", "slice:1/0"], 2, "at least 1");
    rejects(
        &["test", "--partition", "round:1/2"],
        2,
        "unknown partition kind",
    );
    rejects(&["test", "--partition", "slice"], 2, "KIND:M/N");
    rejects(&["test", "--shards", "0"], 2, "--shards");
    rejects(
        &["test", "--shards", "2", "--partition", "hash:1/2"],
        2,
        "cannot be used with",
    );
    rejects(&["test", "--test-timeout", "soon"], 2, "--test-timeout");
    rejects(&["test", "-j", "0"], 2, "allowed: 1 to 4096");
    rejects(&["frobnicate"], 2, "frobnicate");
}

#[test]
fn bad_timings_exit_2_before_building() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = fixture_manifest().display().to_string();
    let missing = dir.path().join("missing.xml").display().to_string();
    rejects(
        &["test", "--manifest-path", &manifest, "--timings", &missing],
        2,
        "missing.xml",
    );
    let bad = dir.path().join("bad.xml");
    std::fs::write(&bad, "<testsuites><testsuite name=").unwrap();
    let bad = bad.display().to_string();
    rejects(
        &["test", "--manifest-path", &manifest, "--timings", &bad],
        2,
        "bad.xml",
    );
    let surefire = dir.path().join("surefire.xml");
    std::fs::write(
        &surefire,
        r#"<testsuite name="x" tests="0" failures="0" errors="0"/>"#,
    )
    .unwrap();
    let surefire = surefire.display().to_string();
    rejects(
        &["test", "--manifest-path", &manifest, "--timings", &surefire],
        2,
        "<testsuites>",
    );
    rejects(
        &[
            "test",
            "--manifest-path",
            &manifest,
            "--partition",
            "duration:1/2",
        ],
        2,
        "--timings",
    );
    rejects(&["junit", "merge", "-o", "/dev/null", &bad], 2, "bad.xml");
}

#[test]
fn a_filter_that_matches_nothing_exits_0_with_a_note() {
    let out = run(ephem_test().arg("no_such_test_anywhere"));
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("note: no test matches"));
    let out = run(ephem_test().args(["no_such_test_anywhere", "--no-tests", "fail"]));
    assert_eq!(out.status.code(), Some(4), "{}", describe(&out));
}

fn write_crate(dir: &Path, name: &str, cargo_extra: &str, files: &[(&str, &str)]) {
    std::fs::write(
        dir.join("Cargo.toml"),
        format!("[package]\nname = \"{name}\"\nversion = \"0.1.0\"\nedition = \"2021\"\n[workspace]\n{cargo_extra}"),
    )
    .unwrap();
    for (path, text) in files {
        let p = dir.join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }
}

#[test]
fn a_build_failure_shows_cargos_errors_and_exits_101() {
    let dir = tempfile::tempdir().unwrap();
    write_crate(
        dir.path(),
        "broken",
        "",
        &[("src/lib.rs", "pub fn f() -> u32 { \"not a number\" }\n")],
    );
    let out = run(ephem()
        .arg("test")
        .arg("--manifest-path")
        .arg(dir.path().join("Cargo.toml")));
    assert_eq!(out.status.code(), Some(101), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("mismatched types"),
        "cargo's diagnostics are shown: {stderr}"
    );
    assert!(stderr.contains("error: build failed"), "{stderr}");
}

#[test]
fn a_binary_with_unexpected_list_output_is_named() {
    let dir = tempfile::tempdir().unwrap();
    write_crate(
        dir.path(),
        "oddharness",
        "[[test]]\nname = \"custom\"\nharness = false\n",
        &[
            ("src/lib.rs", ""),
            (
                "tests/custom.rs",
                "fn main() { println!(\"hello from a custom harness\"); }\n",
            ),
        ],
    );
    let out = run(ephem()
        .arg("test")
        .arg("--manifest-path")
        .arg(dir.path().join("Cargo.toml")));
    assert_eq!(out.status.code(), Some(104), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line = stderr.lines().find(|l| l.starts_with("error:")).unwrap();
    assert!(line.contains("oddharness::custom"), "{line}");
    assert!(line.contains("hello from a custom harness"), "{line}");
}

/// A crate whose build fails: a check that reaches the build exits 101, so
/// exit 2 proves the input was rejected before it.
fn unbuildable(dir: &Path) -> String {
    write_crate(
        dir,
        "unbuildable",
        "",
        &[("src/lib.rs", "compile_error!(\"built\");\n")],
    );
    dir.join("Cargo.toml").display().to_string()
}

#[test]
fn absurd_numbers_exit_2_before_the_build_naming_the_range() {
    // A run that reaches the daemon sweeps abandoned runs first: not while
    // a test that plants one (reliability::gc_*) holds the daemon.
    let _daemon = shared_daemon();
    let dir = tempfile::tempdir().unwrap();
    let manifest = unbuildable(dir.path());
    let huge = "10000000000000000000s";
    for (args, range) in [
        (vec!["--test-timeout", huge], "1ms to 365days"),
        (vec!["--slow-timeout", huge], "1ms to 365days"),
        (vec!["--env-ttl", huge], "1ms to 365days"),
        (vec!["--shards", "4000000000"], "1 to 1024"),
        (vec!["--partition", "slice:1/4000000000"], "1 to 1024"),
        (vec!["--retries", "4294967295"], "0 to 100"),
        (vec!["-j", "99999999999999999999999"], "1 to 4096"),
    ] {
        let mut all = vec!["test", "--manifest-path", &manifest];
        all.extend(&args);
        rejects(&all, 2, range);
    }
    let config = dir.path().join("ephem.toml");
    std::fs::write(
        &config,
        format!("[services.web]\nimage = \"busybox:1.36\"\nstartup-timeout = \"{huge}\"\n"),
    )
    .unwrap();
    rejects(
        &["test", "--manifest-path", &manifest],
        2,
        "ephem.toml:3:19: services.web.startup-timeout",
    );
}

#[test]
fn an_unknown_backend_exits_2_naming_the_line_and_the_backends() {
    // A run that reaches the daemon sweeps abandoned runs first: not while
    // a test that plants one (reliability::gc_*) holds the daemon.
    let _daemon = shared_daemon();
    let dir = tempfile::tempdir().unwrap();
    let manifest = unbuildable(dir.path());
    std::fs::write(
        dir.path().join("ephem.toml"),
        "# environments\nbackend = \"podman\"\n",
    )
    .unwrap();
    rejects(
        &["test", "--manifest-path", &manifest],
        2,
        "ephem.toml:2:11: backend: unknown backend \"podman\"; the backends are: docker",
    );
    for command in ["test", "up", "down", "gc"] {
        rejects(
            &[command, "--backend", "k8s"],
            2,
            "the backends are: docker",
        );
    }
}

#[test]
fn an_unwritable_junit_path_exits_2_before_the_build() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = unbuildable(dir.path());
    rejects(
        &[
            "test",
            "--manifest-path",
            &manifest,
            "--junit",
            "/proc/no/junit.xml",
        ],
        2,
        "--junit /proc/no/junit.xml: cannot write a report there",
    );
    let folder = dir.path().display().to_string();
    rejects(
        &["test", "--manifest-path", &manifest, "--junit", &folder],
        2,
        "is a folder",
    );
}
