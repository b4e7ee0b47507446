//! The picture of a run: the run record written beside the JUnit report,
//! the page of `test --html` and of `report --html`, rendered by a real
//! headless Chromium (a screenshot and the DOM), and a CI matrix's records
//! drawn as one group, other groups beside it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use quick_junit::TestCaseStatus;
use serde_json::Value;

use crate::support::*;

/// Chromium as Debian names it, or as other distributions do. Missing, the
/// test fails: a skipped browser test would pass without proving anything.
fn chromium() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for name in ["chromium", "chromium-browser"] {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    panic!(
        "chromium is not installed (looked for chromium and chromium-browser on PATH); \
         run `bash scripts/provision-test-env.sh` as root, which installs Debian's chromium"
    );
}

/// Headless Chromium on a local page, with a profile of its own so that
/// tests running at once do not share one.
fn browser(chromium: &Path, profile: &Path) -> Command {
    let mut cmd = Command::new(chromium);
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--hide-scrollbars",
        "--no-first-run",
    ])
    .arg(format!("--user-data-dir={}", profile.display()));
    cmd
}

/// A decoded screenshot, as RGB pixels.
struct Screenshot {
    width: u32,
    height: u32,
    pixels: Vec<[u8; 3]>,
}

impl Screenshot {
    fn decode(path: &Path) -> Screenshot {
        let file = std::fs::File::open(path)
            .unwrap_or_else(|e| panic!("no screenshot at {}: {e}", path.display()));
        let mut reader = png::Decoder::new(std::io::BufReader::new(file))
            .read_info()
            .unwrap_or_else(|e| panic!("{} is not a PNG: {e}", path.display()));
        let mut buf = vec![0; reader.output_buffer_size().expect("a sane PNG size")];
        let info = reader.next_frame(&mut buf).expect("a PNG frame");
        assert_eq!(info.bit_depth, png::BitDepth::Eight, "{info:?}");
        let step = match info.color_type {
            png::ColorType::Rgba => 4,
            png::ColorType::Rgb => 3,
            other => panic!("unexpected PNG colour type {other:?}"),
        };
        let pixels = buf[..info.buffer_size()]
            .chunks_exact(step)
            .map(|p| [p[0], p[1], p[2]])
            .collect();
        Screenshot {
            width: info.width,
            height: info.height,
            pixels,
        }
    }

    /// Pixels within a few levels of `rgb` (a browser may round colours).
    fn count_near(&self, rgb: [u8; 3]) -> usize {
        self.pixels
            .iter()
            .filter(|p| p.iter().zip(rgb).all(|(a, b)| a.abs_diff(b) <= 6))
            .count()
    }

    /// Pixels of another colour than the most common one (the background).
    fn off_background(&self) -> usize {
        let mut counts: HashMap<[u8; 3], usize> = HashMap::new();
        for p in &self.pixels {
            *counts.entry(*p).or_default() += 1;
        }
        self.pixels.len() - counts.values().max().copied().unwrap_or(0)
    }
}

/// The page as a browser draws it (a 1280 x 2400 screenshot) and the DOM
/// it builds.
fn render(page: &Path) -> (Screenshot, String) {
    let chromium = chromium();
    let scratch = tempfile::tempdir().unwrap();
    let png = scratch.path().join("page.png");
    let url = format!("file://{}", page.display());
    let out = run(browser(&chromium, &scratch.path().join("profile-1"))
        .arg(format!("--screenshot={}", png.display()))
        .arg("--window-size=1280,2400")
        .arg(&url));
    assert!(
        out.status.success(),
        "chromium --screenshot: {}",
        describe(&out)
    );
    let shot = Screenshot::decode(&png);
    let out = run(browser(&chromium, &scratch.path().join("profile-2"))
        .arg("--dump-dom")
        .arg(&url));
    assert!(
        out.status.success(),
        "chromium --dump-dom: {}",
        describe(&out)
    );
    (shot, String::from_utf8_lossy(&out.stdout).into_owned())
}

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Names of the test cases that failed or timed out, from a JUnit report.
fn failed_names(junit: &Path) -> Vec<String> {
    let report = read_junit(junit);
    cases(&report)
        .into_iter()
        .filter(|(_, c)| matches!(c.status, TestCaseStatus::NonSuccess { .. }))
        .map(|(_, c)| c.name.as_str().to_owned())
        .collect()
}

/// The record's test of this name, with its shard.
fn record_test<'a>(record: &'a Value, name: &str) -> (u64, &'a Value) {
    record["shards"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| {
            let shard = s["shard"].as_u64().unwrap();
            s["tests"]
                .as_array()
                .unwrap()
                .iter()
                .map(move |t| (shard, t))
        })
        .find(|(_, t)| t["name"] == name)
        .unwrap_or_else(|| panic!("no test {name} in the record"))
}

/// Section elements of a page or DOM, counted by their opening tag.
fn sections(html: &str) -> usize {
    html.matches("<section class=\"group\"").count()
}

#[test]
fn a_run_draws_a_page_a_browser_renders_with_every_shard_and_failure() {
    chromium();
    let dir = tempfile::tempdir().unwrap();
    let junit = dir.path().join("junit.xml");
    let page = dir.path().join("run.html");
    let out = run(ephem_test()
        .args([
            "--no-env",
            "--shards",
            "2",
            "--no-fail-fast",
            "--retries",
            "1",
        ])
        .arg("--junit")
        .arg(&junit)
        .arg("--html")
        .arg(&page));
    assert_eq!(out.status.code(), Some(100), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("Record ") && stderr.contains("HTML "),
        "{stderr}"
    );

    // The record, beside the JUnit report, says what the report says.
    let record = read_json(&dir.path().join("junit.record.json"));
    assert_eq!(record["format"], 1);
    assert_eq!(record["shard_count"], 2);
    assert_eq!(record["partition"], "slice");
    let shards: Vec<u64> = record["shards"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["shard"].as_u64().unwrap())
        .collect();
    assert_eq!(shards, [1, 2]);
    let failed = failed_names(&junit);
    assert_eq!(failed.len(), 5, "{failed:?}");
    for name in &failed {
        let (_, test) = record_test(&record, name);
        assert_eq!(test["verdict"], "failed", "{test}");
        let attempts = test["attempts"].as_array().unwrap();
        assert_eq!(attempts.len(), 2, "--retries 1: {test}");
        assert_eq!(attempts[1]["status"], "failed");
        assert!(
            attempts[1]["stdout_tail"].is_string() || attempts[1]["stderr_tail"].is_string(),
            "a failure keeps the tail of its output: {test}"
        );
    }
    let (_, flaky) = record_test(&record, "tests::flaky_first_attempt_fails");
    assert_eq!(flaky["verdict"], "flaky");
    let statuses: Vec<&str> = flaky["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["failed", "passed"]);
    let (_, ignored) = record_test(&record, "tests::ignored_plain");
    assert_eq!(ignored["verdict"], "skipped");
    assert!(ignored["reason"].is_string());

    // The page, as a browser draws it: not blank, failures in red, passes
    // in green, every shard and every failure in the DOM.
    let html = std::fs::read_to_string(&page).unwrap();
    assert!(!html.contains("<script"), "the page runs no script");
    let (shot, dom) = render(&page);
    assert_eq!((shot.width, shot.height), (1280, 2400));
    assert!(
        shot.off_background() > 20_000,
        "the screenshot is (nearly) one flat colour: {} pixels differ",
        shot.off_background()
    );
    assert!(
        shot.count_near([0xcf, 0x22, 0x2e]) > 100,
        "no red (failed) bars"
    );
    assert!(
        shot.count_near([0x2d, 0xa4, 0x4e]) > 100,
        "no green (passed) bars"
    );
    for shard in [1, 2] {
        assert!(
            dom.contains(&format!("<g class=\"shard\" data-shard=\"{shard}\">")),
            "no timeline of shard {shard} in the DOM"
        );
        assert!(dom.contains(&format!("<tr data-shard=\"{shard}\">")));
    }
    assert_eq!(
        dom.matches("<article class=\"failure\">").count(),
        failed.len()
    );
    for name in &failed {
        assert!(
            dom.contains(&format!("<code class=\"name\">{name}</code>")),
            "failed test {name} missing from the DOM"
        );
    }
    assert!(dom.contains("tests::flaky_first_attempt_fails"));
}

/// One job of a matrix: `--partition slice:M/N` with the matrix's group.
fn matrix_job(junit: &Path, shard: u32, count: u32, group: &str) {
    let out = run(ephem_test()
        .args(["--no-env", "--no-fail-fast", "--partition"])
        .arg(format!("slice:{shard}/{count}"))
        .arg("--junit")
        .arg(junit)
        .env("EPHEM_RUN_GROUP", group));
    assert!(
        matches!(out.status.code(), Some(0 | 100)),
        "{}",
        describe(&out)
    );
}

fn report_cmd(page: &Path, records: &[&Path]) -> Command {
    let mut cmd = ephem();
    cmd.arg("report").arg("--html").arg(page).args(records);
    cmd
}

#[test]
fn a_matrix_is_one_group_and_other_groups_are_drawn_beside_it() {
    chromium();
    let dir = tempfile::tempdir().unwrap();
    let group = format!("matrix-{}", std::process::id());
    let junit = dir.path().join("junit.xml");
    matrix_job(&junit, 1, 2, &group);
    matrix_job(&junit, 2, 2, &group);
    let first = dir.path().join("junit-shard-1.record.json");
    let second = dir.path().join("junit-shard-2.record.json");
    assert!(first.is_file() && second.is_file(), "one record per job");
    assert!(!dir.path().join("junit.record.json").exists());

    // Both jobs' records: one group holding both shards.
    let page = dir.path().join("matrix.html");
    let out = run(&mut report_cmd(&page, &[&first, &second]));
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("1 group, 2 shards"),
        "{}",
        describe(&out)
    );
    let (shot, dom) = render(&page);
    assert!(shot.off_background() > 20_000);
    assert_eq!(sections(&dom), 1);
    assert!(dom.contains(&format!("data-group=\"{group}\"")));
    for shard in [1, 2] {
        assert!(dom.contains(&format!("<g class=\"shard\" data-shard=\"{shard}\">")));
    }
    assert!(!dom.contains("no record for shard"), "the matrix is whole");

    // A job of another matrix: its own section, headed by its key; each
    // group says which of its shards has no record here.
    let other_junit = dir.path().join("other/junit.xml");
    matrix_job(&other_junit, 1, 2, "nightly");
    let other = dir.path().join("other/junit-shard-1.record.json");
    let page = dir.path().join("two.html");
    let out = run(&mut report_cmd(&page, &[&first, &other]));
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let (_, dom) = render(&page);
    assert_eq!(sections(&dom), 2);
    assert!(dom.contains(&format!("<h2>Group <code>{group}</code></h2>")));
    assert!(dom.contains("<h2>Group <code>nightly</code></h2>"));
    assert_eq!(dom.matches("no record for shard 2 of 2").count(), 2);

    // A record of the same group with another plan is never mixed in.
    let mut forged = read_json(&second);
    forged["shard_count"] = 3.into();
    let disagreeing = dir.path().join("three-shards.record.json");
    std::fs::write(&disagreeing, forged.to_string()).unwrap();
    let out = run(&mut report_cmd(
        &dir.path().join("mixed.html"),
        &[&first, &disagreeing],
    ));
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&first.display().to_string())
            && stderr.contains(&disagreeing.display().to_string()),
        "the error names both files: {stderr}"
    );
    assert!(!dir.path().join("mixed.html").exists());
}

#[test]
fn bad_records_and_unwritable_pages_are_usage_errors() {
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("page.html");

    let out = run(ephem().args(["report", "--html"]).arg(&page));
    assert_eq!(out.status.code(), Some(2), "no records: {}", describe(&out));

    let junk = dir.path().join("junk.record.json");
    std::fs::write(&junk, "<testsuites/>").unwrap();
    let newer = dir.path().join("newer.record.json");
    std::fs::write(&newer, r#"{"format":2,"cargo_ephem":"9.9.9","run_id":"x"}"#).unwrap();
    for (record, expected) in [
        (&junk, "not a run record"),
        (&newer, "run record format 2 (written by cargo-ephem 9.9.9)"),
    ] {
        let out = run(&mut report_cmd(&page, &[record]));
        assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(&record.display().to_string()) && stderr.contains(expected),
            "{stderr}"
        );
        assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    }

    // An unwritable page is refused before the build.
    let out = run(ephem_test().args(["--no-env", "--html"]).arg(dir.path()));
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--html") && stderr.contains("is a folder"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("Compiling") && !stderr.contains("Starting"),
        "{stderr}"
    );
}
