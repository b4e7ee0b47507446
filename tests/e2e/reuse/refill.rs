//! `--reuse` with per-test databases: the run that keeps an environment
//! leaves as many ready copies of the baseline as it took (made by a refill
//! in the container after it exits), and a run that takes the environment
//! over while that refill still runs ends it first, so every test still gets
//! a whole copy of its own.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use super::{baseline_manifest, baseline_workspace, containers_of, write_config, RemoveKept};
use crate::support::*;

/// The baseline fixture's `inplace_` tests but the one that needs a role
/// this configuration's setup does not make: each checks that it finds
/// exactly the baseline, then records its database's oid in `record`.
const TESTS: usize = 14;

/// Seconds the refill sleeps before each copy with the test knob.
const SLOW_REFILL: &str = "2";

fn rerun(config: &Path, record: &Path, slow_refill: bool, guard: &mut RemoveKept) -> Output {
    let mut cmd = ephem();
    cmd.arg("test")
        .arg("--manifest-path")
        .arg(baseline_manifest())
        .arg("--config")
        .arg(config)
        .args([
            "--reuse",
            "-j",
            "4",
            "inplace_",
            "--skip",
            "comment_and_grant",
        ])
        .env("BASELINE_RECORD_DIR", record);
    if slow_refill {
        cmd.env("CARGO_EPHEM_TEST_REFILL_PAUSE", SLOW_REFILL);
    }
    let out = run(&mut cmd);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if let Some(run_id) = run_id_of(&stderr) {
        guard.0.push(run_id);
    }
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert!(
        stderr.contains(&format!("{TESTS} tests run: {TESTS} passed")),
        "{}",
        describe(&out)
    );
    out
}

/// The oids the tests recorded: one distinct database each.
fn recorded(record: &Path) -> BTreeSet<String> {
    let oids: Vec<String> = std::fs::read_dir(record)
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
        .collect();
    assert_eq!(oids.len(), TESTS, "{oids:?}");
    let distinct: BTreeSet<String> = oids.iter().cloned().collect();
    assert_eq!(
        distinct.len(),
        TESTS,
        "a database was handed out twice: {oids:?}"
    );
    distinct
}

fn psql(container: &str, database: &str, sql: &str) -> String {
    let out = Command::new("docker")
        .args([
            "exec", container, "psql", "-X", "-U", "postgres", "-d", database,
        ])
        .args(["-Atc", sql])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// The ready copies in `container`: (name, oid).
fn ready(container: &str) -> Vec<(String, String)> {
    psql(
        container,
        "postgres",
        "SELECT datname || ' ' || oid FROM pg_database WHERE datname ~ '^ephem_t_[0-9]+$'",
    )
    .lines()
    .filter_map(|l| l.split_once(' '))
    .map(|(n, o)| (n.to_owned(), o.to_owned()))
    .collect()
}

/// How many sessions of the refill a kept run left are connected in
/// `container`.
fn refill_sessions(container: &str) -> usize {
    psql(
        container,
        "postgres",
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'cargo-ephem-refill'",
    )
    .parse()
    .unwrap()
}

/// Whether the refill a kept run left is still making copies in `container`.
pub(super) fn refill_running(container: &str) -> bool {
    refill_sessions(container) > 0
}

/// How many used copies (`ephem_u_<n>`) are left in `container`.
fn used(container: &str) -> usize {
    psql(
        container,
        "postgres",
        "SELECT count(*) FROM pg_database WHERE datname ~ '^ephem_u_[0-9]+$'",
    )
    .parse()
    .unwrap()
}

/// Polls until the kept `container` holds `count` ready copies and no used
/// one (the refill drops those the run had no time to).
fn wait_for_ready(container: &str, count: usize) -> Vec<(String, String)> {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let copies = ready(container);
        let used = used(container);
        if copies.len() >= count && used == 0 {
            return copies;
        }
        assert!(
            Instant::now() < deadline,
            "after 90 s the kept environment holds {} ready copies (want {count}) \
             and {used} used ones (want none): {copies:?}",
            copies.len()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// A first `--reuse` run of the tests, its configuration marked with
/// `marker` (a kept environment of its own): the configuration's folder and
/// path, the guard holding the run, and the kept Postgres container.
fn first_kept_run(
    marker: &str,
    slow_refill: bool,
) -> (tempfile::TempDir, PathBuf, RemoveKept, String) {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &format!("{marker}{}", std::process::id()), "");
    let mut guard = RemoveKept(Vec::new());
    let record = tempfile::tempdir().unwrap();
    rerun(&config, record.path(), slow_refill, &mut guard);
    let container = containers_of(&guard.0[0]).into_iter().next().expect("kept");
    (dir, config, guard, container)
}

#[test]
fn a_kept_environment_holds_as_many_ready_copies_as_the_run_took() {
    let _daemon = shared_daemon();
    let _workspace = baseline_workspace();
    let (_dir, config, mut guard, container) = first_kept_run("refill", false);

    // As many as the run's tests took, where the pool alone keeps 4; the
    // used ones dropped.
    let held: BTreeSet<String> = wait_for_ready(&container, TESTS)
        .into_iter()
        .map(|(_, oid)| oid)
        .collect();

    // The next run's tests each get one of them (none made while they
    // wait), and each finds exactly the baseline there (the test checks).
    let record = tempfile::tempdir().unwrap();
    rerun(&config, record.path(), false, &mut guard);
    let got = recorded(record.path());
    assert!(
        got.is_subset(&held),
        "tests got databases {got:?}, not all among the ready copies {held:?}"
    );
    // A rerun leaves the same: its used copies and those it took over
    // dropped, as many ready.
    wait_for_ready(&container, TESTS);
    guard.down_leaves_nothing();
}

#[test]
fn a_rerun_ends_a_refill_still_running_and_each_test_gets_a_whole_copy() {
    let _daemon = shared_daemon();
    let _workspace = baseline_workspace();
    let (_dir, config, mut guard, container) = first_kept_run("midrefill", true);
    let first = guard.0[0].clone();
    // Two sessions make the copies side by side (each sleeps before each
    // copy here, so both are still at it).
    assert_eq!(
        refill_sessions(&container),
        2,
        "the refill after the kept run exited does not run two sessions"
    );

    // Taken over mid-refill: no name collides, no test gets a copy the
    // refill was still making (each checks it finds the whole baseline).
    let record = tempfile::tempdir().unwrap();
    rerun(&config, record.path(), true, &mut guard);
    recorded(record.path());
    assert_eq!(
        containers_of(&first).len(),
        1,
        "the environment was replaced"
    );

    // Whatever is ready now is whole, while this run's refill goes on.
    assert!(refill_running(&container), "the second run left no refill");
    for (name, _) in ready(&container) {
        assert_eq!(
            psql(&container, &name, "SELECT count(*) FROM items"),
            "1",
            "{name}"
        );
    }

    // `down` removes the environment with its refill.
    guard.down_leaves_nothing();
}
