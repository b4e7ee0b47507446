//! `-E/--filterset`: nextest's language with nextest's answers, on the
//! `tests/fixtures/filtersets` workspace (packages with path dependencies,
//! lib, proc-macro, cdylib, integration, bin, example and bench tests).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use nextest_metadata::{FilterMatch, TestListSummary};

use crate::support::*;

pub fn filtersets_manifest() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/filtersets/Cargo.toml")
}

/// Every target, so that examples and benches have something to list.
pub fn filtersets_args() -> Vec<String> {
    vec![
        "--manifest-path".into(),
        filtersets_manifest().display().to_string(),
        "--workspace".into(),
        "--all-targets".into(),
    ]
}

/// What a listing says: per binary, its status, kind, name, platform with
/// package id, and per test whether it is ignored and how the filters
/// matched it (with nextest's mismatch reason).
type Listing = BTreeMap<String, (String, String, String, String, BTreeMap<String, String>)>;

fn listing(json: &[u8]) -> (Listing, usize) {
    let summary = TestListSummary::parse_json(String::from_utf8(json.to_vec()).unwrap())
        .unwrap_or_else(|e| {
            panic!(
                "not a TestListSummary ({e}): {}",
                String::from_utf8_lossy(json)
            )
        });
    let suites = summary
        .rust_suites
        .iter()
        .map(|(id, s)| {
            let cases = s
                .test_cases
                .iter()
                .map(|(name, c)| {
                    let matched = match &c.filter_match {
                        FilterMatch::Matches => "matches".to_owned(),
                        FilterMatch::Mismatch { reason } => format!("{reason:?}"),
                    };
                    (name.to_string(), format!("ignored={} {matched}", c.ignored))
                })
                .collect();
            let binary = &s.binary;
            (
                id.to_string(),
                (
                    s.status.as_str().to_owned(),
                    binary.kind.to_string(),
                    binary.binary_name.clone(),
                    format!("{:?} {}", binary.build_platform, binary.package_id),
                    cases,
                ),
            )
        })
        .collect();
    (suites, summary.test_count)
}

/// Our `list --message-format json` with these selection flags.
fn ours(flags: &[&str]) -> (Listing, usize) {
    let out = run(ephem()
        .arg("list")
        .args(filtersets_args())
        .args(["--message-format", "json"])
        .args(flags));
    assert_eq!(out.status.code(), Some(0), "{flags:?}: {}", describe(&out));
    listing(&out.stdout)
}

/// Ours, translated for `cargo nextest list`: `--ignored` and
/// `--include-ignored` are its `--run-ignored`, `--exact` and `--skip` go
/// after `--` as libtest takes them.
fn theirs(flags: &[&str]) -> (Listing, usize) {
    let mut before = Vec::new();
    let mut after = Vec::new();
    let mut it = flags.iter();
    while let Some(flag) = it.next() {
        match *flag {
            "--ignored" => before.extend(["--run-ignored", "only"]),
            "--include-ignored" => before.extend(["--run-ignored", "all"]),
            "--exact" => after.push("--exact"),
            "--skip" => after.extend(["--skip", it.next().unwrap()]),
            "-E" => before.extend(["-E", it.next().unwrap()]),
            name => before.push(name),
        }
    }
    let out = Command::new("cargo")
        .args(["nextest", "list", "--message-format", "json"])
        .args(filtersets_args())
        .args(&before)
        .arg("--")
        .args(&after)
        .output()
        .expect("cargo runs");
    assert!(
        out.status.success(),
        "cargo nextest list {flags:?}: {}",
        describe(&out)
    );
    listing(&out.stdout)
}

fn nextest_installed() -> bool {
    Command::new("cargo")
        .args(["nextest", "--version"])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// The selections of many expressions, alone and with name filters,
/// `--ignored` and several `-E`, equal `cargo nextest list`'s: the same
/// suites listed or skipped, the same tests matching, the same reasons.
#[test]
fn filtersets_select_what_nextest_selects() {
    let cases: &[&[&str]] = &[
        &["-E", "all()"],
        &["-E", "none()"],
        &["-E", "deps(fs-app)"],
        &["-E", "rdeps(fs-core)"],
        &["-E", "rdeps(fs-storage) - package(fs-storage)"],
        &["-E", "package(~fs-) and deps(=fs-storage)"],
        &["-E", "kind(lib)"],
        &["-E", "kind(proc-macro)"],
        &["-E", "kind(bench) | kind(example) | kind(bin)"],
        &["-E", "binary(storage-cli)"],
        &["-E", "binary_id(fs-core::core_api)"],
        &["-E", "binary_id(/::/)"],
        &["-E", "platform(host)"],
        &["-E", "platform(target) & test(shared)"],
        &["-E", "test(=shared_name)"],
        &["-E", "test(#*toggle*)"],
        &["-E", "test(/^tests::t/) and not package(fs-app)"],
        &["-E", "default() & kind(test)"],
        &["-E", "group(@global) & package(fs-tools)"],
        &["-E", "package(fs-core)", "-E", "kind(bench)"],
        &["-E", "rdeps(fs-core)", "toggle"],
        &["-E", "kind(lib)", "--skip", "toggle"],
        &["-E", "package(fs-app)", "--exact", "tests::shared_name"],
        &["-E", "rdeps(fs-core)", "--ignored"],
        &[
            "-E",
            "package(fs-app) | package(fs-core)",
            "--include-ignored",
        ],
        &["shared"],
    ];
    // Independent of nextest: a few answers written out.
    let (deps, _) = ours(&["-E", "deps(fs-app) - package(fs-app)"]);
    let listed: Vec<&str> = deps
        .iter()
        .filter(|(_, s)| s.0 == "listed")
        .map(|(id, _)| id.as_str())
        .collect();
    assert_eq!(
        listed,
        [
            "fs-core",
            "fs-core::core_api",
            "fs-macros",
            "fs-storage",
            "fs-storage::bin/storage-cli",
            "fs-storage::storage_it"
        ]
    );
    let (host, _) = ours(&["-E", "platform(host)"]);
    assert_eq!(host["fs-macros"].0, "listed");
    assert_eq!(host["fs-macros"].1, "proc-macro");
    assert_eq!(
        host["fs-core"].0, "skipped",
        "not listed at all: {:?}",
        host["fs-core"]
    );
    assert_eq!(
        host["fs-storage"].1, "lib",
        "a cdylib + rlib crate's tests are kind lib"
    );

    if !nextest_installed() {
        eprintln!("note: cargo nextest is not installed; compared with the answers above only");
        return;
    }
    let mut differ = Vec::new();
    for flags in cases {
        let (a, b) = (ours(flags), theirs(flags));
        if a != b {
            differ.push(format!("{flags:?}:\n  ours   {a:?}\n  nextest {b:?}"));
        }
    }
    assert!(differ.is_empty(), "{}", differ.join("\n"));
}

/// A bad expression exits 2 before anything is built, with nextest's own
/// diagnostic: the expression, a caret under the fault, the cause.
#[test]
fn an_invalid_filterset_exits_2_with_nextests_diagnostic_before_any_build() {
    let target = tempfile::tempdir().unwrap();
    let exprs = ["test(a) & pakage(foo)", "package(nope)"];
    let out = run(ephem()
        .arg("list")
        .args(filtersets_args())
        .arg("--target-dir")
        .arg(target.path())
        .args(["-E", exprs[0], "-E", exprs[1]]));
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with(
            "error: invalid filterset -E \"test(a) & pakage(foo)\", \"package(nope)\" (3 errors"
        ),
        "{stderr}"
    );
    assert!(!stderr.contains("Compiling"), "nothing is built: {stderr}");
    assert!(!target.path().join("debug").exists(), "nothing is built");
    let caret = " 1 │ test(a) & pakage(foo)\n   ·          ──────┬─────\n   ·                ╰── missing expression";
    assert!(stderr.contains(caret), "{stderr}");

    if !nextest_installed() {
        return;
    }
    // nextest's diagnostics, block by block, appear as they are in ours.
    let nextest = Command::new("cargo")
        .args(["nextest", "list"])
        .args(filtersets_args())
        .args(["-E", exprs[0], "-E", exprs[1]])
        .output()
        .unwrap();
    let theirs = String::from_utf8_lossy(&nextest.stderr);
    let blocks: Vec<&str> = theirs
        .split("\n\n")
        .map(|b| {
            b.trim_end_matches("error: failed to parse filterset")
                .trim_end()
        })
        .filter(|b| b.contains('│'))
        .collect();
    assert_eq!(blocks.len(), 3, "{theirs}");
    for block in blocks {
        assert!(
            stderr.contains(block),
            "nextest's\n{block}\nis not in ours:\n{stderr}"
        );
    }

    // The same for `test` and `archive`, both before any build.
    for command in ["test", "archive"] {
        let out = run(ephem()
            .arg(command)
            .args(filtersets_args())
            .arg("--target-dir")
            .arg(target.path())
            .args(["--archive-file"].iter().filter(|_| command == "archive"))
            .args(
                [target.path().join("a.tar.zst")]
                    .iter()
                    .filter(|_| command == "archive"),
            )
            .args(["-E", "package(nope)"]));
        assert_eq!(out.status.code(), Some(2), "{command}: {}", describe(&out));
        assert!(String::from_utf8_lossy(&out.stderr).contains("no packages matched this"));
        assert!(
            !target.path().join("debug").exists(),
            "{command} built something"
        );
    }
}

/// `test -E` runs the selection and only it.
#[test]
fn test_runs_only_what_the_filterset_selects() {
    let _fixture = crate::rerun::fixture_lock();
    let dir = tempfile::tempdir().unwrap();
    let junit = dir.path().join("junit.xml");
    let out = run(ephem()
        .arg("test")
        .args(filtersets_args())
        .args([
            "-E",
            "rdeps(fs-core) & test(/toggle/)",
            "--no-env",
            "--junit",
        ])
        .arg(&junit));
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let report = read_junit(&junit);
    let mut ran: Vec<(String, String, bool)> = cases(&report)
        .into_iter()
        .map(|(s, c)| (s.to_owned(), c.name.to_string(), is_skipped(c)))
        .collect();
    ran.sort();
    let expected: Vec<(String, String, bool)> = [
        ("fs-app", "tests::toggle_app_ignored", true),
        ("fs-app", "tests::toggle_app_one", false),
        ("fs-app", "tests::toggle_app_two", false),
        ("fs-core", "tests::toggle_core", false),
        ("fs-storage", "tests::toggle_storage", false),
        ("fs-storage::storage_it", "toggle_storage_it", false),
    ]
    .iter()
    .map(|(s, n, k)| (s.to_string(), n.to_string(), *k))
    .collect();
    assert_eq!(ran, expected);
}

/// `archive -E` packs only the binaries the filterset can match, refuses
/// `test()`, and the archive carries the package graph: `deps()` works
/// where it runs, with no cargo.
#[test]
fn archive_filtersets_choose_what_goes_in_and_travel_with_the_graph() {
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("a.tar.zst");
    let out = run(ephem()
        .arg("archive")
        .args(filtersets_args())
        .arg("--archive-file")
        .arg(&archive)
        .args(["-E", "test(x)"]));
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("predicate not allowed in `archive-filter` expressions"),
        "{}",
        describe(&out)
    );

    let out = run(ephem()
        .arg("archive")
        .args(filtersets_args())
        .arg("--archive-file")
        .arg(&archive)
        .args(["-E", "rdeps(fs-storage)"]));
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("Archived 7 test binaries (5 left out by -E)"),
        "{stderr}"
    );

    let list = |flags: &[&str]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_cargo-ephem"));
        cmd.env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("HOME", std::env::temp_dir())
            .args(["list", "--archive-file"])
            .arg(&archive)
            .args(flags);
        let out = run(&mut cmd);
        assert_eq!(out.status.code(), Some(0), "{flags:?}: {}", describe(&out));
        String::from_utf8(out.stdout).unwrap()
    };
    let all = list(&[]);
    assert!(all.contains("fs-app::example/demo:\n"), "{all}");
    assert!(!all.contains("fs-core"), "left out: {all}");
    let deps = list(&["-E", "deps(fs-app) & kind(lib)"]);
    assert!(deps.contains("fs-app:\n"), "{deps}");
    assert!(
        deps.contains("fs-storage:\n    tests::stores\n    tests::toggle_storage\n"),
        "{deps}"
    );
    assert!(
        !deps.contains("storage_it") && !deps.contains("demo"),
        "{deps}"
    );
}
