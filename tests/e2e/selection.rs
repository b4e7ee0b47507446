//! What a run selects: cargo's target flags, shards that turn out empty,
//! `--no-tests` over the whole selection, and suites that need their shard
//! to themselves.

use std::path::Path;

use crate::support::*;

fn suites(report: &quick_junit::Report) -> Vec<String> {
    let mut names: Vec<String> = report
        .test_suites
        .iter()
        .filter(|s| !s.test_cases.is_empty())
        .map(|s| s.name.to_string())
        .collect();
    names.sort();
    names
}

#[test]
fn cargo_target_flags_select_the_binaries_that_run() {
    let dir = tempfile::tempdir().unwrap();
    let junit = dir.path().join("junit.xml");
    let out = run(ephem_test()
        .args(["--test", "integration", "pass_", "--junit"])
        .arg(&junit));
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert_eq!(suites(&read_junit(&junit)), ["fixture-lib::integration"]);

    let out = run(ephem_test().args(["--lib", "pass_", "--junit"]).arg(&junit));
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert_eq!(
        suites(&read_junit(&junit)),
        ["fixture-lib", "fixture-other"]
    );

    // An unknown target is cargo's error, before anything runs.
    let out = run(ephem_test().args(["--test", "no_such_target"]));
    assert_eq!(out.status.code(), Some(101), "{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no_such_target"));
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

#[test]
fn a_shard_of_only_ignored_tests_reports_them_as_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let junit = dir.path().join("job.xml");
    // `ignored_plain` (ignored) and `pass_add` sort as fixture-lib's
    // tests::ignored_plain, tests::pass_add: slice 1/2 gets the ignored one.
    let out = run(ephem_test()
        .args([
            "--exact",
            "tests::ignored_plain",
            "tests::pass_add",
            "--partition",
            "slice:1/2",
            "--no-tests",
            "fail",
            "--junit",
        ])
        .arg(&junit));
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("shard 1 of 2 is empty: the other shards hold all 1 tests to run; its ignored tests (1) are reported as skipped"),
        "{stderr}"
    );
    let report = read_junit(&junit);
    let case = find(&report, "tests::ignored_plain");
    assert!(is_skipped(case));
    assert_eq!(report.tests, 1);
}

#[test]
fn no_tests_fail_judges_the_whole_selection() {
    let out = run(ephem_test().args([
        "tests::ignored_plain",
        "--exact",
        "--partition",
        "slice:1/2",
        "--no-tests",
        "fail",
    ]));
    assert_eq!(out.status.code(), Some(4), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("error: no test matches"), "{stderr}");
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
