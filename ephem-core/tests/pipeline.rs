//! The pipeline driven through the library, as the CLI drives it but
//! without it: `ephem_core::test` on the fixture workspace, judged by exit
//! code and the JUnit it writes. No environments here (those need Docker
//! and live in the end-to-end tests).

use std::path::PathBuf;

use camino::Utf8PathBuf;
use ephem_core::discover::{CargoOptions, TargetSelection};
use ephem_core::exit_codes;
use ephem_core::options::{ConfigSource, NoTests, ReaperLaunch, Sharding, TestOptions};
use ephem_core::partition::{PartitionKind, PartitionSpec};
use ephem_core::test_list::TestFilter;
use quick_junit::{Report, TestCaseStatus};

fn fixture_manifest() -> Utf8PathBuf {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/basic/Cargo.toml");
    Utf8PathBuf::from_path_buf(path).unwrap()
}

/// `cargo ephem test --workspace --no-env FILTER...` on the fixture.
fn options(filters: &[&str]) -> TestOptions {
    let mut options = TestOptions::new(CargoOptions {
        workspace: true,
        manifest_path: Some(fixture_manifest()),
        ..Default::default()
    });
    options.filter = TestFilter {
        patterns: filters.iter().map(|f| f.to_string()).collect(),
        ..Default::default()
    };
    options.env.config = ConfigSource::Disabled;
    options.reaper = ReaperLaunch::Disabled;
    options
}

fn partition(shard: u32, count: u32) -> Sharding {
    Sharding::Partition(PartitionSpec {
        kind: PartitionKind::Slice,
        shard,
        count,
    })
}

fn junit_in(dir: &tempfile::TempDir) -> Utf8PathBuf {
    Utf8PathBuf::from_path_buf(dir.path().join("junit.xml")).unwrap()
}

fn read(path: &Utf8PathBuf) -> Report {
    Report::deserialize(&std::fs::read(path).unwrap()[..]).unwrap()
}

fn suites(report: &Report) -> Vec<String> {
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
fn a_named_test_target_is_the_only_binary_that_runs() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = options(&["pass_"]);
    opts.cargo.targets = TargetSelection {
        tests: vec!["integration".into()],
        ..Default::default()
    };
    opts.junit = Some(junit_in(&dir));
    assert_eq!(ephem_core::test(&opts).unwrap(), exit_codes::OK);
    assert_eq!(suites(&read(&junit_in(&dir))), ["fixture-lib::integration"]);

    opts.cargo.targets = TargetSelection {
        lib: true,
        ..Default::default()
    };
    assert_eq!(ephem_core::test(&opts).unwrap(), exit_codes::OK);
    assert_eq!(
        suites(&read(&junit_in(&dir))),
        ["fixture-lib", "fixture-other"]
    );
}

#[test]
fn an_empty_shard_exits_0_with_a_report_even_under_no_tests_fail() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = options(&["pass_add"]);
    opts.sharding = partition(3, 3);
    opts.no_tests = NoTests::Fail;
    opts.junit = Some(junit_in(&dir));
    assert_eq!(ephem_core::test(&opts).unwrap(), exit_codes::OK);
    assert_eq!(read(&junit_in(&dir)).tests, 0);
    assert!(dir.path().join("junit-shard-3.xml").exists());
}

#[test]
fn a_shard_of_ignored_tests_reports_them_as_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = options(&["tests::ignored_plain", "tests::pass_add"]);
    opts.filter.exact = true;
    opts.sharding = partition(1, 2);
    opts.no_tests = NoTests::Fail;
    opts.junit = Some(junit_in(&dir));
    assert_eq!(ephem_core::test(&opts).unwrap(), exit_codes::OK);
    let report = read(&junit_in(&dir));
    assert_eq!(report.tests, 1);
    let case = &report.test_suites[0].test_cases[0];
    assert_eq!(case.name.as_str(), "tests::ignored_plain");
    assert!(matches!(case.status, TestCaseStatus::Skipped { .. }));
}

#[test]
fn no_tests_judges_the_whole_selection_not_the_shard() {
    let mut opts = options(&["tests::ignored_plain"]);
    opts.filter.exact = true;
    opts.sharding = partition(1, 2);
    opts.no_tests = NoTests::Fail;
    assert_eq!(ephem_core::test(&opts).unwrap(), exit_codes::NO_TESTS);
    opts.no_tests = NoTests::Warn;
    assert_eq!(ephem_core::test(&opts).unwrap(), exit_codes::OK);
}

#[test]
fn out_of_range_options_are_usage_errors_before_the_build() {
    let mut opts = options(&[]);
    opts.cargo.manifest_path = Some("/nonexistent/Cargo.toml".into());
    opts.sharding = Sharding::All {
        count: 4_000_000_000,
    };
    let err = ephem_core::test(&opts).unwrap_err();
    assert_eq!(err.exit_code(), exit_codes::USAGE);
    assert!(err.to_string().contains("allowed: 1 to 1024"), "{err}");

    let mut opts = options(&[]);
    opts.test_timeout = Some(std::time::Duration::from_secs(10_000_000_000_000_000_000));
    let err = ephem_core::test(&opts).unwrap_err();
    assert!(err.to_string().contains("1ms to 365days"), "{err}");
}
