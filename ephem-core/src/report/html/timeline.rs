//! The timeline: one row per shard on a common time axis, its environment's
//! phases, and lanes of test attempts (thin neighbours merged into one bar).

use super::*;

/// Left margin of the timeline, for the shard labels (px).
pub(super) const LEFT: f64 = 84.0;
/// Width of the timeline's plot area (px).
pub(super) const PLOT: f64 = 1000.0;
/// Room for the time axis above the rows (px).
pub(super) const AXIS_H: f64 = 22.0;
/// Height of a shard's environment lane (px).
pub(super) const ENV_H: f64 = 14.0;
/// Height of a test lane (px), and the gap under it.
pub(super) const LANE_H: f64 = 12.0;
pub(super) const LANE_GAP: f64 = 2.0;
/// Space between two shards (px).
pub(super) const SHARD_GAP: f64 = 12.0;
/// Narrowest bar of a test attempt that did not pass (px).
pub(super) const MIN_PROBLEM_W: f64 = 3.0;
/// Lanes per shard at most; tests beyond overlap in the last ones.
pub(super) const MAX_LANES: usize = 32;
/// Names listed in the tooltip of a merged bar.
pub(super) const NAMES_IN_MERGED: usize = 5;

/// The first and last moments a shard was busy: environment or tests.
pub(super) fn shard_extent(s: &ShardRecord) -> Option<(Timestamp, Timestamp)> {
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

pub(super) fn ms_between(a: Timestamp, b: Timestamp) -> u64 {
    u64::try_from(b.ms_since(a)).unwrap_or(0)
}

/// The group's common time axis: from its first to its last known moment.
pub(super) struct Axis {
    origin: Timestamp,
    pub(super) span_ms: u64,
}

impl Axis {
    pub(super) fn of(g: &Group) -> Axis {
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
pub(super) fn bar_class(test: &TestRecord, attempt: &AttemptRecord) -> &'static str {
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
pub(super) struct Bar<'a> {
    test: &'a TestRecord,
    attempt: usize,
    x0: f64,
    x1: f64,
    class: &'static str,
}

pub(super) fn timeline(out: &mut String, number: usize, g: &Group) {
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

pub(super) fn legend(out: &mut String) {
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
pub(super) fn ticks(out: &mut String, axis: &Axis, height: f64) {
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
pub(super) fn tick_step(span_ms: u64) -> u64 {
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

pub(super) fn fmt_tick(ms: u64, step: u64) -> String {
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
pub(super) fn env_lane(out: &mut String, axis: &Axis, r: &SourcedRecord, s: &ShardRecord, y: f64) {
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

pub(super) fn phase_bar(
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
pub(super) fn lanes<'a>(axis: &Axis, s: &'a ShardRecord) -> Vec<Vec<Bar<'a>>> {
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
pub(super) fn draw_lane(
    base: &mut String,
    top: &mut String,
    axis: &Axis,
    bars: &[Bar<'_>],
    y: f64,
) {
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
pub(super) fn draw_bars(out: &mut String, axis: &Axis, bars: &[&Bar<'_>], y: f64) {
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

pub(super) fn bar_title(axis: &Axis, bar: &Bar<'_>) -> String {
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

pub(super) fn merged_title(bars: &[&Bar<'_>]) -> String {
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
