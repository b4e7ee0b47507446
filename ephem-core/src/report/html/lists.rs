//! The lists under the timeline: the slowest tests, failures with their
//! output, flaky tests with their attempts.

use super::*;

/// Slowest tests listed.
pub(super) const SLOWEST: usize = 10;
/// Failures shown with their output; the rest are listed by name (a page
/// of thousands of outputs would be too heavy to open).
pub(super) const FAILURES_WITH_OUTPUT: usize = 100;
pub(super) fn attempt_words(a: &AttemptRecord) -> String {
    let status = match a.status {
        AttemptOutcome::Passed => "passed",
        AttemptOutcome::Failed => "failed",
        AttemptOutcome::TimedOut => "timed out",
        AttemptOutcome::Cancelled => "cancelled",
        AttemptOutcome::SpawnFailed => "could not start",
    };
    match &a.detail {
        Some(d) => format!("{status} ({d})"),
        None => status.to_owned(),
    }
}

pub(super) fn verdict_tag(v: RecordVerdict) -> (&'static str, &'static str) {
    match v {
        RecordVerdict::Passed => ("pass", "PASS"),
        RecordVerdict::Flaky => ("flaky", "FLAKY"),
        RecordVerdict::Failed => ("fail", "FAIL"),
        RecordVerdict::TimedOut => ("timeout", "TIMEOUT"),
        RecordVerdict::Skipped => ("skip", "SKIP"),
    }
}

pub(super) fn test_name_html(t: &TestRecord) -> String {
    format!(
        "<code class=\"bin\">{}</code> <code class=\"name\">{}</code>",
        escape(&t.binary_id),
        escape(&t.name)
    )
}

pub(super) fn slowest(out: &mut String, g: &Group) {
    let mut ran: Vec<(u32, &TestRecord)> = group_tests(g)
        .filter(|(_, _, t)| !t.attempts.is_empty())
        .map(|(_, m, t)| (m, t))
        .collect();
    if ran.is_empty() {
        return;
    }
    ran.sort_by_key(|(_, t)| std::cmp::Reverse(t.total_ms()));
    out.push_str(
        "<h3>Slowest tests</h3>\n<table class=\"slowest\"><thead><tr><th>time (all attempts)</th>\
         <th>shard</th><th>test</th><th>verdict</th><th>attempts</th></tr></thead><tbody>",
    );
    for (m, t) in ran.iter().take(SLOWEST) {
        let (class, word) = verdict_tag(t.verdict);
        let _ = write!(
            out,
            "<tr><td class=\"num\">{}</td><td>{m}</td><td>{}</td>\
             <td><span class=\"tag {class}\">{word}</span></td><td>{}</td></tr>",
            fmt_ms(t.total_ms()),
            test_name_html(t),
            t.attempts.len()
        );
    }
    out.push_str("</tbody></table>\n");
}

pub(super) fn failures(out: &mut String, g: &Group) {
    let failed: Vec<_> = group_tests(g)
        .filter(|(_, _, t)| matches!(t.verdict, RecordVerdict::Failed | RecordVerdict::TimedOut))
        .collect();
    let _ = writeln!(out, "<h3>Failures ({})</h3>", failed.len());
    if failed.is_empty() {
        out.push_str("<p class=\"none\">No test failed or timed out.</p>\n");
        return;
    }
    for (r, m, t) in failed.iter().take(FAILURES_WITH_OUTPUT) {
        failure(out, r, *m, t);
    }
    if failed.len() > FAILURES_WITH_OUTPUT {
        let _ = write!(
            out,
            "<p>{} more failures; their output is in the run records and the JUnit reports:</p>\
             <ul class=\"more\">",
            failed.len() - FAILURES_WITH_OUTPUT
        );
        for (_, m, t) in &failed[FAILURES_WITH_OUTPUT..] {
            let _ = write!(out, "<li>shard {m}: {}</li>", test_name_html(t));
        }
        out.push_str("</ul>\n");
    }
}

pub(super) fn failure(out: &mut String, r: &SourcedRecord, shard: u32, t: &TestRecord) {
    let (class, word) = verdict_tag(t.verdict);
    let _ = write!(
        out,
        "<article class=\"failure\"><h4><span class=\"tag {class}\">{word}</span> {}</h4>\
         <p class=\"meta\">shard {shard}, run <code>{}</code>, {} attempt{}, {} in all</p>",
        test_name_html(t),
        escape(short_id(&r.record.run_id)),
        t.attempts.len(),
        plural(t.attempts.len()),
        fmt_ms(t.total_ms())
    );
    if let Some(d) = &t.diagnosis {
        let _ = write!(out, "<p class=\"diag\">note: {}</p>", escape(d));
    }
    let Some((last, earlier)) = t.attempts.split_last() else {
        out.push_str("</article>\n");
        return;
    };
    attempt_output(out, t.attempts.len(), last);
    if !earlier.is_empty() {
        let _ = write!(
            out,
            "<details><summary>earlier attempt{} ({})</summary>",
            plural(earlier.len()),
            earlier.len()
        );
        for (i, a) in earlier.iter().enumerate() {
            attempt_output(out, i + 1, a);
        }
        out.push_str("</details>");
    }
    out.push_str("</article>\n");
}

/// One attempt's status and the tail of its output.
pub(super) fn attempt_output(out: &mut String, number: usize, a: &AttemptRecord) {
    let _ = write!(
        out,
        "<p class=\"attempt\">attempt {number}: {} in {}</p>",
        escape(&attempt_words(a)),
        fmt_ms(a.duration_ms)
    );
    let mut any = false;
    for (stream, text) in [("stdout", &a.stdout_tail), ("stderr", &a.stderr_tail)] {
        if let Some(text) = text {
            any = true;
            // A newline right after <pre> is dropped by parsers; this one
            // is, so the output's own first line survives.
            let _ = write!(
                out,
                "<div class=\"stream\">{stream}</div><pre class=\"out\">\n{}</pre>",
                escape(text)
            );
        }
    }
    if !any && a.status != AttemptOutcome::Passed {
        out.push_str("<p class=\"none\">no output</p>");
    }
}

pub(super) fn flaky(out: &mut String, g: &Group) {
    let flaky: Vec<_> = group_tests(g)
        .filter(|(_, _, t)| t.verdict == RecordVerdict::Flaky)
        .collect();
    let _ = writeln!(out, "<h3>Flaky tests ({})</h3>", flaky.len());
    if flaky.is_empty() {
        out.push_str("<p class=\"none\">No test needed a retry to pass.</p>\n");
        return;
    }
    out.push_str(
        "<table class=\"flaky\"><thead><tr><th>test</th><th>shard</th><th>attempts</th></tr>\
         </thead><tbody>",
    );
    for (_, m, t) in &flaky {
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{m}</td><td><ol class=\"attempts\">",
            test_name_html(t)
        );
        for a in &t.attempts {
            let _ = write!(
                out,
                "<li><span class=\"sw {}\"></span>{} in {}</li>",
                if a.status == AttemptOutcome::Passed {
                    "pass"
                } else {
                    "fail"
                },
                escape(&attempt_words(a)),
                fmt_ms(a.duration_ms)
            );
        }
        out.push_str("</ol>");
        let failed: Vec<_> = t
            .attempts
            .iter()
            .enumerate()
            .filter(|(_, a)| a.stdout_tail.is_some() || a.stderr_tail.is_some())
            .collect();
        if !failed.is_empty() {
            out.push_str("<details><summary>output of the failed attempts</summary>");
            for (i, a) in failed {
                attempt_output(out, i + 1, a);
            }
            out.push_str("</details>");
        }
        out.push_str("</td></tr>");
    }
    out.push_str("</tbody></table>\n");
}
