//! The picture of a run: one self-contained HTML page (inline CSS and SVG,
//! no script, nothing fetched) drawn from run records. One section per
//! matrix group: totals, a per-shard summary, a timeline per shard on a
//! common time axis, the slowest tests, failures with their output, and
//! flaky tests with their attempts.
//!
//! Everything that comes from tests or paths is escaped: test output is
//! untrusted. Tooltips are SVG `<title>`s, which every browser shows on
//! hover without script.
//!
//! At thousands of tests the timeline stays readable and small: tests
//! running at once in a shard get lanes of their own, and neighbouring
//! bars of one colour that are each narrower than a pixel are drawn as one
//! bar whose tooltip counts and names them.

use std::fmt::Write as _;

use camino::Utf8Path;

use super::record::{
    write_atomically, AttemptOutcome, AttemptRecord, Group, RecordSpan, RecordVerdict, ShardRecord,
    SourcedRecord, TestRecord, Timestamp,
};
use crate::error::Result;

mod lists;
mod timeline;

use lists::{attempt_words, failures, flaky, slowest};
use timeline::{ms_between, shard_extent, timeline, Axis};

/// Writes the page of `groups` to `path`.
pub fn write_html(groups: &[Group], path: &Utf8Path) -> Result<()> {
    write_atomically(path, &render(groups), "cannot write HTML report")
}

/// The whole page.
pub fn render(groups: &[Group]) -> String {
    let mut out = String::with_capacity(64 * 1024);
    let title = match groups {
        [one] => format!("cargo-ephem run {}", one.key),
        _ => format!("cargo-ephem: {} runs", groups.len()),
    };
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>{}</title>\n<style>{CSS}</style>\n</head>\n<body>\n<header><h1>{}</h1>\
         <p class=\"meta\">{} group{} drawn by cargo-ephem {}</p></header>\n",
        escape(&title),
        escape(&title),
        groups.len(),
        plural(groups.len()),
        escape(env!("CARGO_PKG_VERSION")),
    );
    if groups.len() > 1 {
        out.push_str("<nav><ul>");
        for (i, g) in groups.iter().enumerate() {
            let _ = write!(
                out,
                "<li><a href=\"#group-{}\">group {}</a></li>",
                i + 1,
                escape(&g.key)
            );
        }
        out.push_str("</ul></nav>\n");
    }
    if groups.is_empty() {
        out.push_str("<p>No run records.</p>\n");
    }
    for (i, g) in groups.iter().enumerate() {
        group_section(&mut out, i + 1, g);
    }
    out.push_str("</body>\n</html>\n");
    out
}

fn group_section(out: &mut String, number: usize, g: &Group) {
    let _ = write!(
        out,
        "<section class=\"group\" id=\"group-{number}\" data-group=\"{}\">\n\
         <h2>Group <code>{}</code></h2>\n",
        escape(&g.key),
        escape(&g.key)
    );
    runs_list(out, g);
    problems(out, g);
    totals(out, g);
    shard_table(out, g);
    timeline(out, number, g);
    slowest(out, g);
    failures(out, g);
    flaky(out, g);
    out.push_str("</section>\n");
}

/// Which runs (records) the group holds.
fn runs_list(out: &mut String, g: &Group) {
    let _ = write!(
        out,
        "<p class=\"meta\">{} partition, {} shard{} in the plan; {} record{}:</p>\n<ul class=\"runs\">",
        escape(&g.partition),
        g.shard_count,
        plural(g.shard_count as usize),
        g.records.len(),
        plural(g.records.len()),
    );
    for r in &g.records {
        let shards: Vec<String> = r
            .record
            .shards
            .iter()
            .map(|s| s.shard.to_string())
            .collect();
        let _ = write!(
            out,
            "<li>run <code>{}</code> from <code>{}</code>: shard{} {}; started {}, took {}</li>",
            escape(&r.record.run_id),
            escape(&r.source),
            plural(shards.len()),
            if shards.is_empty() {
                "none".to_owned()
            } else {
                shards.join(", ")
            },
            escape(&r.record.started_at.rfc3339()),
            fmt_ms(r.record.duration_ms),
        );
    }
    out.push_str("</ul>\n");
}

/// Environment errors, service deaths, interruptions, internal errors, and
/// shards of the plan that no record holds.
fn problems(out: &mut String, g: &Group) {
    let mut items = Vec::new();
    for r in &g.records {
        let run = short_id(&r.record.run_id);
        for e in &r.record.env_errors {
            let place = match e.shard {
                0 => "environment preparation".to_owned(),
                m => format!("shard {m}"),
            };
            items.push(format!(
                "<li class=\"error\">run <code>{}</code>, {place}: environment error: {}</li>",
                escape(run),
                escape(&e.message)
            ));
        }
        for death in &r.record.service_deaths {
            items.push(format!(
                "<li class=\"error\">run <code>{}</code>: {}</li>",
                escape(run),
                escape(death)
            ));
        }
        if let Some(signal) = r.record.interrupted {
            items.push(format!(
                "<li class=\"warn\">run <code>{}</code> was interrupted by signal {signal}; \
                 tests not yet run are skipped</li>",
                escape(run)
            ));
        }
        if let Some(e) = &r.record.internal_error {
            items.push(format!(
                "<li class=\"error\">run <code>{}</code> stopped on an internal error: {}</li>",
                escape(run),
                escape(e)
            ));
        }
    }
    let missing = g.missing_shards();
    if !missing.is_empty() {
        let list: Vec<String> = missing.iter().map(u32::to_string).collect();
        items.push(format!(
            "<li class=\"warn\">no record for shard{} {} of {}: give every job's record \
             (did a job fail before writing it?)</li>",
            plural(missing.len()),
            list.join(", "),
            g.shard_count
        ));
    }
    if items.is_empty() {
        return;
    }
    out.push_str("<h3>Problems</h3>\n<ul class=\"problems\">");
    for item in items {
        out.push_str(&item);
    }
    out.push_str("</ul>\n");
}

/// How many tests ended which way.
#[derive(Default, Clone, Copy)]
struct Tally {
    passed: usize,
    failed: usize,
    flaky: usize,
    timed_out: usize,
    skipped: usize,
}

impl Tally {
    fn of<'a>(tests: impl IntoIterator<Item = &'a TestRecord>) -> Tally {
        let mut t = Tally::default();
        for test in tests {
            match test.verdict {
                RecordVerdict::Passed => t.passed += 1,
                RecordVerdict::Failed => t.failed += 1,
                RecordVerdict::Flaky => t.flaky += 1,
                RecordVerdict::TimedOut => t.timed_out += 1,
                RecordVerdict::Skipped => t.skipped += 1,
            }
        }
        t
    }

    fn run(&self) -> usize {
        self.passed + self.failed + self.flaky + self.timed_out
    }
}

fn group_tests(g: &Group) -> impl Iterator<Item = (&SourcedRecord, u32, &TestRecord)> {
    g.records
        .iter()
        .flat_map(|r| r.record.tests().map(move |(m, t)| (r, m, t)))
}

fn totals(out: &mut String, g: &Group) {
    let t = Tally::of(group_tests(g).map(|(_, _, t)| t));
    let axis = Axis::of(g);
    out.push_str("<h3>Totals</h3>\n<div class=\"totals\">");
    for (n, label, class) in [
        (t.run().to_string(), "tests run", ""),
        (t.passed.to_string(), "passed", "pass"),
        (t.failed.to_string(), "failed", "fail"),
        (t.flaky.to_string(), "flaky", "flaky"),
        (t.timed_out.to_string(), "timed out", "timeout"),
        (t.skipped.to_string(), "skipped", "skip"),
        (fmt_ms(axis.span_ms), "wall time", ""),
    ] {
        let _ = write!(
            out,
            "<div class=\"card\"><span class=\"n\">{n}</span><span class=\"l\">\
             <span class=\"sw {class}\"></span>{label}</span></div>"
        );
    }
    out.push_str("</div>\n");
}

fn shard_table(out: &mut String, g: &Group) {
    out.push_str(
        "<h3>Shards</h3>\n<table class=\"shards\"><thead><tr><th>shard</th><th>run</th>\
         <th>tests</th><th>passed</th><th>failed</th><th>flaky</th><th>timed out</th>\
         <th>skipped</th><th>environment ready after</th><th>teardown</th><th>wall</th>\
         </tr></thead><tbody>",
    );
    for (r, s) in g.shards() {
        let t = Tally::of(&s.tests);
        let ready = match (&s.provision, s.provision_failed) {
            (None, _) => "no environment".to_owned(),
            (Some(p), false) => fmt_ms(p.ms()),
            (Some(p), true) => format!("failed after {}", fmt_ms(p.ms())),
        };
        let teardown = s
            .teardown
            .map(|t| fmt_ms(t.ms()))
            .unwrap_or_else(|| "—".to_owned());
        let wall = shard_extent(s)
            .map(|(a, b)| fmt_ms(ms_between(a, b)))
            .unwrap_or_else(|| "—".to_owned());
        let _ = write!(
            out,
            "<tr data-shard=\"{m}\"><td>shard {m}</td><td><code>{}</code></td><td>{}</td>\
             <td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{ready}</td>\
             <td>{teardown}</td><td>{wall}</td></tr>",
            escape(short_id(&r.record.run_id)),
            s.tests.len(),
            t.passed,
            t.failed,
            t.flaky,
            t.timed_out,
            t.skipped,
            m = s.shard,
        );
    }
    out.push_str("</tbody></table>\n");
}

/// The first 8 characters of a run id: enough to tell runs apart.
fn short_id(run_id: &str) -> &str {
    run_id
        .char_indices()
        .nth(8)
        .map_or(run_id, |(i, _)| &run_id[..i])
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// A duration for people: `850 ms`, `2.35 s`, `3 min 05 s`, `1 h 02 min`.
pub fn fmt_ms(ms: u64) -> String {
    match ms {
        0..=999 => format!("{ms} ms"),
        1000..=59_999 => format!("{:.2} s", ms as f64 / 1000.0),
        60_000..=3_599_999 => format!("{} min {:02} s", ms / 60_000, (ms % 60_000) / 1000),
        _ => format!("{} h {:02} min", ms / 3_600_000, (ms % 3_600_000) / 60_000),
    }
}

/// Text made safe for HTML text and attribute values. Control characters
/// and Unicode non-characters, which HTML forbids, become U+FFFD.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + text.len() / 8);
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            '\n' | '\t' => out.push(c),
            c if forbidden_in_html(c) => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}

fn forbidden_in_html(c: char) -> bool {
    let u = c as u32;
    u < 0x20 || (0x7F..=0x9F).contains(&u) || (0xFDD0..=0xFDEF).contains(&u) || u & 0xFFFE == 0xFFFE
}

/// The page's only style sheet. System fonts only: nothing is fetched.
const CSS: &str = "
body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',Roboto,'DejaVu Sans',sans-serif;margin:0 auto;max-width:1180px;padding:16px 24px;color:#1f2328;background:#fff}
h1{font-size:22px;margin:0 0 4px}h2{font-size:19px;margin:28px 0 6px;padding-top:10px;border-top:3px solid #d0d7de}
h3{font-size:15px;margin:20px 0 8px}h4{font-size:14px;margin:0 0 4px}
code{font:12.5px ui-monospace,'DejaVu Sans Mono',monospace}
.meta{color:#57606a;margin:2px 0}
nav ul,ul.runs{margin:4px 0;padding-left:20px}
.problems li.error{color:#b42318}.problems li.warn{color:#9a6700}
.totals{display:flex;flex-wrap:wrap;gap:8px}
.card{border:1px solid #d0d7de;border-radius:6px;padding:6px 12px;min-width:78px}
.card .n{display:block;font-size:20px;font-weight:600}.card .l{color:#57606a;font-size:12px}
table{border-collapse:collapse;margin:4px 0}th,td{border-bottom:1px solid #eaeef2;padding:3px 8px;text-align:left;vertical-align:top}
th{font-size:12px;color:#57606a;font-weight:600}td.num{text-align:right;white-space:nowrap}
.timeline{overflow-x:auto}.timeline svg{display:block;max-width:100%;height:auto}
svg text{font:11px system-ui,'DejaVu Sans',sans-serif;fill:#1f2328}
svg text.tick{fill:#57606a;text-anchor:middle}svg text.phase{fill:#fff;pointer-events:none}
svg line.grid{stroke:#eaeef2}svg line.sep{stroke:#d0d7de}
.legend{font-size:12px;color:#57606a}.legend>span{margin-right:12px;white-space:nowrap}
.sw{display:inline-block;width:10px;height:10px;border-radius:2px;margin-right:4px;vertical-align:-1px}
.pass{fill:#2da44e;background:#2da44e}.fail{fill:#cf222e;background:#cf222e}
.flaky{fill:#d4a72c;background:#d4a72c}.timeout{fill:#8250df;background:#8250df}
.cancel{fill:#8c959f;background:#8c959f}.skip{fill:#afb8c1;background:#afb8c1}
.pull{fill:#0969da;background:#0969da}.prov{fill:#1b7c83;background:#1b7c83}
.prov-failed{fill:#a40e26;background:#a40e26}.down{fill:#6e7781;background:#6e7781}
.tag{display:inline-block;font-size:11px;font-weight:700;color:#fff;border-radius:3px;padding:0 5px}
.failure{border:1px solid #d0d7de;border-left:4px solid #cf222e;border-radius:6px;padding:8px 12px;margin:8px 0}
.diag{color:#9a6700}.attempt{margin:6px 0 2px;font-weight:600}.stream{font-size:11px;color:#57606a;margin-top:4px}
pre.out{background:#f6f8fa;border-radius:4px;padding:6px 8px;margin:2px 0;max-height:360px;overflow:auto;white-space:pre-wrap;word-break:break-all;font:12px ui-monospace,'DejaVu Sans Mono',monospace}
ol.attempts{margin:0;padding-left:18px}.none{color:#57606a}
";

#[cfg(test)]
mod tests;
