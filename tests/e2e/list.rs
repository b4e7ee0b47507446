//! `cargo ephem list`, human and nextest-compatible JSON.

use std::collections::BTreeSet;
use std::process::Command;

use nextest_metadata::TestListSummary;

use crate::support::*;

fn ids_and_names(summary: &TestListSummary) -> BTreeSet<(String, String, bool)> {
    summary
        .rust_suites
        .iter()
        .flat_map(|(id, suite)| {
            suite
                .test_cases
                .iter()
                .map(move |(name, case)| (id.to_string(), name.to_string(), case.ignored))
        })
        .collect()
}

#[test]
fn json_list_reads_like_nextests() {
    let out = run(ephem()
        .arg("list")
        .args(fixture_args())
        .args(["--message-format", "json"]));
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let ours = TestListSummary::parse_json(String::from_utf8(out.stdout).unwrap())
        .expect("our JSON parses as nextest-metadata's TestListSummary");
    let ours_set = ids_and_names(&ours);
    assert!(ours_set.contains(&("fixture-lib".into(), "tests::hang_forever".into(), true)));
    assert!(ours_set.contains(&(
        "fixture-lib::integration".into(),
        "pass_integration".into(),
        false
    )));
    assert_eq!(ours.test_count, ours_set.len());

    // Same binaries, tests and ignored flags as nextest's own listing.
    let nextest = Command::new("cargo")
        .args(["nextest", "list", "--message-format", "json"])
        .args(fixture_args())
        .output()
        .expect("cargo runs");
    assert!(
        nextest.status.success(),
        "cargo nextest list failed: {}",
        describe(&nextest)
    );
    let theirs = TestListSummary::parse_json(String::from_utf8(nextest.stdout).unwrap()).unwrap();
    assert_eq!(ours_set, ids_and_names(&theirs));
}

#[test]
fn human_list_groups_by_binary_and_filters() {
    let out = run(ephem().arg("list").args(fixture_args()).arg("pass_"));
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("fixture-lib::integration:\n    pass_integration\n"),
        "{text}"
    );
    assert!(!text.contains("fail_"), "{text}");
}
