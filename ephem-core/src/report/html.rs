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

/// Left margin of the timeline, for the shard labels (px).
const LEFT: f64 = 84.0;
/// Width of the timeline's plot area (px).
const PLOT: f64 = 1000.0;
/// Room for the time axis above the rows (px).
const AXIS_H: f64 = 22.0;
/// Height of a shard's environment lane (px).
const ENV_H: f64 = 14.0;
/// Height of a test lane (px), and the gap under it.
const LANE_H: f64 = 12.0;
const LANE_GAP: f64 = 2.0;
/// Space between two shards (px).
const SHARD_GAP: f64 = 12.0;
/// Narrowest bar of a test attempt that did not pass (px).
const MIN_PROBLEM_W: f64 = 3.0;
/// Lanes per shard at most; tests beyond overlap in the last ones.
const MAX_LANES: usize = 32;
/// Slowest tests listed.
const SLOWEST: usize = 10;
/// Failures shown with their output; the rest are listed by name (a page
/// of thousands of outputs would be too heavy to open).
const FAILURES_WITH_OUTPUT: usize = 100;
/// Names listed in the tooltip of a merged bar.
const NAMES_IN_MERGED: usize = 5;

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

/// The first and last moments a shard was busy: environment or tests.
fn shard_extent(s: &ShardRecord) -> Option<(Timestamp, Timestamp)> {
    let spans = s.provision.iter().chain(s.teardown.iter()).copied();
    let attempts = s
        .tests
        .iter()
        .flat_map(|t| &t.attempts)
        .map(|a| RecordSpan {
            start: a.started_at,
            end: a.end(),
        });
    spans
        .chain(attempts)
        .fold(None, |acc: Option<(Timestamp, Timestamp)>, sp| {
            Some(match acc {
                None => (sp.start, sp.end),
                Some((a, b)) => (a.min(sp.start), b.max(sp.end)),
            })
        })
}

fn ms_between(a: Timestamp, b: Timestamp) -> u64 {
    u64::try_from(b.ms_since(a)).unwrap_or(0)
}

/// The group's common time axis: from its first to its last known moment.
struct Axis {
    origin: Timestamp,
    span_ms: u64,
}

impl Axis {
    fn of(g: &Group) -> Axis {
        let mut lo: Option<Timestamp> = None;
        let mut hi: Option<Timestamp> = None;
        let mut see = |t: Timestamp| {
            lo = Some(lo.map_or(t, |l| l.min(t)));
            hi = Some(hi.map_or(t, |h| h.max(t)));
        };
        for r in &g.records {
            see(r.record.started_at);
            see(r.record.ended_at());
            if let Some(p) = &r.record.prepare {
                see(p.start);
                see(p.end);
            }
            for s in &r.record.shards {
                if let Some((a, b)) = shard_extent(s) {
                    see(a);
                    see(b);
                }
            }
        }
        let origin = lo.unwrap_or(Timestamp { unix_ms: 0 });
        let span_ms = hi.map_or(0, |h| ms_between(origin, h)).max(1);
        Axis { origin, span_ms }
    }

    /// Horizontal position of a moment.
    fn x(&self, t: Timestamp) -> f64 {
        let offset = t.ms_since(self.origin).clamp(0, self.span_ms as i64);
        LEFT + offset as f64 / self.span_ms as f64 * PLOT
    }

    fn offset(&self, t: Timestamp) -> String {
        format!("+{}", fmt_ms(ms_between(self.origin, t)))
    }
}

/// The CSS class of an attempt's bar: a flaky test's attempts all carry
/// its colour, others the colour of how the attempt ended.
fn bar_class(test: &TestRecord, attempt: &AttemptRecord) -> &'static str {
    if test.verdict == RecordVerdict::Flaky {
        return "flaky";
    }
    match attempt.status {
        AttemptOutcome::Passed => "pass",
        AttemptOutcome::Failed | AttemptOutcome::SpawnFailed => "fail",
        AttemptOutcome::TimedOut => "timeout",
        AttemptOutcome::Cancelled => "cancel",
    }
}

/// One attempt placed on the timeline.
struct Bar<'a> {
    test: &'a TestRecord,
    attempt: usize,
    x0: f64,
    x1: f64,
    class: &'static str,
}

fn timeline(out: &mut String, number: usize, g: &Group) {
    let axis = Axis::of(g);
    let mut rows = String::new();
    let mut y = AXIS_H;
    for (r, s) in g.shards() {
        let lanes = lanes(&axis, s);
        let height = ENV_H + LANE_GAP + lanes.len().max(1) as f64 * (LANE_H + LANE_GAP);
        let _ = write!(
            rows,
            "<g class=\"shard\" data-shard=\"{m}\"><text class=\"label\" x=\"4\" y=\"{:.1}\">\
             shard {m}</text>",
            y + 11.0,
            m = s.shard
        );
        env_lane(&mut rows, &axis, r, s, y);
        let mut lane_y = y + ENV_H + LANE_GAP;
        let mut top = String::new();
        for lane in &lanes {
            draw_lane(&mut rows, &mut top, &axis, lane, lane_y);
            lane_y += LANE_H + LANE_GAP;
        }
        rows.push_str(&top);
        rows.push_str("</g>");
        y += height + SHARD_GAP;
        let _ = write!(
            rows,
            "<line class=\"sep\" x1=\"0\" x2=\"{:.0}\" y1=\"{:.1}\" y2=\"{:.1}\"/>",
            LEFT + PLOT,
            y - SHARD_GAP / 2.0,
            y - SHARD_GAP / 2.0
        );
    }
    let height = y.max(AXIS_H + 20.0);
    let width = LEFT + PLOT + 16.0;
    out.push_str("<h3>Timeline</h3>\n");
    legend(out);
    let _ = write!(
        out,
        "<div class=\"timeline\"><svg id=\"timeline-{number}\" xmlns=\"http://www.w3.org/2000/svg\" \
         width=\"{width:.0}\" height=\"{height:.0}\" viewBox=\"0 0 {width:.0} {height:.0}\" \
         role=\"img\" aria-label=\"timeline of group {}\">",
        escape(&g.key)
    );
    ticks(out, &axis, height);
    out.push_str(&rows);
    out.push_str("</svg></div>\n");
}

fn legend(out: &mut String) {
    out.push_str("<p class=\"legend\">");
    for (class, label) in [
        ("pull", "image pull (run-wide)"),
        ("prov", "provision until ready"),
        ("prov-failed", "provision failed"),
        ("down", "teardown"),
        ("pass", "passed"),
        ("fail", "failed"),
        ("flaky", "flaky"),
        ("timeout", "timed out"),
        ("cancel", "cancelled"),
    ] {
        let _ = write!(
            out,
            "<span><span class=\"sw {class}\"></span>{label}</span>"
        );
    }
    out.push_str(" <span class=\"hint\">(hover a bar for details)</span></p>\n");
}

/// Vertical grid lines with their time offsets along the top.
fn ticks(out: &mut String, axis: &Axis, height: f64) {
    let step = tick_step(axis.span_ms);
    let mut t = 0;
    while t <= axis.span_ms {
        let x = LEFT + t as f64 / axis.span_ms as f64 * PLOT;
        let _ = write!(
            out,
            "<line class=\"grid\" x1=\"{x:.1}\" x2=\"{x:.1}\" y1=\"{:.1}\" y2=\"{height:.1}\"/>\
             <text class=\"tick\" x=\"{x:.1}\" y=\"12\">{}</text>",
            AXIS_H - 6.0,
            fmt_tick(t, step)
        );
        t += step;
    }
}

/// A round step (1, 2 or 5 times a power of ten ms) giving about ten ticks.
fn tick_step(span_ms: u64) -> u64 {
    let raw = (span_ms / 10).max(1);
    let mut magnitude = 1;
    while magnitude * 10 <= raw {
        magnitude *= 10;
    }
    [1, 2, 5, 10]
        .iter()
        .map(|m| m * magnitude)
        .find(|&s| s >= raw)
        .unwrap_or(10 * magnitude)
}

fn fmt_tick(ms: u64, step: u64) -> String {
    if ms == 0 {
        return "0".to_owned();
    }
    let secs = ms as f64 / 1000.0;
    match step {
        s if s >= 60_000 => format!("{}m{:02}s", ms / 60_000, (ms % 60_000) / 1000),
        s if s >= 1000 => format!("{secs:.0}s"),
        s if s >= 100 => format!("{secs:.1}s"),
        s if s >= 10 => format!("{secs:.2}s"),
        _ => format!("{secs:.3}s"),
    }
}

/// The environment lane: the run-wide pull, then provisioning up to ready,
/// then teardown, each a labelled bar.
fn env_lane(out: &mut String, axis: &Axis, r: &SourcedRecord, s: &ShardRecord, y: f64) {
    if let Some(p) = &r.record.prepare {
        phase_bar(
            out,
            axis,
            p,
            y,
            "pull",
            "pull",
            "image pull and preparation (run-wide)",
        );
    }
    if let Some(p) = &s.provision {
        let (class, label, what) = if s.provision_failed {
            (
                "prov-failed",
                "provision failed",
                "provisioning, which failed",
            )
        } else {
            ("prov", "provision", "provisioning until ready")
        };
        phase_bar(out, axis, p, y, class, label, what);
    }
    if let Some(t) = &s.teardown {
        phase_bar(out, axis, t, y, "down", "teardown", "teardown");
    }
}

fn phase_bar(
    out: &mut String,
    axis: &Axis,
    span: &RecordSpan,
    y: f64,
    class: &str,
    label: &str,
    what: &str,
) {
    let x0 = axis.x(span.start);
    let w = (axis.x(span.end) - x0).max(1.0);
    let _ = write!(
        out,
        "<rect class=\"{class}\" x=\"{x0:.1}\" y=\"{y:.1}\" width=\"{w:.1}\" height=\"{ENV_H:.0}\">\
         <title>{what}: {} from {}</title></rect>",
        fmt_ms(span.ms()),
        axis.offset(span.start)
    );
    // A label only where it fits (about 6 px a character).
    if w > label.len() as f64 * 6.0 + 6.0 {
        let _ = write!(
            out,
            "<text class=\"phase\" x=\"{:.1}\" y=\"{:.1}\">{label}</text>",
            x0 + 3.0,
            y + 10.5
        );
    }
}

/// Places every attempt of a shard in the first lane free at its start, so
/// tests that ran at once do not hide each other.
fn lanes<'a>(axis: &Axis, s: &'a ShardRecord) -> Vec<Vec<Bar<'a>>> {
    let mut attempts: Vec<(&TestRecord, usize)> = s
        .tests
        .iter()
        .flat_map(|t| (0..t.attempts.len()).map(move |i| (t, i)))
        .collect();
    attempts.sort_by_key(|(t, i)| t.attempts[*i].started_at);
    let mut lanes: Vec<Vec<Bar<'a>>> = Vec::new();
    let mut lane_ends: Vec<Timestamp> = Vec::new();
    for (test, i) in attempts {
        let a = &test.attempts[i];
        let lane = match lane_ends.iter().position(|&end| end <= a.started_at) {
            Some(lane) => lane,
            None if lanes.len() < MAX_LANES => {
                lanes.push(Vec::new());
                lane_ends.push(a.started_at);
                lanes.len() - 1
            }
            // Too many at once: the lane that frees first takes it.
            None => (0..lane_ends.len())
                .min_by_key(|&l| lane_ends[l])
                .unwrap_or(0),
        };
        lane_ends[lane] = lane_ends[lane].max(a.end());
        lanes[lane].push(Bar {
            test,
            attempt: i,
            x0: axis.x(a.started_at),
            x1: axis.x(a.end()),
            class: bar_class(test, a),
        });
    }
    lanes
}

/// Draws a lane's bars, merging runs of same-coloured bars narrower than a
/// pixel into one. Passing bars go to `base`; the others to `top`, drawn
/// later so that no passing neighbour covers them.
fn draw_lane(base: &mut String, top: &mut String, axis: &Axis, bars: &[Bar<'_>], y: f64) {
    let mut run: Vec<&Bar<'_>> = Vec::new();
    let mut flush = |bars: &[&Bar<'_>]| match bars.first() {
        Some(first) if first.class == "pass" => draw_bars(base, axis, bars, y),
        Some(_) => draw_bars(top, axis, bars, y),
        None => {}
    };
    for bar in bars {
        let narrow = bar.x1 - bar.x0 < 1.0;
        let joins = run.last().is_some_and(|last| {
            narrow && last.class == bar.class && bar.x0 - last.x1.max(last.x0 + 1.0) < 1.0
        });
        if !joins {
            flush(&run);
            run.clear();
        }
        if narrow {
            run.push(bar);
        } else {
            flush(&[bar]);
        }
    }
    flush(&run);
}

/// One rectangle for `bars` (one bar, or a run of merged ones). A bar that
/// did not pass is at least [`MIN_PROBLEM_W`] wide, so it can be seen among
/// thousands of passing ones.
fn draw_bars(out: &mut String, axis: &Axis, bars: &[&Bar<'_>], y: f64) {
    let (Some(first), Some(last)) = (bars.first(), bars.last()) else {
        return;
    };
    let min_w = if first.class == "pass" {
        1.0
    } else {
        MIN_PROBLEM_W
    };
    let x0 = first.x0;
    let w = (last.x1 - x0).max(min_w);
    let title = if let [bar] = bars {
        bar_title(axis, bar)
    } else {
        merged_title(bars)
    };
    let _ = write!(
        out,
        "<rect class=\"{}\" x=\"{x0:.1}\" y=\"{y:.1}\" width=\"{w:.1}\" height=\"{LANE_H:.0}\">\
         <title>{}</title></rect>",
        first.class,
        escape(&title)
    );
}

fn bar_title(axis: &Axis, bar: &Bar<'_>) -> String {
    let a = &bar.test.attempts[bar.attempt];
    format!(
        "{} {}\nattempt {} of {}: {} in {}, started {}",
        bar.test.binary_id,
        bar.test.name,
        bar.attempt + 1,
        bar.test.attempts.len(),
        attempt_words(a),
        fmt_ms(a.duration_ms),
        axis.offset(a.started_at)
    )
}

fn merged_title(bars: &[&Bar<'_>]) -> String {
    let total: u64 = bars
        .iter()
        .map(|b| b.test.attempts[b.attempt].duration_ms)
        .sum();
    let mut names: Vec<&str> = bars
        .iter()
        .take(NAMES_IN_MERGED)
        .map(|b| b.test.name.as_str())
        .collect();
    if bars.len() > NAMES_IN_MERGED {
        names.push("…");
    }
    format!(
        "{} test attempts ({}), {} in all, each too short to draw alone: {}",
        bars.len(),
        bars[0].class,
        fmt_ms(total),
        names.join(", ")
    )
}

fn attempt_words(a: &AttemptRecord) -> String {
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

fn verdict_tag(v: RecordVerdict) -> (&'static str, &'static str) {
    match v {
        RecordVerdict::Passed => ("pass", "PASS"),
        RecordVerdict::Flaky => ("flaky", "FLAKY"),
        RecordVerdict::Failed => ("fail", "FAIL"),
        RecordVerdict::TimedOut => ("timeout", "TIMEOUT"),
        RecordVerdict::Skipped => ("skip", "SKIP"),
    }
}

fn test_name_html(t: &TestRecord) -> String {
    format!(
        "<code class=\"bin\">{}</code> <code class=\"name\">{}</code>",
        escape(&t.binary_id),
        escape(&t.name)
    )
}

fn slowest(out: &mut String, g: &Group) {
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

fn failures(out: &mut String, g: &Group) {
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

fn failure(out: &mut String, r: &SourcedRecord, shard: u32, t: &TestRecord) {
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
fn attempt_output(out: &mut String, number: usize, a: &AttemptRecord) {
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

fn flaky(out: &mut String, g: &Group) {
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
mod tests {
    use super::*;
    use crate::report::record::tests::{at, list, meta, record, result};
    use crate::report::record::{group_records, RunRecord, SourcedRecord};

    fn page(records: Vec<RunRecord>) -> String {
        let sourced = records
            .into_iter()
            .enumerate()
            .map(|(i, record)| SourcedRecord {
                source: format!("r{i}.record.json"),
                record,
            })
            .collect();
        render(&group_records(sourced).unwrap())
    }

    /// Parses the page as a browser would; fails on any HTML parse error.
    fn parse(html: &str) -> scraper::Html {
        let doc = scraper::Html::parse_document(html);
        assert!(doc.errors.is_empty(), "HTML parse errors: {:?}", doc.errors);
        assert_eq!(format!("{:?}", doc.quirks_mode), "NoQuirks");
        doc
    }

    fn select<'a>(doc: &'a scraper::Html, css: &str) -> Vec<scraper::ElementRef<'a>> {
        doc.select(&scraper::Selector::parse(css).unwrap())
            .collect()
    }

    fn text(e: &scraper::ElementRef<'_>) -> String {
        e.text().collect()
    }

    #[test]
    fn the_page_has_every_section_and_is_valid_html() {
        let html = page(vec![record()]);
        let doc = parse(&html);
        let headings: Vec<String> = select(&doc, "h3").iter().map(text).collect();
        assert_eq!(
            headings,
            [
                "Problems",
                "Totals",
                "Shards",
                "Timeline",
                "Slowest tests",
                "Failures (2)",
                "Flaky tests (1)"
            ]
        );
        assert_eq!(select(&doc, "tr[data-shard]").len(), 2);
        assert_eq!(select(&doc, "g.shard").len(), 2);
        // One bar per attempt (6), plus pull, provision and teardown per shard.
        assert_eq!(select(&doc, "g.shard rect").len(), 6 + 3 * 2);
        assert_eq!(select(&doc, "g.shard rect.fail").len(), 2);
        assert_eq!(select(&doc, "g.shard rect.flaky").len(), 2);
        assert_eq!(select(&doc, "g.shard rect.timeout").len(), 1);
        let failures: Vec<String> = select(&doc, ".failure h4").iter().map(text).collect();
        assert_eq!(failures, ["FAIL pkg c_fails", "TIMEOUT pkg d_times_out"]);
        let cards: Vec<String> = select(&doc, ".card .n").iter().map(text).collect();
        assert_eq!(cards, ["4", "1", "1", "1", "1", "1", "2.00 s"]);
        assert!(html.contains("teardown was slow"));
        // Nothing the page needs is fetched.
        for needle in ["<script", "<link", "src=", "url(", "@import"] {
            assert!(!html.contains(needle), "{needle} in the page");
        }
    }

    #[test]
    fn test_output_is_shown_as_text_never_run() {
        let mut r = record();
        r.shards[1].tests[0].name = "evil<img src=x onerror=alert(1)>".into();
        r.group = "\"><script>alert(2)</script>".into();
        let html = page(vec![r]);
        let doc = parse(&html);
        assert!(select(&doc, "script").is_empty());
        assert!(select(&doc, "img").is_empty());
        let outputs: Vec<String> = select(&doc, "pre.out").iter().map(text).collect();
        assert!(
            outputs.iter().any(|o| o == "<script>alert(1)</script>"),
            "{outputs:?}"
        );
        assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(!html.contains("<script>"));
    }

    #[test]
    fn control_characters_are_replaced_not_written() {
        assert_eq!(
            escape("a\u{0}b\u{1b}c\u{7f}\u{fffe}"),
            "a\u{fffd}b\u{fffd}c\u{fffd}\u{fffd}"
        );
        assert_eq!(
            escape("<a href='x'>&\"</a>\n"),
            "&lt;a href=&#39;x&#39;&gt;&amp;&quot;&lt;/a&gt;\n"
        );
        let mut r = record();
        r.shards[1].tests[0].attempts[1].stderr_tail = Some("nul\u{0} bell\u{7} c1\u{85}".into());
        parse(&page(vec![r]));
    }

    #[test]
    fn an_empty_run_still_renders() {
        let mut empty = result();
        empty.outcomes.clear();
        empty.timelines.truncate(1);
        empty.timelines[0].provision = None;
        empty.timelines[0].teardown = None;
        empty.prepare = None;
        empty.env_errors.clear();
        let r = RunRecord::from_run(&empty, &list(), meta("e", 1));
        let doc = parse(&page(vec![r.clone()]));
        assert_eq!(select(&doc, "g.shard").len(), 1);
        assert_eq!(select(&doc, "g.shard rect").len(), 0);
        assert!(select(&doc, ".problems").is_empty());

        let mut no_shards = r;
        no_shards.shards.clear();
        no_shards.duration_ms = 0;
        let doc = parse(&page(vec![no_shards]));
        assert_eq!(select(&doc, "svg").len(), 1);
        parse(&render(&[]));
    }

    #[test]
    fn a_run_with_an_environment_error_still_renders() {
        let mut failed = result();
        failed.timelines[1].provision_failed = true;
        failed.timelines[1].teardown = None;
        for o in failed.outcomes.iter_mut().filter(|o| o.shard == 2) {
            o.attempts.clear();
            o.verdict = crate::run::Verdict::Skipped("environment failed".into());
        }
        failed.env_errors = vec![(
            2,
            ephem_fixtures::EnvError::Other(
                "service web of shard 2 is not ready <after 60s>".into(),
            ),
        )];
        failed.interrupted = Some(15);
        failed.internal_error = Some("a task panicked".into());
        let r = RunRecord::from_run(&failed, &list(), meta("x", 2));
        let html = page(vec![r]);
        let doc = parse(&html);
        let problems: Vec<String> = select(&doc, ".problems li").iter().map(text).collect();
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(problems[0].contains(
            "shard 2: environment error: service web of shard 2 is not ready <after 60s>"
        ));
        assert!(problems[1].contains("signal 15"));
        assert_eq!(select(&doc, "rect.prov-failed").len(), 1);
    }

    #[test]
    fn several_groups_are_drawn_side_by_side_with_their_keys() {
        let a = RunRecord::from_run(&result(), &list(), meta("alpha", 2));
        let mut b = RunRecord::from_run(&result(), &list(), meta("beta", 2));
        b.started_at = crate::report::record::Timestamp::of(at(5000));
        let doc = parse(&page(vec![b, a]));
        let groups: Vec<String> = select(&doc, "section.group h2").iter().map(text).collect();
        assert_eq!(groups, ["Group alpha", "Group beta"]);
        assert_eq!(select(&doc, "nav li").len(), 2);
        assert_eq!(select(&doc, "section.group svg").len(), 2);
    }

    #[test]
    fn a_matrix_missing_a_shard_says_so() {
        let mut r = record();
        r.shard_count = 3;
        let doc = parse(&page(vec![r]));
        let problems: Vec<String> = select(&doc, ".problems li").iter().map(text).collect();
        assert!(
            problems
                .iter()
                .any(|p| p.contains("no record for shard 3 of 3")),
            "{problems:?}"
        );
    }

    #[test]
    fn thousands_of_short_tests_are_merged_into_few_bars() {
        let mut r = record();
        let template = r.shards[0].tests[0].clone();
        let start = r.shards[0].tests[0].attempts[0].started_at;
        r.shards[0].tests = (0..5000)
            .map(|i| {
                let mut t = template.clone();
                t.name = format!("t{i:05}");
                t.attempts[0].started_at = start.plus_ms(i / 5);
                t.attempts[0].duration_ms = 0;
                if i == 2500 {
                    t.verdict = RecordVerdict::Failed;
                    t.attempts[0].status = AttemptOutcome::Failed;
                }
                t
            })
            .collect();
        let html = page(vec![r]);
        let doc = parse(&html);
        let bars = select(&doc, "g.shard[data-shard=\"1\"] rect");
        assert!(bars.len() < 100, "{} bars for 5000 tests", bars.len());
        assert_eq!(select(&doc, "g.shard[data-shard=\"1\"] rect.fail").len(), 1);
        // The failure is wide enough to see, and drawn over the passes.
        let last = bars.last().unwrap().value();
        assert_eq!(last.attr("class"), Some("fail"));
        let width: f64 = last.attr("width").unwrap().parse().unwrap();
        assert!(width >= MIN_PROBLEM_W, "{width}");
        assert!(
            html.contains("test attempts (pass)"),
            "merged bars say how many"
        );
        assert!(html.len() < 400_000, "{} bytes", html.len());
    }

    #[test]
    fn tick_steps_are_round() {
        assert_eq!(tick_step(1), 1);
        assert_eq!(tick_step(2000), 200);
        assert_eq!(tick_step(35_000), 5000);
        assert_eq!(tick_step(9_000_000), 1_000_000);
        assert_eq!(fmt_ms(850), "850 ms");
        assert_eq!(fmt_ms(2345), "2.35 s");
        assert_eq!(fmt_ms(185_000), "3 min 05 s");
    }
}
