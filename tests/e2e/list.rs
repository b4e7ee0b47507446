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

#[test]
fn json_list_names_the_folder_the_profile_builds_into() {
    let out = run(ephem().arg("list").args(fixture_args()).args([
        "--message-format",
        "json",
        "--release",
        "pass_add",
    ]));
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let summary = TestListSummary::parse_json(String::from_utf8(out.stdout).unwrap()).unwrap();
    let dirs: Vec<String> = summary
        .rust_build_meta
        .base_output_directories
        .iter()
        .map(|d| d.to_string())
        .collect();
    assert_eq!(dirs, ["release"]);
    for suite in summary.rust_suites.values() {
        assert!(
            suite.binary.binary_path.as_str().contains("/release/deps/"),
            "{}",
            suite.binary.binary_path
        );
    }
}

/// A proc-macro crate's test binary links the toolchain's shared std; it
/// must be found when listing and when running, as under cargo test.
#[test]
fn a_proc_macro_crates_tests_list_and_run() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("Cargo.toml"),
        "[package]\nname = \"macros\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\
         [lib]\nproc-macro = true\n[workspace]\n",
    )
    .unwrap();
    std::fs::create_dir(dir.path().join("src")).unwrap();
    std::fs::write(
        dir.path().join("src/lib.rs"),
        "#[cfg(test)]\nmod tests {\n    #[test]\n    fn expands() {\n        assert_eq!(1 + 1, 2);\n    }\n}\n",
    )
    .unwrap();
    let manifest = dir.path().join("Cargo.toml");
    let out = run(ephem().arg("list").arg("--manifest-path").arg(&manifest));
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("macros:\n    tests::expands\n"));
    let out = run(ephem().arg("test").arg("--manifest-path").arg(&manifest));
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("1 tests run: 1 passed"));
}
