//! nextest's debugging habits, through the binary on
//! `tests/fixtures/habits`: `--no-capture`, status levels, when a test's
//! output is shown, and the `NEXTEST_*` variables every test gets.

use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Output};

use crate::support::*;

/// `cargo-ephem test` on the habits fixture (no `ephem.toml`: no
/// environments unless `--config` says).
fn habits() -> Command {
    let mut cmd = ephem();
    let manifest = config("habits").join("Cargo.toml");
    cmd.arg("test").arg("--manifest-path").arg(manifest);
    // The flags under test also come from these: the runner's own
    // environment must not decide them.
    for var in [
        "NEXTEST_NO_CAPTURE",
        "NEXTEST_STATUS_LEVEL",
        "NEXTEST_FINAL_STATUS_LEVEL",
        "NEXTEST_FAILURE_OUTPUT",
        "NEXTEST_SUCCESS_OUTPUT",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The result lines shown during the run (before the end's divider) and
/// those listed again at the end.
fn sections(out: &Output) -> (String, String) {
    let text = stderr(out);
    let divider = "-".repeat(72);
    let (run, end) = text
        .split_once(&divider)
        .unwrap_or_else(|| panic!("no end-of-run divider: {}", describe(out)));
    (run.to_owned(), end.to_owned())
}

/// Whether some line of `text` shows `word` then `[` (a status and its
/// time) for `test`.
fn has_line(text: &str, word: &str, test: &str) -> bool {
    text.lines().any(|l| {
        l.trim_start()
            .strip_prefix(word)
            .is_some_and(|rest| rest.trim_start().starts_with('['))
            && l.ends_with(test)
            || l.trim_start().starts_with(word) && l.contains(&format!(" {test} ("))
    })
}

fn position(text: &str, needle: &str) -> usize {
    text.find(needle)
        .unwrap_or_else(|| panic!("{needle:?} not in:\n{text}"))
}

fn read_vars(path: &Path) -> HashMap<String, String> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

#[test]
fn no_capture_shows_output_live_and_runs_one_test_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let junit = dir.path().join("junit.xml");
    // Three tests that fail if another runs at the same time, asked for
    // three at once in two shards: --no-capture runs them one by one.
    let out = run(habits()
        .args([
            "alone_",
            "-j",
            "3",
            "--shards",
            "2",
            "--no-capture",
            "--junit",
        ])
        .arg(&junit)
        .env("FIXTURE_OUT", dir.path()));
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let err = stderr(&out);
    // The tests' own streams are the runner's: stdout to stdout...
    assert!(stdout.contains("ALONE-A-LIVE"), "{}", describe(&out));
    // ...and stderr to stderr, before the test's result line (live, not
    // replayed after it ended).
    let live = position(&err, "ALONE-B-LIVE");
    let result = position(&err, "tests::alone_b\n");
    assert!(live < result, "{}", describe(&out));
    assert!(
        err.contains("one test at a time"),
        "-j 3 is said to be ignored: {err}"
    );
    // JUnit is still written, without output (none was captured).
    let report = read_junit(&junit);
    let case = find(&report, "tests::alone_a");
    assert!(is_success(case));
    assert!(case.system_out.is_none(), "{:?}", case.system_out);
}

#[test]
fn no_capture_still_starts_every_shards_environment() {
    let _daemon = shared_daemon();
    let dir = tempfile::tempdir().unwrap();
    let out = run(habits()
        .arg("--config")
        .arg(config("env-busybox.toml"))
        .args(["alone_", "--shards", "2", "--no-capture"])
        .env("FIXTURE_OUT", dir.path()));
    let err = stderr(&out);
    let _cleanup = Cleanup(run_id_of(&err));
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    for shard in 1..=2 {
        assert!(
            err.contains(&format!("environment of shard {shard}/2")),
            "{err}"
        );
    }
    // The test ran in its shard's environment, its output on the terminal.
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("SHARD-TAG=shard-"), "{}", describe(&out));
    assert_nothing_left(&run_id_of(&err).unwrap());
}

#[test]
fn no_capture_from_the_environment_shows_a_failure_once() {
    // NEXTEST_NO_CAPTURE, as nextest reads it; the failure's output
    // reached the terminal as it ran and is not shown a second time.
    let out = run(habits().args(["loud_fail"]).env("NEXTEST_NO_CAPTURE", "1"));
    assert_eq!(out.status.code(), Some(100), "{}", describe(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let err = stderr(&out);
    assert_eq!(
        stdout.matches("LOUD-FAIL-STDOUT").count(),
        1,
        "{}",
        describe(&out)
    );
    assert_eq!(
        err.matches("LOUD-FAIL-PANIC").count(),
        1,
        "{}",
        describe(&out)
    );
    assert!(has_line(&sections(&out).0, "FAIL", "tests::loud_fail"));
}

/// Every kind of result line, and whether each level shows it during the
/// run and at its end.
#[test]
fn each_status_level_shows_its_lines_and_hides_the_others() {
    // (word, test), and the first level (index into the lists below) that
    // shows it during the run and at the end.
    let kinds = [
        ("FAIL", "tests::loud_fail"),
        ("TRY 1 FAIL", "tests::flaky_once"),
        ("TRY 2 PASS", "tests::flaky_once"),
        ("SLOW", "tests::slow_pass"),
        ("PASS", "tests::quiet_pass"),
        ("SKIP", "tests::ignored_one"),
    ];
    let status = [
        "none", "fail", "retry", "slow", "leak", "pass", "skip", "all",
    ];
    let shown_from = [1, 2, 2, 3, 5, 6];
    let final_levels = [
        "none", "fail", "flaky", "slow", "skip", "leak", "pass", "all",
    ];
    // At the end: FAIL, FLAKY, SLOW, PASS (the quick pass), SKIP.
    let final_kinds = [
        ("FAIL", "tests::loud_fail", 1),
        ("FLAKY", "tests::flaky_once", 2),
        ("SLOW", "tests::slow_pass", 3),
        ("SKIP", "tests::ignored_one", 4),
        ("PASS", "tests::quiet_pass", 6),
    ];
    for (i, (level, final_level)) in status.iter().zip(final_levels).enumerate() {
        let out = run(habits().args([
            "loud_fail",
            "flaky_once",
            "slow_pass",
            "quiet_pass",
            "ignored_one",
            "--retries",
            "1",
            "--no-fail-fast",
            "--slow-timeout",
            "1s",
            "--status-level",
            level,
            "--final-status-level",
            final_level,
        ]));
        assert_eq!(out.status.code(), Some(100), "{}", describe(&out));
        let (during, end) = sections(&out);
        for ((word, test), from) in kinds.iter().zip(shown_from) {
            // A retry's "TRY 1 FAIL" of loud_fail is a retry line too.
            assert_eq!(
                has_line(&during, word, test),
                i >= from,
                "--status-level {level}: {word} {test}\n{}",
                describe(&out)
            );
        }
        for (word, test, from) in final_kinds {
            assert_eq!(
                has_line(&end, word, test),
                i >= from,
                "--final-status-level {final_level}: {word} {test}\n{}",
                describe(&out)
            );
        }
    }
}

#[test]
fn a_status_level_not_nextests_is_a_usage_error() {
    let out = run(habits().env("NEXTEST_STATUS_LEVEL", "loud"));
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    let err = stderr(&out);
    assert!(err.contains("loud") && err.contains("retry"), "{err}");
    // `retry` is nextest's other name for the final level `flaky`.
    let out = run(habits().args(["quiet_pass", "--final-status-level", "retry"]));
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
}

/// `loud_fail` then `quiet_pass`, one at a time (tests start in name
/// order), with `--failure-output WHEN`; the run's stderr.
fn failure_output(when: &str) -> String {
    let out = run(habits().args([
        "loud_fail",
        "quiet_pass",
        "-j",
        "1",
        "--no-fail-fast",
        "--failure-output",
        when,
    ]));
    assert_eq!(out.status.code(), Some(100), "{}", describe(&out));
    stderr(&out)
}

#[test]
fn failure_output_is_shown_when_asked() {
    let immediate = failure_output("immediate");
    assert_eq!(
        immediate.matches("LOUD-FAIL-PANIC").count(),
        1,
        "{immediate}"
    );
    // Before the next test's result: as soon as the test failed.
    assert!(position(&immediate, "LOUD-FAIL-PANIC") < position(&immediate, "tests::quiet_pass"));
    assert!(immediate.contains("LOUD-FAIL-STDOUT"));

    let at_end = failure_output("final");
    assert_eq!(at_end.matches("LOUD-FAIL-PANIC").count(), 1, "{at_end}");
    assert!(position(&at_end, "LOUD-FAIL-PANIC") > position(&at_end, "tests::quiet_pass"));

    let both = failure_output("immediate-final");
    assert_eq!(both.matches("LOUD-FAIL-PANIC").count(), 2, "{both}");

    let never = failure_output("never");
    assert!(!never.contains("LOUD-FAIL-"), "{never}");
    // The result line and the summary still say it failed.
    assert!(never.contains("1 failed"), "{never}");
}

#[test]
fn success_output_is_shown_when_asked() {
    let run_with = |extra: &[&str]| {
        let out = run(habits()
            .args(["loud_pass", "quiet_pass", "-j", "1"])
            .args(extra));
        assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
        stderr(&out)
    };
    let default = run_with(&[]);
    assert!(
        !default.contains("LOUD-PASS-"),
        "never, by default: {default}"
    );
    let immediate = run_with(&["--success-output", "immediate"]);
    assert!(immediate.contains("LOUD-PASS-STDOUT") && immediate.contains("LOUD-PASS-STDERR"));
    assert!(
        position(&immediate, "LOUD-PASS-STDOUT") < position(&immediate, "tests::quiet_pass"),
        "{immediate}"
    );
    let at_end = run_with(&["--success-output", "final"]);
    assert!(
        position(&at_end, "LOUD-PASS-STDOUT") > position(&at_end, "tests::quiet_pass"),
        "{at_end}"
    );
    // NEXTEST_SUCCESS_OUTPUT, as nextest reads it.
    let out = run(habits()
        .args(["loud_pass", "-j", "1"])
        .env("NEXTEST_SUCCESS_OUTPUT", "immediate"));
    assert!(
        stderr(&out).contains("LOUD-PASS-STDERR"),
        "{}",
        describe(&out)
    );
}

#[test]
fn every_test_gets_nextests_variables() {
    let dir = tempfile::tempdir().unwrap();
    let junit = dir.path().join("junit.xml");
    let out = run(habits()
        .args(["vars_", "-j", "2", "--retries", "3", "--junit"])
        .arg(&junit)
        .env("FIXTURE_OUT", dir.path()));
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let run_id = run_id_of(&stderr(&out)).expect("the run's id in its headline");
    let record: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("junit.record.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(record["run_id"], run_id.as_str());

    let a = read_vars(&dir.path().join("vars_a-1.env"));
    let b = read_vars(&dir.path().join("vars_b-1.env"));
    let tries: Vec<_> = (1..=3)
        .map(|n| read_vars(&dir.path().join(format!("vars_retried-{n}.env"))))
        .collect();
    assert!(
        !dir.path().join("vars_retried-4.env").exists(),
        "passed on its third attempt"
    );
    for (i, vars) in [&a, &b].into_iter().chain(&tries).enumerate() {
        assert_eq!(vars["NEXTEST_RUN_ID"], run_id, "one id for the whole run");
        assert_eq!(vars["EPHEM_RUN_ID"], run_id);
        assert_eq!(vars["NEXTEST"], "1");
        assert_eq!(vars["NEXTEST_EXECUTION_MODE"], "process-per-test");
        assert_eq!(vars["NEXTEST_BINARY_ID"], "habits-fixture");
        assert_eq!(vars["NEXTEST_TEST_GROUP"], "@global");
        assert_eq!(vars["NEXTEST_TEST_GROUP_SLOT"], "none");
        assert_eq!(vars["NEXTEST_TOTAL_ATTEMPTS"], "4");
        let slot: u32 = vars["NEXTEST_TEST_GLOBAL_SLOT"].parse().unwrap();
        assert!(slot < 2, "attempt {i}: slot {slot} with -j 2");
    }
    assert_eq!(a["NEXTEST_TEST_NAME"], "tests::vars_a");
    assert_eq!(b["NEXTEST_TEST_NAME"], "tests::vars_b");
    assert_eq!(a["NEXTEST_ATTEMPT"], "1");
    for (n, vars) in tries.iter().enumerate() {
        assert_eq!(vars["NEXTEST_ATTEMPT"], (n + 1).to_string());
        assert_eq!(vars["NEXTEST_TEST_NAME"], "tests::vars_retried");
        // A retry keeps its slot.
        assert_eq!(
            vars["NEXTEST_TEST_GLOBAL_SLOT"],
            tries[0]["NEXTEST_TEST_GLOBAL_SLOT"]
        );
    }
}
