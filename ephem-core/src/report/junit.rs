//! JUnit XML: writing a run's reports, merging reports of partitioned CI
//! jobs, and reading past durations back for `--partition duration`.
//!
//! What consumers read (Jenkins, GitLab, GitHub reporters) decides the
//! shape: one `<testsuite>` per test binary, `classname` = binary id, `name`
//! and `time` on every `<testcase>`, failures with a short `message` and the
//! panic inside, output on the test case, retries inside one test case, and
//! no `timestamp` on test cases (the Jenkins xunit schema forbids it).

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use camino::{Utf8Path, Utf8PathBuf};
use quick_junit::{NonSuccessKind, Report, TestCase, TestCaseStatus, TestRerun, TestSuite};
use rayon::prelude::*;

use crate::error::{EphemError, Result};
use crate::partition::Timings;
use crate::run::{Attempt, AttemptStatus, TestOutcome, Verdict};
use crate::test_list::TestList;

/// Output beyond this many bytes per stream is cut from the middle: GitLab
/// rejects report files over 30 MB, and the end of a log says most.
const MAX_OUTPUT: usize = 256 * 1024;

/// Builds the report of a set of outcomes: one suite per binary.
pub fn build_report(name: &str, list: &TestList, outcomes: &[&TestOutcome]) -> Report {
    let mut suites: BTreeMap<&str, Vec<&TestOutcome>> = BTreeMap::new();
    for o in outcomes {
        suites.entry(list.binary_id(o.test)).or_default().push(o);
    }
    let mut report = Report::new(name);
    let mut total = Duration::ZERO;
    for (binary_id, mut cases) in suites {
        cases.sort_by(|a, b| list.tests[a.test].name.cmp(&list.tests[b.test].name));
        let mut suite = TestSuite::new(binary_id);
        if let Some(first) = cases
            .iter()
            .filter_map(|o| o.attempts.first())
            .map(|a| a.started_at)
            .min()
        {
            suite.set_timestamp(chrono_time(first));
        }
        let mut time = Duration::ZERO;
        for o in cases {
            let case = test_case(binary_id, &list.tests[o.test].name, o);
            time += case.time.unwrap_or_default();
            suite.add_test_case(case);
        }
        suite.set_time(time);
        total += time;
        report.add_test_suite(suite);
    }
    report.set_time(total);
    report
}

fn chrono_time(t: std::time::SystemTime) -> chrono::DateTime<chrono::FixedOffset> {
    chrono::DateTime::<chrono::Utc>::from(t).fixed_offset()
}

fn test_case(binary_id: &str, name: &str, o: &TestOutcome) -> TestCase {
    let last = o.attempts.last();
    let status = match &o.verdict {
        Verdict::Passed => TestCaseStatus::success(),
        Verdict::Flaky => {
            let mut s = TestCaseStatus::success();
            if let TestCaseStatus::Success { flaky_runs } = &mut s {
                flaky_runs.extend(o.attempts[..o.attempts.len() - 1].iter().map(rerun));
            }
            s
        }
        Verdict::Failed | Verdict::TimedOut => {
            let last = last.expect("a failed test has attempts");
            let kind = if matches!(last.status, AttemptStatus::SpawnFailed(_)) {
                NonSuccessKind::Error
            } else {
                NonSuccessKind::Failure
            };
            let mut s = TestCaseStatus::non_success(kind);
            let (message, ty) = failure_summary(last, o.diagnosis.as_deref());
            s.set_message(message)
                .set_type(ty)
                .set_description(failure_text(last, o.diagnosis.as_deref()));
            s.add_reruns(o.attempts[..o.attempts.len() - 1].iter().map(rerun));
            s
        }
        Verdict::Skipped(reason) => {
            let mut s = TestCaseStatus::skipped();
            s.set_message(reason.as_str());
            s
        }
    };
    let mut case = TestCase::new(name, status);
    case.set_classname(binary_id);
    case.set_time(
        o.attempts
            .iter()
            .map(|a| a.duration)
            .sum::<Duration>()
            .max(o.duration()),
    );
    if let Some(a) = last.filter(|_| !matches!(o.verdict, Verdict::Passed | Verdict::Flaky)) {
        if !a.stdout.is_empty() {
            case.set_system_out(clean_output(&a.stdout));
        }
        if !a.stderr.is_empty() {
            case.set_system_err(clean_output(&a.stderr));
        }
    }
    case
}

/// An earlier attempt; quick-junit writes it as `flakyFailure` inside a
/// passing case and as `rerunFailure` inside a failing one.
fn rerun(a: &Attempt) -> TestRerun {
    let kind = if matches!(a.status, AttemptStatus::SpawnFailed(_)) {
        NonSuccessKind::Error
    } else {
        NonSuccessKind::Failure
    };
    let mut r = TestRerun::new(kind);
    let (message, ty) = failure_summary(a, None);
    r.set_message(message).set_type(ty);
    // The Jenkins xunit schema allows no `time` or `timestamp` here, so the
    // attempt's timing goes into the text.
    r.set_description(format!(
        "attempt started {} and ran {}\n{}",
        humantime::format_rfc3339_millis(a.started_at),
        fmt_secs(a.duration),
        failure_text(a, None)
    ));
    if !a.stdout.is_empty() {
        r.set_system_out(clean_output(&a.stdout));
    }
    if !a.stderr.is_empty() {
        r.set_system_err(clean_output(&a.stderr));
    }
    r
}

/// The `message` and `type` attributes: short, one line.
fn failure_summary(a: &Attempt, diagnosis: Option<&str>) -> (String, String) {
    let (mut message, ty) = match &a.status {
        AttemptStatus::TimedOut => (
            format!("timed out after {}", fmt_secs(a.duration)),
            "timeout".to_owned(),
        ),
        AttemptStatus::SpawnFailed(e) => (e.clone(), "spawn error".to_owned()),
        AttemptStatus::Failed(exit) => match panic_message(&a.stderr) {
            Some(p) => (first_line(&p, 200), "panic".to_owned()),
            None => (format!("test failed with {exit}"), exit.clone()),
        },
        AttemptStatus::Cancelled => ("cancelled".to_owned(), "cancelled".to_owned()),
        AttemptStatus::Passed => (String::new(), String::new()),
    };
    if let Some(d) = diagnosis {
        message = format!("{d}; {message}");
    }
    (strip_ansi(&message), ty)
}

/// The text inside `<failure>`: the panic (message and backtrace) or the tail
/// of stderr.
fn failure_text(a: &Attempt, diagnosis: Option<&str>) -> String {
    let mut text = String::new();
    if let Some(d) = diagnosis {
        text.push_str(d);
        text.push('\n');
    }
    match &a.status {
        AttemptStatus::Failed(exit) => match panic_block(&a.stderr) {
            Some(p) => text.push_str(&p),
            None => text.push_str(&format!("test failed with {exit}")),
        },
        AttemptStatus::TimedOut => text.push_str(&format!(
            "killed after the test timeout of {}",
            fmt_secs(a.duration)
        )),
        other => text.push_str(&format!("{other:?}")),
    }
    clean_output(&text)
}

/// The message of the first panic in a test's stderr.
///
/// libtest prints `thread 'name' panicked at src/lib.rs:3:5:` and the message
/// on the following lines (Rust >= 1.73), or `panicked at 'msg', file` before.
pub fn panic_message(stderr: &str) -> Option<String> {
    let block = panic_block(stderr)?;
    let mut lines = block.lines();
    let head = lines.next()?;
    if let Some(rest) = head.split_once("panicked at '").map(|(_, r)| r) {
        return Some(
            rest.rsplit_once("', ")
                .map(|(m, _)| m)
                .unwrap_or(rest)
                .to_owned(),
        );
    }
    let msg: Vec<&str> = lines
        .take_while(|l| !l.starts_with("note: ") && !l.starts_with("stack backtrace:"))
        .collect();
    if msg.is_empty() {
        Some(head.to_owned())
    } else {
        Some(msg.join("\n"))
    }
}

/// From the first `panicked at` line to the end of stderr.
fn panic_block(stderr: &str) -> Option<String> {
    let start = stderr
        .find("thread '")
        .filter(|&i| stderr[i..].contains("panicked at"))?;
    let line_start = stderr[..start].rfind('\n').map(|i| i + 1).unwrap_or(0);
    Some(stderr[line_start..].trim_end().to_owned())
}

fn first_line(s: &str, max: usize) -> String {
    let line = s.lines().next().unwrap_or("");
    if line.chars().count() > max {
        format!("{}...", line.chars().take(max).collect::<String>())
    } else if s.lines().nth(1).is_some() {
        format!("{line} ...")
    } else {
        line.to_owned()
    }
}

fn fmt_secs(d: Duration) -> String {
    format!("{:.3}s", d.as_secs_f64())
}

fn strip_ansi(s: &str) -> String {
    String::from_utf8_lossy(&strip_ansi_escapes::strip(s)).into_owned()
}

/// Output as stored in reports: ANSI escapes removed, long output cut in the middle.
fn clean_output(s: &str) -> String {
    let s = strip_ansi(s);
    if s.len() <= MAX_OUTPUT {
        return s;
    }
    let head_end = floor_char_boundary(&s, MAX_OUTPUT / 4);
    let tail_start = floor_char_boundary(&s, s.len() - (MAX_OUTPUT - MAX_OUTPUT / 4));
    format!(
        "{}\n[... {} bytes cut by cargo-ephem ...]\n{}",
        &s[..head_end],
        tail_start - head_end,
        &s[tail_start..]
    )
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// Writes a report, creating the parent directory.
pub fn write_report(report: &Report, path: &Utf8Path) -> Result<()> {
    let io = |source| EphemError::Io {
        action: "cannot write JUnit report",
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let xml = report
        .to_string()
        .map_err(|e| EphemError::Internal(format!("serializing JUnit: {e}")))?;
    // Every secret, in every message and output, as the file is written.
    let xml = crate::mask::mask(&xml);
    // Written next to the target, then renamed, so a reader never sees half a report.
    let tmp = path.with_extension("xml.tmp");
    std::fs::write(&tmp, xml).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

/// Fails now, before the build, if a report could not be written at `path`
/// later: its folder cannot be made, or is not writable, or `path` is a folder.
pub fn check_writable(path: &Utf8Path) -> Result<()> {
    let unwritable = |e: std::io::Error| {
        EphemError::Usage(format!(
            "--junit {path}: cannot write a report there ({e}); give a path in a writable folder"
        ))
    };
    if path.is_dir() {
        return Err(EphemError::Usage(format!(
            "--junit {path}: is a folder; give a file name, e.g. {}",
            path.join("junit.xml")
        )));
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(unwritable)?;
    }
    let probe = path.with_extension("xml.tmp");
    std::fs::write(&probe, b"").map_err(unwritable)?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

/// `<stem>-shard-<M>.xml` beside the merged report.
pub fn shard_report_path(merged: &Utf8Path, shard: u32) -> Utf8PathBuf {
    let stem = merged.file_stem().unwrap_or("junit");
    let ext = merged.extension().unwrap_or("xml");
    merged.with_file_name(format!("{stem}-shard-{shard}.{ext}"))
}

/// Reads one report, with errors that name the file.
pub fn read_report(path: &Utf8Path) -> Result<Report> {
    let bytes = std::fs::read(path).map_err(|e| EphemError::Input {
        path: path.to_owned(),
        message: format!("cannot read this JUnit report: {e}; check the path"),
    })?;
    Report::deserialize(&bytes[..]).map_err(|e| EphemError::Input {
        path: path.to_owned(),
        message: format!(
            "not a JUnit report cargo-ephem can read ({e}); expected a <testsuites> root \
             as written by `cargo ephem test --junit` or `cargo nextest run`"
        ),
    })
}

/// Outcome of a merge, for the one-line summary the CLI prints.
#[derive(Debug, Default)]
pub struct MergeStats {
    /// Input files.
    pub files: usize,
    /// Suites in the merged report.
    pub suites: usize,
    /// Test cases in the merged report.
    pub tests: usize,
    /// Test cases dropped because the same (classname, name) was already there.
    pub duplicates: usize,
}

/// Merges reports: same-named suites become one, counts recomputed from the
/// test cases, suite time the sum of its cases. Files are parsed in parallel.
pub fn merge_reports(name: &str, inputs: &[Utf8PathBuf]) -> Result<(Report, MergeStats)> {
    let reports = inputs
        .par_iter()
        .map(|p| read_report(p))
        .collect::<Result<Vec<_>>>()?;
    let mut stats = MergeStats {
        files: inputs.len(),
        ..Default::default()
    };
    let mut merged: BTreeMap<String, TestSuite> = BTreeMap::new();
    let mut seen: HashSet<(String, String, String)> = HashSet::new();
    for report in reports {
        for mut suite in report.test_suites {
            let entry = merged
                .entry(suite.name.as_str().to_owned())
                .or_insert_with(|| {
                    let mut s = TestSuite::new(suite.name.clone());
                    s.timestamp = suite.timestamp;
                    s
                });
            if let (Some(a), Some(b)) = (entry.timestamp, suite.timestamp) {
                entry.timestamp = Some(a.min(b));
            } else {
                entry.timestamp = entry.timestamp.or(suite.timestamp);
            }
            for case in suite.test_cases.drain(..) {
                let key = (
                    entry.name.as_str().to_owned(),
                    case.classname
                        .as_ref()
                        .map(|c| c.as_str().to_owned())
                        .unwrap_or_default(),
                    case.name.as_str().to_owned(),
                );
                // GitLab keeps only the first of two same-named cases; say so
                // instead of writing a report that consumers read differently.
                if !seen.insert(key) {
                    stats.duplicates += 1;
                    continue;
                }
                entry.add_test_case(case);
            }
        }
    }
    let mut out = Report::new(name);
    let mut total = Duration::ZERO;
    for (_, mut suite) in merged {
        let time: Duration = suite.test_cases.iter().filter_map(|c| c.time).sum();
        suite.set_time(time);
        total += time;
        stats.tests += suite.test_cases.len();
        stats.suites += 1;
        out.add_test_suite(suite);
    }
    out.set_time(total);
    Ok((out, stats))
}

/// Reads past durations from JUnit reports (merged or per shard): the time of
/// every test case that ran, keyed by (classname, name).
pub fn read_timings(paths: &[Utf8PathBuf]) -> Result<Timings> {
    let reports = paths
        .par_iter()
        .map(|p| read_report(p).map(|r| (p, r)))
        .collect::<Result<Vec<_>>>()?;
    let mut timings = Timings::default();
    for (path, report) in reports {
        let mut cases = 0;
        for suite in &report.test_suites {
            for case in &suite.test_cases {
                if matches!(case.status, TestCaseStatus::Skipped { .. }) {
                    continue;
                }
                let classname = case.classname.as_ref().unwrap_or(&suite.name);
                if let Some(time) = case.time {
                    timings.insert(classname.as_str(), case.name.as_str(), time);
                    cases += 1;
                }
            }
        }
        if cases == 0 && report.test_suites.iter().all(|s| s.test_cases.is_empty()) {
            return Err(EphemError::Input {
                path: path.clone(),
                message: "holds no test cases, so it gives no durations; pass the JUnit report \
                          of an earlier run (--junit) or drop --timings"
                    .to_owned(),
            });
        }
    }
    Ok(timings)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panic_message_new_format() {
        let stderr = "some output\nthread 'tests::fails' panicked at src/lib.rs:10:9:\nassertion `left == right` failed\n  left: 1\n right: 2\nnote: run with `RUST_BACKTRACE=1`\n";
        assert_eq!(
            panic_message(stderr).unwrap(),
            "assertion `left == right` failed\n  left: 1\n right: 2"
        );
    }

    #[test]
    fn panic_message_old_format() {
        let stderr = "thread 'main' panicked at 'boom', src/lib.rs:1:1\n";
        assert_eq!(panic_message(stderr).unwrap(), "boom");
    }

    #[test]
    fn no_panic_no_message() {
        assert!(panic_message("just output\n").is_none());
    }

    #[test]
    fn long_output_is_cut_in_the_middle() {
        let s = format!("HEAD{}TAIL", "x".repeat(MAX_OUTPUT * 2));
        let c = clean_output(&s);
        assert!(c.len() < MAX_OUTPUT + 200);
        assert!(c.starts_with("HEAD") && c.ends_with("TAIL"));
        assert!(c.contains("bytes cut by cargo-ephem"));
    }

    #[test]
    fn ansi_is_removed() {
        assert_eq!(clean_output("\x1b[31mred\x1b[0m"), "red");
    }

    #[test]
    fn shard_paths() {
        assert_eq!(
            shard_report_path(Utf8Path::new("out/junit.xml"), 3),
            Utf8PathBuf::from("out/junit-shard-3.xml")
        );
    }
}
