//! Running: one process per test with the right environment, fail-fast,
//! timeouts, and no orphaned processes.

use quick_junit::TestCaseStatus;

use crate::support::*;

#[test]
fn every_test_gets_its_shard_and_run_in_its_environment() {
    let dir = tempfile::tempdir().unwrap();
    let junit = dir.path().join("junit.xml");
    let out = run(ephem_test()
        .args(["--shards", "3", "env_", "--junit"])
        .arg(&junit)
        .env("FIXTURE_OUT", dir.path()));
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));

    let unit = read_env_file(&dir.path().join("tests__env_unit.env"));
    let integ = read_env_file(&dir.path().join("env_integration.env"));
    let other = read_env_file(&dir.path().join("tests__env_other.env"));
    assert_eq!(unit["EPHEM_TEST_NAME"], "tests::env_unit");
    assert_eq!(unit["EPHEM_ATTEMPT"], "1");
    assert_eq!(unit["EPHEM_SHARD_COUNT"], "3");
    assert_eq!(unit["EPHEM_BINARY_ID"], "fixture-lib");
    assert_eq!(integ["EPHEM_BINARY_ID"], "fixture-lib::integration");
    assert_eq!(unit["EPHEM_RUN_ID"], integ["EPHEM_RUN_ID"]);
    assert!(!unit["EPHEM_RUN_ID"].is_empty());
    assert_eq!(unit["CARGO_PKG_NAME"], "fixture-lib");
    assert_eq!(unit["CARGO_PKG_VERSION"], "0.3.1");
    assert_eq!(unit["CWD"], unit["CARGO_MANIFEST_DIR"]);

    // Slice partition of the three env_ tests (sorted by binary id, name):
    // one per shard, and each test's EPHEM_SHARD matches the shard file
    // that reports it.
    let mut shards_seen = Vec::new();
    for (test, env) in [
        ("tests::env_unit", &unit),
        ("env_integration", &integ),
        ("tests::env_other", &other),
    ] {
        let shard: u32 = env["EPHEM_SHARD"].parse().unwrap();
        let report = read_junit(&dir.path().join(format!("junit-shard-{shard}.xml")));
        assert!(
            cases(&report).iter().any(|(_, c)| c.name.as_str() == test),
            "{test} not in shard {shard}'s report"
        );
        shards_seen.push(shard);
    }
    shards_seen.sort();
    assert_eq!(shards_seen, [1, 2, 3]);
}

#[test]
fn fail_fast_stops_scheduling_after_the_first_failure() {
    let dir = tempfile::tempdir().unwrap();
    let junit = dir.path().join("junit.xml");
    // One at a time, so the order is fixed: fixture-lib's tests sorted by
    // name, fail_assert first among them.
    let out = run(ephem_test()
        .args(["-j", "1", "-p", "fixture-lib", "tests::", "--junit"])
        .arg(&junit));
    assert_eq!(out.status.code(), Some(100), "{}", describe(&out));
    let report = read_junit(&junit);
    match &find(&report, "tests::fail_assert").status {
        TestCaseStatus::NonSuccess { .. } => {}
        other => panic!("{other:?}"),
    }
    let not_run = find(&report, "tests::pass_add");
    match &not_run.status {
        TestCaseStatus::Skipped { message, .. } => {
            assert!(message
                .as_ref()
                .unwrap()
                .as_str()
                .contains("--no-fail-fast"))
        }
        other => panic!("pass_add should not have run after the first failure: {other:?}"),
    }
}

#[test]
fn timeout_kills_the_test_and_its_children() {
    let dir = tempfile::tempdir().unwrap();
    let junit = dir.path().join("junit.xml");
    let started = std::time::Instant::now();
    let out = run(ephem_test()
        .args([
            "--ignored",
            "hang_with_child",
            "--test-timeout",
            "1s",
            "--junit",
        ])
        .arg(&junit));
    assert_eq!(out.status.code(), Some(100), "{}", describe(&out));
    // Generous bound: the test sleeps 600 s, so anything near that means no kill.
    assert!(
        started.elapsed().as_secs() < 60,
        "took {:?}",
        started.elapsed()
    );
    let report = read_junit(&junit);
    match &find(&report, "tests::hang_with_child").status {
        TestCaseStatus::NonSuccess { ty, message, .. } => {
            assert_eq!(ty.as_ref().unwrap().as_str(), "timeout");
            assert!(message.as_ref().unwrap().as_str().contains("timed out"));
        }
        other => panic!("{other:?}"),
    }
    assert!(String::from_utf8_lossy(&out.stderr).contains("0 failed, 0 flaky, 1 timed out"));
    // Every process of the run (the test and its `sleep 987` child) is gone.
    let run_id = run_id_of(&String::from_utf8_lossy(&out.stderr)).unwrap();
    assert!(
        wait_for(5, || test_processes_of(&run_id).is_empty()),
        "the test's child `sleep 987` outlived the timeout: {:?}",
        test_processes_of(&run_id)
    );
}

#[test]
fn a_finished_test_leaves_no_process_behind() {
    let started = std::time::Instant::now();
    let out = run(ephem_test().args(["leak_child_process"]));
    // The grandchild sleeps 986 s holding the test's pipes: a runner that
    // waited for them would take that long.
    assert!(
        started.elapsed().as_secs() < 60,
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let run_id = run_id_of(&String::from_utf8_lossy(&out.stderr)).unwrap();
    assert!(
        wait_for(5, || test_processes_of(&run_id).is_empty()),
        "the grandchild `sleep 986` outlived its test: {:?}",
        test_processes_of(&run_id)
    );
}

#[test]
fn ignored_tests_run_with_include_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let junit = dir.path().join("junit.xml");
    let out = run(ephem_test()
        .args(["--include-ignored", "ignored_plain", "--junit"])
        .arg(&junit));
    assert_eq!(out.status.code(), Some(100), "{}", describe(&out));
    let report = read_junit(&junit);
    assert!(matches!(
        find(&report, "tests::ignored_plain").status,
        TestCaseStatus::NonSuccess { .. }
    ));
}

#[test]
fn a_shard_never_runs_more_than_its_share_of_threads() {
    // Slice over 2 shards: excl_a and excl_c in shard 1, excl_b (instant) in
    // shard 2. With -j 2 each shard gets one slot, so when excl_b is done its
    // slot must not go to shard 1's second test while excl_a still runs.
    let dir = tempfile::tempdir().unwrap();
    let out = run(ephem_test()
        .args(["--shards", "2", "-j", "2", "excl_"])
        .env("FIXTURE_OUT", dir.path()));
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("3 tests run: 3 passed"));
}
