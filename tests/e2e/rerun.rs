//! `--rerun-failed` (`-R latest`): only what an earlier run left failed,
//! timed out or not run, from the workspace's last run or from a record
//! made elsewhere, on `tests/fixtures/filtersets`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Mutex, MutexGuard};

use crate::filterset::{filtersets_args, filtersets_manifest};
use crate::support::*;

/// Runs of `test` on the filtersets fixture share its last-run record
/// (`target/ephem/runs/latest.record.json`): they take turns.
static FIXTURE: Mutex<()> = Mutex::new(());

pub fn fixture_lock() -> MutexGuard<'static, ()> {
    FIXTURE.lock().unwrap_or_else(|p| p.into_inner())
}

fn latest_record() -> PathBuf {
    filtersets_manifest()
        .parent()
        .unwrap()
        .join("target/ephem/runs/latest.record.json")
}

/// `cargo ephem test` on the fixture, no environments unless asked.
fn test_run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = ephem();
    cmd.arg("test").args(filtersets_args()).args(args);
    cmd.env_remove("FS_FAIL").env_remove("FS_HANG");
    for (k, v) in env {
        cmd.env(k, v);
    }
    run(&mut cmd)
}

/// The test cases of a JUnit report: (suite, name, passed).
fn ran(junit: &Path) -> Vec<(String, String, bool)> {
    let report = read_junit(junit);
    let mut v: Vec<_> = cases(&report)
        .into_iter()
        .map(|(s, c)| (s.to_owned(), c.name.to_string(), is_success(c)))
        .collect();
    v.sort();
    v
}

fn line_with<'a>(stderr: &'a str, needle: &str) -> &'a str {
    stderr
        .lines()
        .find(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no line with {needle:?} in:\n{stderr}"))
}

#[test]
fn with_no_earlier_run_it_says_so_and_exits_2() {
    let target = tempfile::tempdir().unwrap();
    for flags in [&["--rerun-failed"][..], &["-R", "latest"][..]] {
        let out = run(ephem()
            .arg("test")
            .args(filtersets_args())
            .arg("--target-dir")
            .arg(target.path())
            .args(flags));
        assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("--rerun-failed: no earlier run of this workspace")
                && stderr.contains("latest.record.json does not exist"),
            "{stderr}"
        );
        assert!(!stderr.contains("Compiling"), "nothing is built: {stderr}");
    }
}

/// Failed and timed-out tests are rerun; other filters narrow a rerun
/// (AND) and what they leave out stays to rerun; once everything passed
/// there is nothing left (exit 0).
#[test]
fn rerun_latest_runs_what_failed_or_timed_out_then_converges() {
    let _fixture = fixture_lock();
    let dir = tempfile::tempdir().unwrap();
    let junit = dir.path().join("junit.xml");
    let junit_s = junit.to_str().unwrap();
    let out = test_run(
        &[
            "-E",
            "test(toggle)",
            "--no-fail-fast",
            "--test-timeout",
            "2s",
            "--no-env",
        ],
        &[("FS_FAIL", "toggle_app_one"), ("FS_HANG", "toggle_storage")],
    );
    assert_eq!(out.status.code(), Some(100), "{}", describe(&out));
    assert!(latest_record().is_file(), "every run leaves its record");

    // Narrowed by a name filter: only toggle_app_one runs (still failing).
    let out = test_run(
        &["-R", "latest", "toggle_app", "--junit", junit_s],
        &[("FS_FAIL", "toggle_app_one")],
    );
    assert_eq!(out.status.code(), Some(100), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line = line_with(&stderr, "Rerunning");
    assert!(
        line.starts_with("Rerunning 1 test (1 failed) from run "),
        "{line}"
    );
    assert!(line.contains("latest.record.json"), "{line}");
    assert_eq!(
        ran(&junit),
        [("fs-app".into(), "tests::toggle_app_one".into(), false)]
    );
    assert!(
        stderr.contains("note: 1 test of the earlier run is still to rerun"),
        "{stderr}"
    );

    // The next rerun has the one that failed again and the one left out.
    let out = test_run(&["-R", "latest", "--junit", junit_s], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line = line_with(&stderr, "Rerunning");
    assert!(
        line.starts_with("Rerunning 2 tests (1 failed, 1 not run) from run "),
        "{line}"
    );
    assert_eq!(
        ran(&junit),
        [
            ("fs-app".into(), "tests::toggle_app_one".into(), true),
            ("fs-storage".into(), "tests::toggle_storage".into(), true),
        ]
    );

    let out = test_run(&["--rerun-failed"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("nothing to rerun"),
        "{}",
        describe(&out)
    );
}

/// Tests that fail-fast left unrun are rerun with the failure; a timed
/// out one is counted as such.
#[test]
fn tests_fail_fast_did_not_run_are_rerun() {
    let _fixture = fixture_lock();
    let dir = tempfile::tempdir().unwrap();
    let junit = dir.path().join("junit.xml");
    let out = test_run(
        &[
            "-E",
            "package(fs-app) & test(toggle)",
            "-j",
            "1",
            "--no-env",
        ],
        &[("FS_FAIL", "toggle_app_one")],
    );
    assert_eq!(out.status.code(), Some(100), "{}", describe(&out));
    let out = test_run(&["-R", "latest", "--junit", junit.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line = line_with(&stderr, "Rerunning");
    assert!(
        line.starts_with("Rerunning 2 tests (1 failed, 1 not run)"),
        "{line}"
    );
    assert_eq!(
        ran(&junit),
        [
            ("fs-app".into(), "tests::toggle_app_one".into(), true),
            ("fs-app".into(), "tests::toggle_app_two".into(), true),
        ]
    );

    let out = test_run(
        &[
            "-E",
            "test(toggle_core)",
            "--test-timeout",
            "1s",
            "--no-env",
        ],
        &[("FS_HANG", "toggle_core")],
    );
    assert_eq!(out.status.code(), Some(100), "{}", describe(&out));
    let out = test_run(&["-R", "latest"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        line_with(&stderr, "Rerunning").starts_with("Rerunning 1 test (1 timed out)"),
        "{stderr}"
    );
}

/// A copy of the fixture's sources (what git tracks): another workspace.
fn sources_copy(dest: &Path) {
    let fixture = filtersets_manifest().parent().unwrap().to_path_buf();
    let files = Command::new("git")
        .args(["ls-files", "-z"])
        .current_dir(&fixture)
        .output()
        .unwrap();
    assert!(files.status.success(), "{}", describe(&files));
    for name in files.stdout.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let rel = Path::new(std::str::from_utf8(name).unwrap());
        let to = dest.join(rel);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(fixture.join(rel), to).unwrap();
    }
}

/// A CI matrix job's record, made in another checkout (other paths), is
/// enough to reproduce its failures here in one command; two shards'
/// records together give both shards' failures.
#[test]
fn a_ci_jobs_records_from_another_checkout_rerun_here() {
    let ci = tempfile::tempdir().unwrap();
    sources_copy(ci.path());
    let manifest = ci.path().join("Cargo.toml");
    let out_dir = ci.path().join("out");
    for shard in ["1", "2"] {
        let out = run(ephem()
            .arg("test")
            .arg("--manifest-path")
            .arg(&manifest)
            .args([
                "--workspace",
                "--no-env",
                "--no-fail-fast",
                "-E",
                "test(toggle)",
            ])
            .args(["--partition", &format!("slice:{shard}/2"), "--junit"])
            .arg(out_dir.join("junit.xml"))
            .env("FS_FAIL", "toggle_core,toggle_storage_it,toggle_tools"));
        assert_eq!(out.status.code(), Some(100), "{}", describe(&out));
    }
    let shard1 = out_dir.join("junit-shard-1.record.json");
    let shard2 = out_dir.join("junit-shard-2.record.json");
    let record1 = std::fs::read_to_string(&shard1).unwrap();

    let _fixture = fixture_lock();
    let dir = tempfile::tempdir().unwrap();
    let junit = dir.path().join("junit.xml");
    let out = test_run(
        &[
            "--rerun-failed",
            shard1.to_str().unwrap(),
            "--junit",
            junit.to_str().unwrap(),
        ],
        &[("FS_FAIL", "toggle_core,toggle_storage_it,toggle_tools")],
    );
    assert_eq!(out.status.code(), Some(100), "{}", describe(&out));
    let from_shard1: Vec<String> = ran(&junit).into_iter().map(|(_, n, _)| n).collect();
    for name in &from_shard1 {
        assert!(
            record1.contains(&format!("\"name\":\"{name}\"")),
            "{name} not of shard 1"
        );
    }
    assert!(!from_shard1.is_empty());

    let out = test_run(
        &[
            "--rerun-failed",
            shard1.to_str().unwrap(),
            "--rerun-failed",
            shard2.to_str().unwrap(),
            "--junit",
            junit.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line = line_with(&stderr, "Rerunning");
    assert!(
        line.starts_with("Rerunning 3 tests (3 failed) from run "),
        "{line}"
    );
    assert!(
        line.contains(shard1.to_str().unwrap()) && line.contains(shard2.to_str().unwrap()),
        "{line}"
    );
    let names: Vec<(String, String, bool)> = ran(&junit);
    assert_eq!(
        names,
        [
            ("fs-core".into(), "tests::toggle_core".into(), true),
            (
                "fs-storage::storage_it".into(),
                "toggle_storage_it".into(),
                true
            ),
            ("fs-tools".into(), "tests::toggle_tools".into(), true),
        ]
    );
}

/// Tests of the record this workspace no longer has are named in a note;
/// the rest still runs.
#[test]
fn tests_gone_from_the_workspace_are_noted() {
    let dir = tempfile::tempdir().unwrap();
    let record = dir.path().join("ci.record.json");
    std::fs::write(
        &record,
        r#"{"format":1,"cargo_ephem":"0.1.0","run_id":"0123456789abcdef","group":"g","shard_count":1,
"partition":"slice","started_at":"2026-12-05T14:02:00.000Z","duration_ms":10,
"shards":[{"shard":1,"tests":[
 {"binary_id":"fs-tools","name":"tests::tool_works","verdict":"failed"},
 {"binary_id":"fs-tools","name":"tests::renamed_long_ago","verdict":"timed_out"},
 {"binary_id":"fs-gone","name":"t","verdict":"skipped","reason":"not run: fail-fast"},
 {"binary_id":"fs-tools","name":"tests::toggle_tools","verdict":"skipped","reason":"ignored"},
 {"binary_id":"fs-tools","name":"tests::passed_before","verdict":"passed"}]}]}"#,
    )
    .unwrap();
    let _fixture = fixture_lock();
    let junit = dir.path().join("junit.xml");
    let out = test_run(
        &[
            "--rerun-failed",
            record.to_str().unwrap(),
            "--junit",
            junit.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        line_with(&stderr, "Rerunning")
            .starts_with("Rerunning 1 test (1 failed) from run 01234567 of 2026-12-05 14:02 UTC ("),
        "{stderr}"
    );
    assert!(
        stderr.contains(
            "note: 2 tests of the earlier run are not in this workspace any more: \
             fs-gone t, fs-tools tests::renamed_long_ago"
        ),
        "{stderr}"
    );
    assert_eq!(
        ran(&junit),
        [("fs-tools".into(), "tests::tool_works".into(), true)]
    );
}

/// A corrupt, forged or absurd record exits 2 naming the file, before any
/// build.
#[test]
fn a_bad_record_exits_2_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("target");
    for (name, text, expected) in [
        ("junk.json", "<testsuites/>", "not a run record"),
        (
            "forged.json",
            r#"{"format":1,"cargo_ephem":"0.1.0","run_id":"r","group":"g","shard_count":1,"partition":"slice","started_at":"2026-12-05T14:02:00.000Z","duration_ms":1,"shards":[{"shard":1,"tests":[{"binary_id":"a","name":"b","verdict":"exploded"}]}]}"#,
            "not a valid run record",
        ),
        (
            "future.json",
            r#"{"format":9,"cargo_ephem":"9.0.0"}"#,
            "run record format 9",
        ),
    ] {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        let out = run(ephem()
            .arg("test")
            .args(filtersets_args())
            .arg("--target-dir")
            .arg(&target)
            .arg("--rerun-failed")
            .arg(&path));
        assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(path.to_str().unwrap()), "{stderr}");
        assert!(stderr.contains(expected), "{stderr}");
        assert!(!target.join("debug").exists(), "nothing is built");
    }
    let out = run(ephem()
        .arg("test")
        .args(filtersets_args())
        .arg("--target-dir")
        .arg(&target)
        .arg("--rerun-failed")
        .arg(dir.path()));
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is a folder"));
}

/// A rerun provisions what the run it repeats had: the earlier run's
/// `--config` comes back without being given again (and `--no-env` too).
#[test]
fn a_rerun_keeps_the_environments_configuration_of_the_run_it_repeats() {
    let _daemon = shared_daemon();
    let _fixture = fixture_lock();
    let config = config("env-busybox.toml");
    let out = test_run(
        &[
            "-E",
            "test(toggle_tools)",
            "--config",
            config.to_str().unwrap(),
        ],
        &[
            ("FS_FAIL", "toggle_tools"),
            ("EPHEM_REGISTRY_MIRROR", "localhost:5000"),
        ],
    );
    let _cleanup = Cleanup(run_id_of(&String::from_utf8_lossy(&out.stderr)));
    assert_eq!(out.status.code(), Some(100), "{}", describe(&out));
    let out = test_run(
        &["-R", "latest"],
        &[("EPHEM_REGISTRY_MIRROR", "localhost:5000")],
    );
    let run_id = run_id_of(&String::from_utf8_lossy(&out.stderr));
    let _cleanup2 = Cleanup(run_id.clone());
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        line_with(&stderr, "Starting 1 tests").contains("environments from ")
            && stderr.contains("env-busybox.toml"),
        "{stderr}"
    );
    assert_nothing_left(&run_id.unwrap());

    // An earlier run without environments is rerun without them.
    let out = test_run(
        &["-E", "test(toggle_tools)", "--no-env"],
        &[("FS_FAIL", "toggle_tools")],
    );
    assert_eq!(out.status.code(), Some(100), "{}", describe(&out));
    let out = test_run(&["-R", "latest"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert!(
        !line_with(&String::from_utf8_lossy(&out.stderr), "Starting 1 tests")
            .contains("environments"),
        "{}",
        describe(&out)
    );
}
