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
    let out = baseline_run("env-baseline-reset.toml", &["-j", "4", "pg_", "redis_"]);
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
    let out = baseline_run(
        "env-baseline-shared.toml",
        &["-j", "4", "--no-fail-fast", "pg_", "redis_"],
    );
    assert_eq!(out.status.code(), Some(100), "{}", describe(&out));
}

/// `n` tests run, all passed: the run's exit and summary say so.
fn assert_all_passed(out: &std::process::Output, n: usize) {
    assert_eq!(out.status.code(), Some(0), "{}", describe(out));
    assert!(
        summary(out).contains(&format!("{n} tests run: {n} passed")),
        "{}",
        describe(out)
    );
}

/// Tests that change rows and sequences, and tests that change the
/// schema, comments, grants, large objects and statistics: each finds
/// exactly the baseline (a reset restored in place must notice what it
/// cannot undo and swap a copy in instead).
#[test]
fn resets_undo_every_kind_of_change_a_test_makes() {
    let _daemon = shared_daemon();
    let out = baseline_run("env-baseline-reset.toml", &["inplace_"]);
    assert_all_passed(&out, 15);
}

/// Resets after tests that changed only rows and sequences restore the
/// used databases in place and hand them out again: eight tests see at
/// most the five databases the shard starts with (the original and the
/// pool's four ready copies), where a fresh copy per reset would show
/// eight; and each test finds the baseline.
#[test]
fn resets_after_row_changes_restore_in_place() {
    let _daemon = shared_daemon();
    let dir = tempfile::tempdir().unwrap();
    let out = run(ephem()
        .arg("test")
        .arg("--manifest-path")
        .arg(baseline_manifest())
        .arg("--config")
        .arg(config("env-baseline-reset.toml"))
        .arg("inplace_rows_")
        .env("BASELINE_RECORD_DIR", dir.path()));
    if let Some(run_id) = run_id_of(&String::from_utf8_lossy(&out.stderr)) {
        assert_nothing_left(&run_id);
    }
    assert_all_passed(&out, 8);
    let oids: std::collections::BTreeSet<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
        .collect();
    let recorded = std::fs::read_dir(dir.path()).unwrap().count();
    assert_eq!(recorded, 8, "every test recorded its database");
    assert!(
        oids.len() <= 5,
        "the 8 tests saw {} databases: resets made fresh copies instead of restoring \
         the used ones\n{}",
        oids.len(),
        describe(&out)
    );
}

/// A reset restores what tests see of the database itself, not only its
/// tables: owner, privileges (granted by the owner and by another role),
/// settings for everyone and for one role, comment, connection limit. Each
/// `attrs_` test checks all of them, then changes all of them.
#[test]
fn resets_restore_owner_privileges_and_settings() {
    let _daemon = shared_daemon();
    let out = baseline_run("env-baseline-reset.toml", &["attrs_"]);
    assert_all_passed(&out, 3);
}

/// Per-test databases are copies of the same kind: each test's own
/// database has the baseline's owner, privileges and settings.
#[test]
fn per_test_databases_have_the_baselines_owner_privileges_and_settings() {
    let _daemon = shared_daemon();
    let out = baseline_run("env-baseline-per-test.toml", &["-j", "4", "attrs_"]);
    assert_all_passed(&out, 3);
}

/// Each test leaves a pool of 8 sessions behind that reconnects as soon as
/// a reset ends it (tests/fixtures/baseline/src/bin/stray-client.rs): the
/// resets win the race against it and every test finds the baseline.
#[test]
fn resets_win_against_clients_that_keep_reconnecting() {
    let _daemon = shared_daemon();
    let out = baseline_run("env-baseline-reset.toml", &["stray_reconnect_"]);
    assert_all_passed(&out, 4);
}

/// Each test leaves a client that connects to every database it can,
/// the runner's ready copies among them: the copy being swapped in cannot
/// be held open, so no swap stops halfway with the database renamed away.
#[test]
fn a_client_in_the_copies_cannot_cost_the_shard_its_database() {
    let _daemon = shared_daemon();
    let out = baseline_run("env-baseline-reset.toml", &["stray_copies_"]);
    assert_all_passed(&out, 4);
}

/// The first test leaves a client that stalls the next reset halfway
/// (holding the ready copies' locks) and ends the runner's session there,
/// as a crash of the runner would: the swap is one transaction, so the
/// database is whole; the reset tries again on a new session and the later
/// tests find the baseline (the second checks the session was ended).
#[test]
fn a_reset_cut_halfway_leaves_the_database_whole() {
    let _daemon = shared_daemon();
    let out = baseline_run("env-baseline-reset.toml", &["stray_crash_"]);
    assert_all_passed(&out, 3);
}

/// A test that drops the database (from another one): the next reset puts
/// a copy of the baseline under its name.
#[test]
fn a_reset_brings_back_a_dropped_database() {
    let _daemon = shared_daemon();
    let out = baseline_run("env-baseline-reset.toml", &["stray_drop_"]);
    assert_all_passed(&out, 2);
}

/// A kept environment taken over by `--reuse` resets the same way: the
/// copies get the attributes kept on the template, and Redis's password is
/// read back from its container's command. Exclusive: `down` in reuse.rs
/// would remove this test's kept environment between its two runs.
#[test]
fn reused_environments_reset_owner_privileges_settings_and_redis_with_a_password() {
    let _daemon = exclusive_daemon();
    let dir = tempfile::tempdir().unwrap();
    let postgres = std::fs::read_to_string(config("env-baseline-reset.toml")).unwrap();
    let postgres = &postgres[postgres.find("[services.postgres]").unwrap()..];
    let postgres = &postgres[..postgres.find("[services.redis]").unwrap()];
    let redis = std::fs::read_to_string(config("env-baseline-redis-auth.toml")).unwrap();
    let redis = &redis[redis.find("[services.redis]").unwrap()..];
    // Keys of this test's own: a kept environment of another run is not taken.
    let marker = format!("REUSE_MARKER = \"{}\", TZ", std::process::id());
    let path = write_config(
        dir.path(),
        &format!("{}{redis}", postgres.replace("TZ", &marker)),
    );
    let reuse = || {
        run(ephem()
            .arg("test")
            .arg("--manifest-path")
            .arg(baseline_manifest())
            .arg("--config")
            .arg(&path)
            .args(["--reuse", "attrs_", "redis_"]))
    };
    let first = reuse();
    let first_run = run_id_of(&String::from_utf8_lossy(&first.stderr)).expect("a run id");
    let _cleanup = Cleanup(Some(first_run.clone()));
    assert_all_passed(&first, 5);
    let second = reuse();
    let second_run = run_id_of(&String::from_utf8_lossy(&second.stderr)).expect("a run id");
    let _cleanup_second = Cleanup(Some(second_run.clone()));
    assert_all_passed(&second, 5);
    assert!(
        resources_of(&second_run).is_empty(),
        "the second run did not take the kept environment over\n{}",
        describe(&second)
    );
    assert!(!resources_of(&first_run).is_empty(), "nothing was kept");
}

/// A reset that cannot get the database to itself (a prepared transaction
/// left in it holds it, and no session can be ended to clear it) fails the
/// test after its attempts, saying why and that the database is left as it
/// was; the database is there afterwards (the environment is kept to look).
#[test]
fn a_reset_that_cannot_swap_fails_the_test_and_keeps_the_database() {
    let _daemon = shared_daemon();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        "[services.postgres]\nimage = \"postgres:15-bookworm\"\n\
         env = { POSTGRES_PASSWORD = \"${random}\", POSTGRES_DB = \"app\", POSTGRES_INITDB_ARGS = \"--no-sync\" }\n\
         ports = [5432]\nargs = [\"-c\", \"fsync=off\", \"-c\", \"max_prepared_transactions=4\"]\n\
         wait = { log = \"database system is ready to accept connections\", times = 2 }\n\
         reset = \"postgres\"\n\
         export = { DATABASE_URL = \"postgres://postgres:${env.POSTGRES_PASSWORD}@${host}:${port.5432}/${database}\" }\n",
    );
    let out = run(ephem()
        .arg("test")
        .arg("--manifest-path")
        .arg(baseline_manifest())
        .arg("--config")
        .arg(&config)
        .args(["--keep-env", "stray_prepared_"]));
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let _cleanup = Cleanup(run_id_of(&stderr));
    assert_eq!(out.status.code(), Some(100), "{}", describe(&out));
    let needle = "the environment could not be prepared for this test: shard 1: \
        reset of service postgres: could not swap a fresh copy of the baseline into database app \
        (3 attempts): database \"app\" is being accessed by other users \
        (There is 1 prepared transaction using the database.); \
        app is left as the previous test left it";
    assert!(stderr.contains(needle), "{needle:?} not in {stderr}");
    let container = stderr
        .split("(container ")
        .nth(1)
        .and_then(|rest| rest.split(')').next())
        .unwrap_or_else(|| panic!("no kept container in {stderr}"));
    let listed = std::process::Command::new("docker")
        .args([
            "exec",
            container,
            "psql",
            "-U",
            "postgres",
            "-d",
            "template1",
            "-Atc",
        ])
        .arg("SELECT datname FROM pg_database WHERE datname = 'app'")
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&listed.stdout).trim(),
        "app",
        "{}",
        String::from_utf8_lossy(&listed.stderr)
    );
}

/// A Redis that requires a password (`--requirepass` in `args`, the value
/// from its env): `reset = "redis"` logs in before every flush.
#[test]
fn redis_resets_log_in_with_the_password_from_the_command() {
    let _daemon = shared_daemon();
    let out = baseline_run("env-baseline-redis-auth.toml", &["redis_"]);
    assert_all_passed(&out, 2);
}

/// Redis started by a shell command the runner cannot read: the password
/// comes from `REDIS_PASSWORD` in the service's env.
#[test]
fn redis_resets_log_in_with_redis_password_from_the_env() {
    let _daemon = shared_daemon();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &format!(
            "{REDIS_BY_SHELL}env = {{ REDIS_PASSWORD = \"${{random}}\" }}\n\
             export = {{ REDIS_URL = \"redis://:${{env.REDIS_PASSWORD}}@${{host}}:${{port.6379}}\" }}\n"
        ),
    );
    let out = run_with_filter(&config, "redis_");
    assert_all_passed(&out, 2);
}

/// A Redis whose server takes its password from `$SECRET` (else
/// `$REDIS_PASSWORD`) in a shell command, which the runner does not read
/// (`$${` is a literal `${` in ephem.toml).
const REDIS_BY_SHELL: &str = "[services.redis]\nimage = \"redis:7-bookworm\"\n\
    cmd = [\"sh\", \"-c\", \"exec docker-entrypoint.sh redis-server --requirepass \\\"$${SECRET:-$REDIS_PASSWORD}\\\"\"]\n\
    ports = [6379]\nwait = { tcp = 6379 }\nreset = \"redis\"\n";

/// Without the password, or with a wrong one, the shard fails at
/// provisioning (exit 102) with a message naming the service and where the
/// password was looked for; the password never shows.
#[test]
fn redis_resets_without_the_right_password_exit_102_naming_the_service() {
    let _daemon = shared_daemon();
    let dir = tempfile::tempdir().unwrap();
    for (env, needle) in [
        (
            "env = { SECRET = \"${random}\" }\n",
            "reset = \"redis\" cannot log in: Redis requires a password (NOAUTH); cargo-ephem reads it from `--requirepass` in the service's command (cmd or args) or from REDIS_PASSWORD in its env, and found neither",
        ),
        (
            "env = { SECRET = \"${random}\", REDIS_PASSWORD = \"not-the-password\" }\n",
            "reset = \"redis\" cannot log in: Redis refused the password from REDIS_PASSWORD in its env (WRONGPASS)",
        ),
    ] {
        let config = write_config(dir.path(), &format!("{REDIS_BY_SHELL}{env}"));
        let out = run_with_filter(&config, "redis_");
        assert_eq!(out.status.code(), Some(102), "{}", describe(&out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        let error = stderr
            .lines()
            .find(|l| l.starts_with("error:"))
            .unwrap_or_default();
        assert!(error.contains("service redis"), "{error}");
        assert!(error.contains(needle), "{needle:?} not in {error}");
        assert!(!stderr.contains("not-the-password"), "{stderr}");
    }
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
    run_with_filter(config, "pg_one")
}

fn run_with_filter(config: &Path, filter: &str) -> std::process::Output {
    let out = run(ephem()
        .arg("test")
        .arg("--manifest-path")
        .arg(baseline_manifest())
        .arg("--config")
        .arg(config)
        .arg(filter));
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
    // A run that reaches the daemon sweeps abandoned runs first: not while
    // a test that plants one (reliability::gc_*) holds the daemon.
    let _daemon = shared_daemon();
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
