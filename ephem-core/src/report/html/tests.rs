//! The page's tests: structure, escaping and size at thousands of tests.

use super::timeline::{tick_step, MIN_PROBLEM_W};
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
        ephem_fixtures::EnvError::Other("service web of shard 2 is not ready <after 60s>".into()),
    )];
    failed.interrupted = Some(15);
    failed.internal_error = Some("a task panicked".into());
    let r = RunRecord::from_run(&failed, &list(), meta("x", 2));
    let html = page(vec![r]);
    let doc = parse(&html);
    let problems: Vec<String> = select(&doc, ".problems li").iter().map(text).collect();
    assert_eq!(problems.len(), 3, "{problems:?}");
    assert!(problems[0]
        .contains("shard 2: environment error: service web of shard 2 is not ready <after 60s>"));
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
