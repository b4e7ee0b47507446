//! The end of a run: counts, the slowest tests, every failure with its
//! output, and the command that reruns exactly the failed tests.

use std::fmt::Write as _;
use std::time::Duration;

use crate::run::{Attempt, AttemptStatus, RunResult, TestOutcome, Verdict};
use crate::test_list::TestList;

use super::display::fmt_duration;
use super::levels::{final_status_level_of, FinalStatusLevel, Reporting};

/// How many tests ended which way.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Passed on the first attempt.
    pub passed: usize,
    /// Failed, then passed on a retry.
    pub flaky: usize,
    /// Failed every attempt.
    pub failed: usize,
    /// Killed after the timeout.
    pub timed_out: usize,
    /// Not run (ignored, or stopped before their turn).
    pub skipped: usize,
}

impl Counts {
    /// Counts the outcomes.
    pub fn of(outcomes: &[TestOutcome]) -> Counts {
        let mut c = Counts::default();
        for o in outcomes {
            match o.verdict {
                Verdict::Passed => c.passed += 1,
                Verdict::Flaky => c.flaky += 1,
                Verdict::Failed => c.failed += 1,
                Verdict::TimedOut => c.timed_out += 1,
                Verdict::Skipped(_) => c.skipped += 1,
            }
        }
        c
    }

    /// Tests that ran to a verdict.
    pub fn run(&self) -> usize {
        self.passed + self.flaky + self.failed + self.timed_out
    }

    /// True when any test failed or timed out.
    pub fn any_failed(&self) -> bool {
        self.failed + self.timed_out > 0
    }
}

/// Most lines of a failed test's output shown per stream; the JUnit report
/// has the rest.
const MAX_LINES: usize = 200;

/// How the summary says to rerun what did not pass.
#[derive(Clone, Copy, Debug)]
pub struct RerunHint<'a> {
    /// The command line that reruns this selection (e.g. `cargo ephem test
    /// -p app`); `--exact` and the failed names, or `--rerun-failed`, follow.
    pub prefix: &'a str,
    /// The record written beside the JUnit report, if any: what
    /// `--rerun-failed FILE` takes elsewhere (a CI job's artifact).
    pub record: Option<&'a str>,
}

/// What the end of the run shows besides the counts.
#[derive(Clone, Copy, Debug)]
pub struct Shown {
    /// Which tests are listed again and whose output is shown.
    pub reporting: Reporting,
    /// A passing test that ran this long is listed at `--final-status-level slow`.
    pub slow_after: Duration,
}

impl Default for Shown {
    /// nextest's defaults, and `--slow-timeout`'s 60 s.
    fn default() -> Self {
        Shown {
            reporting: Reporting::default(),
            slow_after: Duration::from_secs(60),
        }
    }
}

/// Why an attempt ended, in a few words.
pub fn attempt_why(a: &Attempt) -> String {
    match &a.status {
        AttemptStatus::Passed => "passed".to_owned(),
        AttemptStatus::Failed(exit) => exit.clone(),
        AttemptStatus::SpawnFailed(e) => e.clone(),
        AttemptStatus::TimedOut => "timed out".to_owned(),
        AttemptStatus::Cancelled => "cancelled".to_owned(),
    }
}

/// `label (why, N attempts)`: the header of a finished test's output.
pub fn output_header(label: &str, o: &TestOutcome) -> String {
    let why = match (&o.verdict, o.attempts.last()) {
        (Verdict::TimedOut, _) => "timed out".to_owned(),
        (Verdict::Flaky, _) => "flaky".to_owned(),
        (_, Some(a)) => attempt_why(a),
        _ => "failed".to_owned(),
    };
    let tries = if o.attempts.len() > 1 {
        format!(", {} attempts", o.attempts.len())
    } else {
        String::new()
    };
    format!("{label} ({why}{tries})")
}

/// One attempt's output under a header: each stream's last lines (the
/// JUnit report has the rest), and the note on a dead service, if any.
pub fn output_block(header: &str, a: &Attempt, diagnosis: Option<&str>) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "--- {header} ---");
    if let Some(d) = diagnosis {
        let _ = writeln!(out, "note: {d}");
    }
    for (name, text) in [("stdout", &a.stdout), ("stderr", &a.stderr)] {
        if text.trim().is_empty() {
            continue;
        }
        let _ = writeln!(out, "--- {name} ---");
        out.push_str(&tail_lines(text, MAX_LINES));
        if !text.ends_with('\n') {
            out.push('\n');
        }
    }
    out
}

/// Renders the summary, ending with the commands that rerun what failed.
pub fn render(
    result: &RunResult,
    list: &TestList,
    rerun: RerunHint<'_>,
    shard_count: u32,
    shown: &Shown,
) -> String {
    let reporting = shown.reporting.effective();
    let rerun_prefix = rerun.prefix;
    let counts = Counts::of(&result.outcomes);
    let mut out = String::new();
    let label = |o: &TestOutcome| {
        let shard = if shard_count > 1 {
            format!("shard {} ", o.shard)
        } else {
            String::new()
        };
        format!(
            "{shard}{} {}",
            list.binary_id(o.test),
            list.tests[o.test].name
        )
    };

    let failures: Vec<&TestOutcome> = result
        .outcomes
        .iter()
        .filter(|o| matches!(o.verdict, Verdict::Failed | Verdict::TimedOut))
        .collect();
    // Output shown at the end (`final`, `immediate-final`): of passing
    // tests, then of failures, nearest the counts.
    let with_final_output = |o: &&TestOutcome| {
        reporting
            .output_of(&o.verdict)
            .is_some_and(|display| display.is_final())
    };
    let passes = result
        .outcomes
        .iter()
        .filter(|o| matches!(o.verdict, Verdict::Passed | Verdict::Flaky));
    for o in passes
        .chain(failures.iter().copied())
        .filter(with_final_output)
    {
        if let Some(a) = o.attempts.last() {
            let _ = write!(
                out,
                "\n{}",
                output_block(&output_header(&label(o), o), a, o.diagnosis.as_deref())
            );
        }
    }

    let _ = writeln!(out, "{}", "-".repeat(72));
    let mut slowest: Vec<&TestOutcome> = result
        .outcomes
        .iter()
        .filter(|o| !o.attempts.is_empty())
        .collect();
    slowest.sort_by_key(|o| std::cmp::Reverse(o.duration()));
    if !slowest.is_empty() {
        let _ = writeln!(out, "Slowest tests:");
        for o in slowest.iter().take(5) {
            let _ = writeln!(out, "  {} {}", fmt_duration(o.duration()), label(o));
        }
    }
    // The tests `--final-status-level` lists again, least news first,
    // failures last (nearest the counts).
    let level_of = |o: &TestOutcome| final_status_level_of(o, shown.slow_after);
    let listed = [
        FinalStatusLevel::Pass,
        FinalStatusLevel::Skip,
        FinalStatusLevel::Slow,
        FinalStatusLevel::Flaky,
        FinalStatusLevel::Fail,
    ];
    for level in listed
        .into_iter()
        .filter(|l| reporting.final_status_level >= *l)
    {
        for o in result.outcomes.iter().filter(|o| level_of(o) == level) {
            let took = fmt_duration(o.duration());
            let line = match &o.verdict {
                Verdict::Flaky => format!(
                    "    FLAKY {took} {} (passed on attempt {})",
                    label(o),
                    o.attempts.len()
                ),
                Verdict::TimedOut => format!("  TIMEOUT {took} {}", label(o)),
                Verdict::Failed => format!("     FAIL {took} {}", label(o)),
                Verdict::Skipped(why) => format!("     SKIP [         ] {} ({why})", label(o)),
                Verdict::Passed if level == FinalStatusLevel::Slow => {
                    format!("     SLOW {took} {}", label(o))
                }
                Verdict::Passed => format!("     PASS {took} {}", label(o)),
            };
            let _ = writeln!(out, "{line}");
        }
    }
    for death in &result.service_deaths {
        let shard_failures = failures
            .iter()
            .filter(|o| o.diagnosis.as_deref() == Some(death.as_str()))
            .count();
        let _ = writeln!(
            out,
            "  ENV DIED {death}; {shard_failures} later failure(s) of that shard may come from it"
        );
    }
    let _ = writeln!(
        out,
        "Summary [{:>8.3}s] {} tests run: {} passed, {} failed, {} flaky, {} timed out, {} skipped",
        result.duration.as_secs_f64(),
        counts.run(),
        counts.passed,
        counts.failed,
        counts.flaky,
        counts.timed_out,
        counts.skipped
    );
    if !failures.is_empty() {
        let mut names: Vec<&str> = failures
            .iter()
            .map(|o| list.tests[o.test].name.as_str())
            .collect();
        names.sort_unstable();
        names.dedup();
        let _ = writeln!(out, "To rerun the failed tests:");
        let _ = writeln!(
            out,
            "  {rerun_prefix} --exact {}",
            names
                .iter()
                .map(|n| shell_quote(n))
                .collect::<Vec<_>>()
                .join(" ")
        );
        let _ = writeln!(
            out,
            "  {rerun_prefix} --rerun-failed   (by binary and name, with any test not run{})",
            record_hint(rerun.record)
        );
    } else {
        let not_run = result
            .outcomes
            .iter()
            .filter(|o| matches!(&o.verdict, Verdict::Skipped(why) if why != "ignored"))
            .count();
        if not_run > 0 {
            let _ = writeln!(
                out,
                "To run the {not_run} test{} that did not run:",
                if not_run == 1 { "" } else { "s" }
            );
            let _ = writeln!(
                out,
                "  {rerun_prefix} --rerun-failed{}",
                record_hint(rerun.record).replacen(';', "   (", 1)
                    + if rerun.record.is_some() { ")" } else { "" }
            );
        }
    }
    out
}

fn record_hint(record: Option<&str>) -> String {
    record
        .map(|r| format!("; elsewhere: --rerun-failed {}", shell_quote(r)))
        .unwrap_or_default()
}

fn tail_lines(text: &str, max: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    if lines.len() <= max {
        return text.to_owned();
    }
    format!(
        "[... {} earlier lines; the JUnit report has all of it ...]\n{}\n",
        lines.len() - max,
        lines[lines.len() - max..].join("\n")
    )
}

/// Quotes a word for a POSIX shell when it needs it.
pub fn shell_quote(s: &str) -> String {
    // shlex refuses only words with a NUL, which no shell can pass anyway.
    shlex::try_quote(s)
        .map(|q| q.into_owned())
        .unwrap_or_else(|_| format!("'{}'", s.replace(['\0', '\''], "")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::levels::OutputDisplay;
    use crate::test_list::TestBinary;
    use std::sync::Arc;
    use std::time::SystemTime;

    /// `fails` (failed, with output) and `passes` (passed, with output).
    fn run() -> (RunResult, TestList) {
        let binary = TestBinary {
            binary_id: "pkg".into(),
            binary_name: "pkg".into(),
            package_id: "pkg".into(),
            package_name: "pkg".into(),
            kind: "lib".into(),
            path: "/bin/true".into(),
            cwd: "/".into(),
            env: Arc::new(Vec::new()),
        };
        let list = TestList::new(
            vec![(
                binary,
                vec![("fails".into(), false), ("passes".into(), false)],
            )],
            "/".into(),
        );
        let outcome = |test, status, verdict, out: &str| TestOutcome {
            test,
            shard: 1,
            attempts: vec![Attempt {
                status,
                started_at: SystemTime::now(),
                duration: Duration::from_millis(5),
                stdout: out.to_owned(),
                stderr: String::new(),
            }],
            verdict,
            diagnosis: None,
        };
        let result = RunResult {
            outcomes: vec![
                outcome(
                    0,
                    AttemptStatus::Failed("exit code 101".into()),
                    Verdict::Failed,
                    "FAIL-OUT",
                ),
                outcome(1, AttemptStatus::Passed, Verdict::Passed, "PASS-OUT"),
            ],
            interrupted: None,
            env_errors: Vec::new(),
            kept: Vec::new(),
            kept_for_reuse: None,
            service_deaths: Vec::new(),
            internal_error: None,
            started_at: SystemTime::now(),
            duration: Duration::from_millis(10),
            prepare: None,
            timelines: Vec::new(),
        };
        (result, list)
    }

    fn render_with(reporting: Reporting) -> String {
        let (result, list) = run();
        let hint = RerunHint {
            prefix: "cargo ephem test",
            record: None,
        };
        let shown = Shown {
            reporting,
            ..Shown::default()
        };
        render(&result, &list, hint, 1, &shown)
    }

    #[test]
    fn the_end_shows_what_the_final_level_and_the_outputs_say() {
        // nextest's defaults: the failure listed again, no output (it was
        // shown when the test failed).
        let default = render_with(Reporting::default());
        assert!(
            default.contains("     FAIL [   0.005s] pkg fails"),
            "{default}"
        );
        assert!(
            !default.contains("PASS [") && !default.contains("-OUT"),
            "{default}"
        );
        let all = render_with(Reporting {
            final_status_level: FinalStatusLevel::All,
            failure_output: OutputDisplay::Final,
            success_output: OutputDisplay::ImmediateFinal,
            ..Reporting::default()
        });
        assert!(all.contains("     PASS [   0.005s] pkg passes"), "{all}");
        assert!(all.contains("--- pkg fails (exit code 101) ---\n--- stdout ---\nFAIL-OUT"));
        assert!(all.contains("--- pkg passes (passed) ---\n--- stdout ---\nPASS-OUT"));
        let none = render_with(Reporting {
            final_status_level: FinalStatusLevel::None,
            ..Reporting::default()
        });
        assert!(!none.contains(" FAIL ["), "{none}");
        assert!(none.contains("1 failed"), "the counts stay: {none}");
    }

    #[test]
    fn quoting() {
        assert_eq!(shell_quote("tests::a_b"), "tests::a_b");
        for word in ["it's", "a b", "$(rm -rf ~)", "x\"y", "", "tab\there"] {
            let quoted = shell_quote(word);
            assert_eq!(
                shlex::split(&quoted),
                Some(vec![word.to_owned()]),
                "{quoted}"
            );
        }
    }
}
