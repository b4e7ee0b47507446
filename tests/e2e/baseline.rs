//! `setup`, `reset` and per-test databases on real Postgres and Redis: the
//! baseline fixture's tests each expect what setup left and change it.

use std::path::{Path, PathBuf};

use crate::support::*;

fn baseline_manifest() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/baseline/Cargo.toml")
}

fn baseline_run(config_name: &str, args: &[&str]) -> std::process::Output {
    let out = run(ephem()
        .arg("test")
        .arg("--manifest-path")
        .arg(baseline_manifest())
        .arg("--config")
        .arg(config(config_name))
        .args(args));
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if let Some(run_id) = run_id_of(&stderr) {
        // The run removes its environment; this checks it did.
        assert_nothing_left(&run_id);
    }
    out
}

fn summary(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr)
        .lines()
        .find(|l| l.starts_with("Summary"))
        .unwrap_or_default()
        .to_owned()
}

/// Four tests at once in one shard, each on a database of its own cloned
/// from what setup left.
#[test]
fn per_test_databases_let_a_shards_tests_run_at_once() {
    let _daemon = shared_daemon();
    let out = baseline_run("env-baseline-per-test.toml", &["-j", "4", "pg_"]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert!(
        summary(&out).contains("4 tests run: 4 passed"),
        "{}",
        describe(&out)
    );
}

/// The same tests with resets: one at a time, each finding the baseline
/// again (Postgres restored from its template, Redis flushed).
#[test]
fn resets_restore_the_baseline_before_every_test() {
    let _daemon = shared_daemon();
    let out = baseline_run("env-baseline-reset.toml", &["-j", "4"]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert!(
        summary(&out).contains("6 tests run: 6 passed"),
        "{}",
        describe(&out)
    );
}

/// Without either, the same tests at once see each other: the fixture can
/// tell, so the two tests above prove something.
#[test]
fn without_reset_or_per_test_databases_the_tests_collide() {
    let _daemon = shared_daemon();
    let out = baseline_run("env-baseline-shared.toml", &["-j", "4", "--no-fail-fast"]);
    assert_eq!(out.status.code(), Some(100), "{}", describe(&out));
}

fn write_config(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("ephem.toml");
    std::fs::write(
        &path,
        format!("[images]\nmirror = \"localhost:5000\"\n\n{text}"),
    )
    .unwrap();
    path
}

fn run_with(config: &Path) -> std::process::Output {
    let out = run(ephem()
        .arg("test")
        .arg("--manifest-path")
        .arg(baseline_manifest())
        .arg("--config")
        .arg(config)
        .arg("pg_one"));
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if let Some(run_id) = run_id_of(&stderr) {
        assert_nothing_left(&run_id);
    }
    out
}

/// A setup that fails: exit 102 with its output, nothing kept.
#[test]
fn a_failing_setup_exits_102_with_its_output() {
    let _daemon = shared_daemon();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        "[services.box]\nimage = \"busybox:1.36\"\ncmd = [\"sleep\", \"300\"]\n\
         setup = { exec = [\"sh\", \"-c\", \"echo migration 3 failed: no such table; exit 4\"] }\n",
    );
    let out = run_with(&config);
    assert_eq!(out.status.code(), Some(102), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("setup exited with code 4"), "{stderr}");
    assert!(
        stderr.contains("migration 3 failed: no such table"),
        "{stderr}"
    );
}

/// Per-test databases on a service that is not Postgres: exit 102 naming
/// the service and what was tried.
#[test]
fn per_test_databases_on_a_service_that_is_not_postgres_exit_102() {
    let _daemon = shared_daemon();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        "[services.web]\nimage = \"busybox:1.36\"\n\
         cmd = [\"sh\", \"-c\", \"mkdir -p /www && exec httpd -f -p 5432 -h /www\"]\n\
         ports = [5432]\nwait = { tcp = 5432 }\ndatabases = \"per-test\"\n",
    );
    let out = run_with(&config);
    assert_eq!(out.status.code(), Some(102), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let error = stderr
        .lines()
        .find(|l| l.starts_with("error:"))
        .unwrap_or_default();
    assert!(error.contains("service web"), "{error}");
    assert!(
        error.contains("databases = \"per-test\" needs a Postgres-compatible server on port 5432"),
        "{error}"
    );
}

/// Configurations that cannot work are refused before anything starts.
#[test]
fn impossible_baselines_exit_2_with_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    for (text, needle) in [
        (
            "[services.cache]\nimage = \"redis:7-bookworm\"\nports = [6379]\n\
             setup = { exec = [\"redis-cli\", \"SET\", \"a\", \"1\"] }\nreset = \"redis\"\n",
            "ephem.toml:8:9: services.cache.reset: a Redis baseline is empty",
        ),
        (
            "[services.db]\nimage = \"postgres:15-bookworm\"\nreset = \"postgres\"\n",
            "services.db: reset = \"postgres\" talks to the service from the runner on port 5432; add 5432 to ports",
        ),
        (
            "[services.db]\nimage = \"postgres:15-bookworm\"\nports = [5432]\ndatabases = \"per-suite\"\n",
            "services.db.databases: \"per-suite\" is not a databases mode",
        ),
        (
            "[services.db]\nimage = \"postgres:15-bookworm\"\nports = [5432]\nreset = \"mysql\"\n",
            "services.db.reset: unknown reset \"mysql\"",
        ),
        (
            "[services.db]\nimage = \"postgres:15-bookworm\"\nports = [5432]\nenv = { X = \"${database}\" }\n",
            "${database} is the test's own database",
        ),
    ] {
        let config = write_config(dir.path(), text);
        let out = run(ephem()
            .arg("test")
            .arg("--manifest-path")
            .arg(baseline_manifest())
            .arg("--config")
            .arg(&config));
        assert_eq!(out.status.code(), Some(2), "{text}: {}", describe(&out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(needle), "{needle:?} not in {stderr}");
    }
}
