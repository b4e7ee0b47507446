//! A full run of the fixture: every outcome lands in the JUnit report the
//! way Jenkins, GitLab and the GitHub reporters read it.

use std::collections::HashSet;

use quick_junit::{NonSuccessKind, TestCaseStatus};

use crate::support::*;

#[test]
fn full_run_reports_every_outcome() {
    let dir = tempfile::tempdir().unwrap();
    let junit = dir.path().join("junit.xml");
    let out = run(ephem_test()
        .args(["--no-fail-fast", "--retries", "1", "--junit"])
        .arg(&junit)
        .env("FIXTURE_SECRET", "not-masked-without-env"));
    assert_eq!(out.status.code(), Some(100), "{}", describe(&out));
    let report = read_junit(&junit);
    validate_xsd(&junit);
    validate_xsd(&dir.path().join("junit-shard-1.xml"));

    // One suite per binary, named by binary id.
    let suites: HashSet<&str> = report.test_suites.iter().map(|s| s.name.as_str()).collect();
    // (The fixture-tool bin has no tests, so no suite.)
    assert_eq!(
        suites,
        HashSet::from(["fixture-lib", "fixture-lib::integration", "fixture-other"])
    );

    // Every test case has classname, name and time; no duplicates in a suite.
    for suite in &report.test_suites {
        let mut names = HashSet::new();
        for case in &suite.test_cases {
            assert_eq!(
                case.classname.as_ref().map(|c| c.as_str()),
                Some(suite.name.as_str())
            );
            assert!(case.time.is_some(), "{} has no time", case.name.as_str());
            assert!(
                case.timestamp.is_none(),
                "the xunit schema allows no timestamp on a testcase"
            );
            assert!(
                names.insert(case.name.as_str()),
                "duplicate test case {}",
                case.name.as_str()
            );
        }
        // Counts and time recomputed from the cases.
        let failures = suite
            .test_cases
            .iter()
            .filter(|c| {
                matches!(
                    c.status,
                    TestCaseStatus::NonSuccess {
                        kind: NonSuccessKind::Failure,
                        ..
                    }
                )
            })
            .count();
        assert_eq!(suite.failures, failures, "suite {}", suite.name.as_str());
        assert_eq!(suite.tests, suite.test_cases.len());
        let sum: std::time::Duration = suite.test_cases.iter().filter_map(|c| c.time).sum();
        let time = suite.time.unwrap();
        assert!(
            time.abs_diff(sum) < std::time::Duration::from_millis(5),
            "suite {} time {time:?} != sum {sum:?}",
            suite.name.as_str()
        );
    }

    assert!(is_success(find(&report, "tests::pass_add")));
    assert!(
        is_success(find(&report, "pass_runs_package_binary")),
        "CARGO_BIN_EXE_* reaches integration tests"
    );
    assert!(
        is_success(find(&report, "tests::env_unit")),
        "cwd and EPHEM_TEST_NAME are right"
    );

    // A failure: short message attribute, the panic inside, output on the case.
    let fail = find(&report, "tests::fail_assert");
    match &fail.status {
        TestCaseStatus::NonSuccess {
            kind,
            message,
            ty,
            description,
            reruns,
        } => {
            assert_eq!(*kind, NonSuccessKind::Failure);
            let message = message.as_ref().unwrap().as_str();
            assert!(message.contains("two and two make four"), "{message}");
            assert!(!message.contains('\n'));
            assert_eq!(ty.as_ref().unwrap().as_str(), "panic");
            let text = description.as_ref().unwrap().as_str();
            assert!(
                text.contains("panicked at") && text.contains("right: 5"),
                "{text}"
            );
            // The retry stays inside the one test case.
            assert_eq!(reruns.runs.len(), 1);
        }
        other => panic!("fail_assert should fail: {other:?}"),
    }
    let stdout = fail
        .system_out
        .as_ref()
        .expect("output on the test case")
        .as_str();
    assert!(stdout.contains("coloured stdout before the failure"));
    assert!(
        !stdout.contains('\u{1b}'),
        "ANSI escapes are removed: {stdout:?}"
    );

    match &find(&report, "tests::fail_exit_code").status {
        TestCaseStatus::NonSuccess { message, .. } => {
            assert!(message.as_ref().unwrap().as_str().contains("exit code 3"))
        }
        other => panic!("{other:?}"),
    }

    // Flaky: passed, with the failed attempt as flakyFailure.
    match &find(&report, "tests::flaky_first_attempt_fails").status {
        TestCaseStatus::Success { flaky_runs } => {
            assert_eq!(flaky_runs.len(), 1);
            let m = flaky_runs[0].message.as_ref().unwrap().as_str();
            assert!(m.contains("fails on attempt 1"), "{m}");
        }
        other => panic!("flaky test should pass with a flaky run: {other:?}"),
    }

    assert!(is_skipped(find(&report, "tests::ignored_plain")));

    // The summary names counts, the slowest tests and the rerun command.
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("5 failed, 1 flaky, 0 timed out, 3 skipped"),
        "{stderr}"
    );
    assert!(stderr.contains("Slowest tests:"));
    let rerun = stderr
        .lines()
        .skip_while(|l| !l.starts_with("To rerun"))
        .nth(1)
        .unwrap();
    assert!(
        rerun.contains("cargo ephem test") && rerun.contains("--exact"),
        "{rerun}"
    );
    for name in [
        "tests::fail_assert",
        "tests::fail_panic",
        "tests::fail_exit_code",
        "fail_integration",
    ] {
        assert!(rerun.contains(name), "{rerun}");
    }
    assert!(!rerun.contains("pass_add"));
}

#[test]
fn rerun_command_runs_exactly_the_failed_tests() {
    let out = run(ephem_test().args(["--no-fail-fast", "fail_exit_code", "pass_add"]));
    assert_eq!(out.status.code(), Some(100), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let rerun = stderr
        .lines()
        .skip_while(|l| !l.starts_with("To rerun"))
        .nth(1)
        .unwrap()
        .trim()
        .to_owned();
    // Run the printed command (through our binary) and check what ran.
    let words: Vec<String> = rerun.split_whitespace().map(str::to_owned).collect();
    assert_eq!(&words[..3], ["cargo", "ephem", "test"]);
    let dir = tempfile::tempdir().unwrap();
    let junit = dir.path().join("rerun.xml");
    let out = run(ephem().args(&words[2..]).arg("--junit").arg(&junit));
    assert_eq!(out.status.code(), Some(100), "{}", describe(&out));
    let report = read_junit(&junit);
    let names: Vec<&str> = cases(&report)
        .iter()
        .map(|(_, c)| c.name.as_str())
        .collect();
    assert_eq!(names, ["tests::fail_exit_code"]);
}
