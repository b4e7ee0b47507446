//! nextest profiles (`--profile`, `NEXTEST_PROFILE`, `[profile.default]`)
//! on the `tests/fixtures/profiles` workspace, whose
//! `.config/nextest.toml` holds the profiles these tests name.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use quick_junit::TestCaseStatus;

use crate::support::*;

fn profiles_manifest() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/profiles/Cargo.toml")
}

/// `cargo-ephem test` on the profiles fixture, its tests writing to `out`.
fn ephem_profiles(out: &Path) -> Command {
    let mut cmd = ephem();
    cmd.env_remove("NEXTEST_PROFILE")
        .env("FIXTURE_OUT", out)
        .arg("test")
        .arg("--manifest-path")
        .arg(profiles_manifest());
    cmd
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The summary's counts: `N tests run: P passed, F failed, ...`.
fn summary(out: &Output) -> String {
    let text = stderr(out);
    let line = text
        .lines()
        .find(|l| l.contains(" tests run: "))
        .unwrap_or_else(|| panic!("no summary: {}", describe(out)));
    line.split(" tests run: ").nth(1).unwrap().to_owned()
}

#[test]
fn retries_of_a_profile_make_a_flaky_test_pass_as_flaky() {
    let dir = tempfile::tempdir().unwrap();
    // Without the profile the flaky test fails: the retries come from `ci`.
    let out = run(ephem_profiles(dir.path()).arg("flaky_retried_by_profile"));
    assert_eq!(out.status.code(), Some(100), "{}", describe(&out));
    let out = run(ephem_profiles(dir.path()).args(["--profile", "ci", "flaky_retried_by_profile"]));
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert!(
        summary(&out).starts_with("0 passed, 0 failed, 1 flaky"),
        "{}",
        describe(&out)
    );
    // The command line wins over the profile, as in nextest.
    let out = run(ephem_profiles(dir.path()).args([
        "--profile",
        "ci",
        "--retries",
        "0",
        "flaky_retried_by_profile",
    ]));
    assert_eq!(out.status.code(), Some(100), "{}", describe(&out));
}

#[test]
fn nextest_profile_in_the_environment_selects_the_profile() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(ephem_profiles(dir.path())
        .env("NEXTEST_PROFILE", "ci")
        .arg("flaky_retried_by_profile"));
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert!(summary(&out).contains("1 flaky"), "{}", describe(&out));
    // --profile wins over the variable.
    let out = run(ephem_profiles(dir.path())
        .env("NEXTEST_PROFILE", "ci")
        .args(["--profile", "default", "flaky_retried_by_profile"]));
    assert_eq!(out.status.code(), Some(100), "{}", describe(&out));
}

#[test]
fn terminate_after_kills_a_slow_test() {
    let dir = tempfile::tempdir().unwrap();
    let junit = dir.path().join("junit.xml");
    let out = run(ephem_profiles(dir.path())
        .args(["--profile", "ci", "--retries", "0", "--junit"])
        .arg(&junit)
        .arg("slow_sleeps_long"));
    assert_eq!(out.status.code(), Some(100), "{}", describe(&out));
    assert!(
        summary(&out).contains("0 failed, 0 flaky, 1 timed out"),
        "{}",
        describe(&out)
    );
    let report = read_junit(&junit);
    match &find(&report, "tests::slow_sleeps_long").status {
        TestCaseStatus::NonSuccess { ty, .. } => {
            assert_eq!(ty.as_ref().unwrap().as_str(), "timeout")
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn max_fail_stops_after_that_many_failures() {
    let dir = tempfile::tempdir().unwrap();
    // `maxfail`: fail-fast = { max-fail = 2 }, one test at a time.
    let out = run(ephem_profiles(dir.path()).args(["--profile", "maxfail", "fail_"]));
    assert_eq!(out.status.code(), Some(100), "{}", describe(&out));
    assert!(
        summary(&out).ends_with("0 passed, 2 failed, 0 flaky, 0 timed out, 1 skipped"),
        "{}",
        describe(&out)
    );
    // --max-fail on the command line wins.
    let out =
        run(ephem_profiles(dir.path()).args(["--profile", "maxfail", "--max-fail", "1", "fail_"]));
    assert!(
        summary(&out).contains("1 failed, 0 flaky, 0 timed out, 2 skipped"),
        "{}",
        describe(&out)
    );
    let out =
        run(ephem_profiles(dir.path()).args(["--profile", "maxfail", "--no-fail-fast", "fail_"]));
    assert!(summary(&out).contains("3 failed"), "{}", describe(&out));
    // --fail-fast wins over a profile's fail-fast = false (inherited from ci).
    let out = run(ephem_profiles(dir.path()).args([
        "--profile",
        "inherited",
        "-j",
        "1",
        "--fail-fast",
        "fail_",
    ]));
    assert!(
        summary(&out).ends_with("1 failed, 0 flaky, 0 timed out, 2 skipped"),
        "{}",
        describe(&out)
    );
    let out = run(ephem_profiles(dir.path()).args(["--max-fail", "0", "fail_"]));
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
}

#[test]
fn inheritance_takes_what_the_profile_does_not_set() {
    let dir = tempfile::tempdir().unwrap();
    // `inherited` inherits ci's fail-fast = false but sets retries = 0.
    let out = run(ephem_profiles(dir.path()).args([
        "--profile",
        "inherited",
        "-j",
        "1",
        "fail_",
        "flaky_retried_by_profile",
    ]));
    assert_eq!(out.status.code(), Some(100), "{}", describe(&out));
    assert!(
        summary(&out).ends_with("0 passed, 4 failed, 0 flaky, 0 timed out, 0 skipped"),
        "{}",
        describe(&out)
    );
}

#[test]
fn a_test_group_with_max_threads_1_runs_its_tests_one_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    // [profile.default] puts serial_* in the group; -j 4 would run them at once.
    let out = run(ephem_profiles(dir.path()).args(["-j", "4", "serial_"]));
    let log = std::fs::read_to_string(dir.path().join("serial.log")).unwrap_or_default();
    assert_eq!(out.status.code(), Some(0), "{}\n{log}", describe(&out));
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(lines.len(), 8, "{log}");
    for pair in lines.chunks(2) {
        let (start, end) = (pair[0], pair[1]);
        assert!(start.starts_with("start "), "{log}");
        assert_eq!(start.replace("start", "end"), end, "{log}");
    }
    // Each test is told its group and its slot in it, as nextest tells it.
    let groups = std::fs::read_to_string(dir.path().join("groups.log")).unwrap_or_default();
    assert_eq!(
        groups.lines().collect::<Vec<_>>(),
        ["serial 0"; 4],
        "{groups}"
    );
}

#[test]
fn a_profiles_status_level_applies_and_the_flag_wins() {
    let dir = tempfile::tempdir().unwrap();
    let pass_line = |out: &Output| {
        stderr(out)
            .lines()
            .any(|l| l.trim_start().starts_with("PASS ["))
    };
    let out = run(ephem_profiles(dir.path()).args(["--profile", "quiet", "pass_quick"]));
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert!(
        !pass_line(&out),
        "status-level = \"fail\" hides PASS: {}",
        describe(&out)
    );
    let out = run(ephem_profiles(dir.path()).args([
        "--profile",
        "quiet",
        "--status-level",
        "pass",
        "pass_quick",
    ]));
    assert!(pass_line(&out), "--status-level wins: {}", describe(&out));
    let out = run(ephem_profiles(dir.path()).arg("pass_quick"));
    assert!(
        pass_line(&out),
        "nextest's default shows PASS: {}",
        describe(&out)
    );
}

#[test]
fn threads_required_num_test_threads_runs_a_test_alone() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(ephem_profiles(dir.path()).args(["-j", "4", "alone_"]));
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert!(summary(&out).starts_with("4 passed"), "{}", describe(&out));
}

#[test]
fn priority_of_an_override_starts_a_test_first() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(ephem_profiles(dir.path()).args(["-j", "1", "prio_"]));
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let order = std::fs::read_to_string(dir.path().join("order.log")).unwrap();
    assert_eq!(order, "z\na\n");
}

#[test]
fn an_override_by_filterset_retries_only_its_tests() {
    let dir = tempfile::tempdir().unwrap();
    let junit = dir.path().join("junit.xml");
    let out = run(ephem_profiles(dir.path())
        .args(["--profile", "retry-one", "--no-fail-fast", "--junit"])
        .arg(&junit)
        .arg("flaky_retried_by"));
    assert_eq!(out.status.code(), Some(100), "{}", describe(&out));
    let report = read_junit(&junit);
    let retried = find(&report, "tests::flaky_retried_by_override");
    assert!(is_success(retried), "{retried:?}");
    assert!(
        !is_success(find(&report, "tests::flaky_retried_by_profile")),
        "{}",
        describe(&out)
    );
    assert!(
        summary(&out).contains("1 failed, 1 flaky"),
        "{}",
        describe(&out)
    );
    // The rerun command keeps the profile.
    assert!(
        stderr(&out).contains("--profile retry-one"),
        "{}",
        describe(&out)
    );
}

#[test]
fn junit_path_is_written_under_the_store_directory() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("target");
    let out = run(ephem_profiles(dir.path())
        .arg("--target-dir")
        .arg(&target)
        .args(["--profile", "ci", "pass_quick"]));
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let report = read_junit(&target.join("nextest/ci/junit.xml"));
    assert!(is_success(find(&report, "tests::pass_quick")));
}

#[test]
fn keys_with_no_meaning_here_are_noted_once() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(ephem_profiles(dir.path()).arg("pass_quick"));
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let text = stderr(&out);
    let notes: Vec<&str> = text.lines().filter(|l| l.contains("not applied")).collect();
    assert_eq!(notes.len(), 1, "{text}");
    assert!(notes[0].contains("profile.default.leak-timeout"), "{text}");
}

/// A workspace of one empty crate with this `.config/nextest.toml`.
fn workspace_with(config: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::write(
        root.join("Cargo.toml"),
        "[package]\nname = \"bad-profile\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n[workspace]\n",
    )
    .unwrap();
    std::fs::create_dir_all(root.join("src")).unwrap();
    std::fs::write(root.join("src/lib.rs"), "").unwrap();
    std::fs::create_dir_all(root.join(".config")).unwrap();
    std::fs::write(root.join(".config/nextest.toml"), config).unwrap();
    dir
}

fn test_in(dir: &Path, args: &[&str]) -> Output {
    run(ephem()
        .env_remove("NEXTEST_PROFILE")
        .arg("test")
        .arg("--manifest-path")
        .arg(dir.join("Cargo.toml"))
        .args(args))
}

#[test]
fn a_malformed_file_exits_2_with_file_and_line() {
    for (config, profile, line, what) in [
        ("[profile.ci]\nretries = \"many\"\n", "ci", 2, "retries"),
        (
            "[profile.ci]\n\nfail-fast = { max-fail = 0 }\n",
            "ci",
            3,
            "max-fail",
        ),
        ("[profile.ci\nretries = 1\n", "ci", 1, ""),
        (
            "[profile.ci]\ninherits = \"nope\"\n",
            "ci",
            2,
            "no profile `nope`",
        ),
        (
            "[profile.a]\ninherits = \"b\"\n[profile.b]\ninherits = \"a\"\n",
            "a",
            4,
            "cycle",
        ),
        (
            "[[profile.default.overrides]]\nfilter = 'all()'\ntest-group = 'nope'\n",
            "default",
            3,
            "not defined in [test-groups]",
        ),
    ] {
        let ws = workspace_with(config);
        let out = test_in(ws.path(), &["--profile", profile]);
        assert_eq!(out.status.code(), Some(2), "{config}\n{}", describe(&out));
        let text = stderr(&out);
        let place = format!(".config/nextest.toml:{line}:");
        assert!(text.contains(&place), "{config}: wants {place}\n{text}");
        assert!(text.contains(what), "{config}: wants {what}\n{text}");
        assert!(
            !text.contains("Compiling"),
            "no build before the check: {text}"
        );
    }
}

#[test]
fn an_unknown_profile_or_bad_override_filter_exits_2() {
    let ws = workspace_with("[profile.ci]\nretries = 1\n");
    let out = test_in(ws.path(), &["--profile", "nightly"]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(
        stderr(&out).contains("profile `nightly` not found (profiles: ci)"),
        "{}",
        describe(&out)
    );
    let ws =
        workspace_with("[[profile.default.overrides]]\nfilter = 'package(nope)'\nretries = 1\n");
    let out = test_in(ws.path(), &[]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(
        stderr(&out).contains("override filter \"package(nope)\""),
        "{}",
        describe(&out)
    );
}
