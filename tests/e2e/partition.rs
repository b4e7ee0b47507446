//! CI matrix jobs: `--partition KIND:M/N` in separate invocations, then
//! `junit merge`, gives every test exactly once.

use std::collections::BTreeSet;
use std::path::Path;

use crate::support::*;

fn names(path: &Path) -> Vec<(String, String)> {
    let report = read_junit(path);
    let mut v: Vec<_> = cases(&report)
        .into_iter()
        .map(|(s, c)| (s.to_owned(), c.name.as_str().to_owned()))
        .collect();
    v.sort();
    v
}

fn partitioned_run_covers_every_test_once(kind: &str, timings: Option<&Path>) {
    let dir = tempfile::tempdir().unwrap();
    let mut shard_files = Vec::new();
    for m in 1..=3 {
        let junit = dir.path().join(format!("job{m}.xml"));
        let mut cmd = ephem_test();
        cmd.args(["pass_", "--partition", &format!("{kind}:{m}/3"), "--junit"])
            .arg(&junit);
        if let Some(t) = timings {
            cmd.arg("--timings").arg(t);
        }
        let out = run(&mut cmd);
        // A shard may be empty, which is not an error.
        assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
        let shard_file = dir.path().join(format!("job{m}-shard-{m}.xml"));
        if shard_file.exists() {
            shard_files.push(shard_file);
        }
    }
    let merged = dir.path().join("merged.xml");
    let out = run(ephem()
        .args(["junit", "merge", "-o"])
        .arg(&merged)
        .args(&shard_files));
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    validate_xsd(&merged);

    let whole = dir.path().join("whole.xml");
    let out = run(ephem_test().args(["pass_", "--junit"]).arg(&whole));
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let merged_names = names(&merged);
    let unique: BTreeSet<_> = merged_names.iter().collect();
    assert_eq!(unique.len(), merged_names.len(), "a test ran in two shards");
    assert_eq!(
        merged_names,
        names(&whole),
        "{kind}: partitioned jobs ran a different set of tests"
    );
    // Merged counts are recomputed.
    let report = read_junit(&merged);
    assert_eq!(report.tests, merged_names.len());
}

#[test]
fn hash_partitions_cover_every_test_once() {
    partitioned_run_covers_every_test_once("hash", None);
}

#[test]
fn slice_partitions_cover_every_test_once() {
    partitioned_run_covers_every_test_once("slice", None);
}

#[test]
fn duration_partitions_from_an_earlier_report() {
    let dir = tempfile::tempdir().unwrap();
    let history = dir.path().join("history.xml");
    let out = run(ephem_test()
        .args(["pass_", "slow_", "--junit"])
        .arg(&history));
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    partitioned_run_covers_every_test_once("duration", Some(&history));

    // With a 1.2 s test among instant ones, the duration plan puts the slow
    // test alone in its shard.
    let junit = dir.path().join("two.xml");
    let out = run(ephem_test()
        .args(["pass_", "slow_", "--shards", "2", "--timings"])
        .arg(&history)
        .arg("--junit")
        .arg(&junit));
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let shard_with_slow = (1..=2)
        .map(|m| names(&dir.path().join(format!("two-shard-{m}.xml"))))
        .find(|n| n.iter().any(|(_, t)| t == "tests::slow_one_second"))
        .unwrap();
    assert_eq!(shard_with_slow.len(), 1, "{shard_with_slow:?}");
}

#[test]
fn merge_joins_same_named_suites_and_drops_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.xml");
    let out = run(ephem_test().args(["pass_", "--junit"]).arg(&a));
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let merged = dir.path().join("m.xml");
    // The same file twice: suites joined, every test once, and the
    // duplicates reported.
    let out = run(ephem()
        .args(["junit", "merge", "-o"])
        .arg(&merged)
        .arg(&a)
        .arg(&a));
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("duplicate"),
        "{}",
        describe(&out)
    );
    assert_eq!(names(&merged), names(&a));
    let report = read_junit(&merged);
    let suite_names: BTreeSet<_> = report.test_suites.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(suite_names.len(), report.test_suites.len());
}
