//! What a run selects, as the command line says it: cargo's target flags,
//! a shard that turns out empty, suites that need their shard to
//! themselves. (ephem-core's `tests/pipeline.rs` covers the rest of the
//! selection without the CLI.)

use std::path::Path;

use crate::support::*;

/// The flags reach cargo (ephem-core's pipeline tests check which binaries
/// run): an unknown target is cargo's error, before anything runs.
#[test]
fn cargo_target_flags_reach_cargo() {
    let out = run(ephem_test().args(["--test", "no_such_target"]));
    assert_eq!(out.status.code(), Some(101), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("no test target named `no_such_target`"),
        "{stderr}"
    );
}

/// `--partition slice:M/N` for the shards past the last test: exit 0, a
/// report, and a line that says so.
#[test]
fn a_shard_with_no_test_exits_0_and_still_writes_its_report() {
    let dir = tempfile::tempdir().unwrap();
    let junit = dir.path().join("job.xml");
    // `pass_add` matches one test, so shards 2 to 4 of 4 are empty.
    let out = run(ephem_test()
        .args(["pass_add", "--partition", "slice:4/4", "--no-tests", "fail"])
        .arg("--junit")
        .arg(&junit));
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("shard 4 of 4 is empty: the other shards hold all 1 tests to run"),
        "{stderr}"
    );
    for file in [junit.clone(), dir.path().join("job-shard-4.xml")] {
        let report = read_junit(&file);
        assert_eq!(report.tests, 0, "{}", file.display());
        validate_xsd(&file);
    }
}

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// The `excl_` tests fail when another test of their shard runs at the
/// same time (they hold a lock file per shard). With -j 3 in one shard they
/// overlap; `[shards] test-threads = 1` makes the shard run them one at a
/// time while -j stays 3.
#[test]
fn shards_test_threads_runs_a_shards_tests_one_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(ephem_test()
        .args(["-j", "3", "--no-fail-fast", "--no-env", "excl_"])
        .env("FIXTURE_OUT", dir.path()));
    assert_eq!(
        out.status.code(),
        Some(100),
        "without the key the tests overlap and fail: {}",
        describe(&out)
    );

    let serial = write(dir.path(), "serial.toml", "[shards]\ntest-threads = 1\n");
    let out = run(ephem_test()
        .args(["-j", "3", "excl_", "--config"])
        .arg(&serial)
        .env("FIXTURE_OUT", dir.path()));
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("3 tests run: 3 passed"));
}
