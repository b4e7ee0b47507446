//! The live display: an indicatif bar per shard plus an overall bar in a
//! terminal; plain lines (one per failed or slow test, plus a periodic
//! count) when not a terminal or when `CI` is set.

use std::collections::{HashMap, HashSet};
use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ephem_fixtures::EnvEvent;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::levels::{status_level_of, Reporting, StatusLevel};
use super::summary::{attempt_why, output_block, output_header};
use crate::run::{Attempt, PlannedTests, RunEvents, RunningTest, TestOutcome, Verdict};
use crate::test_list::{Selection, TestIdx, TestList};

/// How progress is shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DisplayMode {
    /// Bars redrawn in place.
    Live,
    /// Plain lines, for logs.
    Plain,
}

impl DisplayMode {
    /// Live in a terminal, plain in CI (`CI` set) or when stderr is redirected.
    pub fn detect() -> DisplayMode {
        if std::io::stderr().is_terminal() && std::env::var_os("CI").is_none() {
            DisplayMode::Live
        } else {
            DisplayMode::Plain
        }
    }
}

#[derive(Default)]
struct ShardCounts {
    passed: usize,
    failed: usize,
    done: usize,
    total: usize,
}

/// Shows a run's progress on stderr.
pub struct Display {
    mode: DisplayMode,
    list: Arc<TestList>,
    shard_count: u32,
    multi: MultiProgress,
    overall: ProgressBar,
    shard_bars: HashMap<u32, ProgressBar>,
    pull_bars: HashMap<String, ProgressBar>,
    counts: HashMap<u32, ShardCounts>,
    failed: usize,
    slow_after: Duration,
    slow_reported: HashSet<TestIdx>,
    last_count: Instant,
    count_every: Duration,
    color: bool,
    /// Shards get environments (so readiness is worth a line).
    with_env: bool,
    /// Shards whose environment is ready (or who need none).
    ready: HashSet<u32>,
    /// What each shard's environment waits for, as last shown.
    waiting: HashMap<u32, String>,
    started: Instant,
    /// The tests are known and the bars drawn (in a terminal).
    planned: bool,
    /// Which lines and which output are shown.
    reporting: Reporting,
    /// Failed attempts so far of tests being retried.
    tries: HashMap<TestIdx, u32>,
}

impl Display {
    /// A display for a run of these shards (1-based numbers) of a plan of
    /// `shard_count`. Until the tests are known ([`RunEvents::planned`]) it
    /// only prints lines, so that cargo's build output is not drawn over.
    pub fn new(
        mode: DisplayMode,
        shards: &[u32],
        shard_count: u32,
        slow_after: Duration,
    ) -> Display {
        // Hidden until planned: the bars are drawn once the build is over.
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::hidden());
        let mut shard_bars = HashMap::new();
        // One line per shard only when there is more than one.
        if shards.len() > 1 || shard_count > 1 {
            let style = ProgressStyle::with_template(
                "{prefix:>11} {bar:25.cyan/blue} {pos:>5}/{len:<5} {msg}",
            )
            .expect("valid template")
            .progress_chars("=> ");
            for &shard in shards {
                let bar = multi.add(ProgressBar::new(0));
                bar.set_style(style.clone());
                bar.set_prefix(format!("shard {shard}/{shard_count}"));
                bar.set_message("starting environment");
                shard_bars.insert(shard, bar);
            }
        }
        let counts = shards
            .iter()
            .map(|&shard| (shard, ShardCounts::default()))
            .collect();
        let overall = multi.add(ProgressBar::new(0));
        overall.set_style(
            ProgressStyle::with_template(
                "{prefix:>11} {bar:25.green/white} {pos:>5}/{len:<5} [{elapsed_precise}] {msg}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        overall.set_prefix("all");
        Display {
            mode,
            list: Arc::new(TestList::default()),
            shard_count,
            multi,
            overall,
            shard_bars,
            pull_bars: HashMap::new(),
            counts,
            failed: 0,
            slow_after,
            slow_reported: HashSet::new(),
            last_count: Instant::now(),
            count_every: Duration::from_secs(30),
            color: mode == DisplayMode::Live && std::env::var_os("NO_COLOR").is_none(),
            with_env: false,
            ready: HashSet::new(),
            waiting: HashMap::new(),
            started: Instant::now(),
            planned: false,
            reporting: Reporting::default(),
            tries: HashMap::new(),
        }
    }

    /// Shows what `reporting` says. With `--no-capture` the tests write to
    /// the terminal, so nothing is drawn in place: plain lines only.
    pub fn with_reporting(mut self, reporting: Reporting) -> Display {
        if reporting.no_capture {
            self.mode = DisplayMode::Plain;
            self.color = false;
        }
        self.reporting = reporting.effective();
        self
    }

    /// Whether lines of `level` are shown during the run.
    fn shows(&self, level: StatusLevel) -> bool {
        self.reporting.status_level >= level
    }

    /// A test's output, as it is (secrets masked): no URL is cut, unlike
    /// in [`Display::line`]'s messages.
    fn output(&self, block: &str) {
        let block = crate::mask::mask(block.trim_end_matches('\n'));
        if self.mode == DisplayMode::Live && self.planned {
            let _ = self.multi.println(block);
        } else {
            let mut err = std::io::stderr().lock();
            let _ = writeln!(err, "{block}");
        }
    }

    /// Says that shards get environments, so their readiness is reported.
    pub fn with_environments(mut self) -> Display {
        self.with_env = true;
        self
    }

    /// Prints a line above the bars (or plainly, before they are drawn).
    pub fn line(&self, text: &str) {
        // The one way lines reach the terminal during a run.
        let text = &crate::mask::error_text(text);
        if self.mode == DisplayMode::Live && self.planned {
            let _ = self.multi.println(text);
        } else {
            let mut err = std::io::stderr().lock();
            let _ = writeln!(err, "{text}");
        }
    }

    /// What a shard's environment waits for: its bar's message when bars
    /// are drawn, else a line each time a warning changes (progress alone
    /// would flood a CI log).
    fn show_waiting(&mut self, shard: u32, service: &str, message: &str, warning: bool) {
        let text = format!("{service}: {message}");
        if self.ready.contains(&shard) || self.waiting.get(&shard) == Some(&text) {
            return;
        }
        self.waiting.insert(shard, text.clone());
        if self.mode == DisplayMode::Live && self.planned {
            let bar = self.shard_bars.get(&shard).unwrap_or(&self.overall);
            bar.set_message(format!("waiting for {text}"));
            return;
        }
        if !warning {
            return;
        }
        self.line(&format!(
            "{} shard {shard}: {text}",
            self.paint("33", "   WAITING")
        ));
    }

    /// Removes the bars before the summary is printed.
    pub fn finish(&self) {
        for bar in self.shard_bars.values().chain(self.pull_bars.values()) {
            bar.finish_and_clear();
        }
        self.overall.finish_and_clear();
        let _ = self.multi.clear();
    }

    fn paint(&self, code: &str, text: &str) -> String {
        if self.color {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_owned()
        }
    }

    /// The label without colours, for output headers.
    fn plain_label(&self, test: TestIdx, shard: u32) -> String {
        let shard = if self.shard_count > 1 {
            format!("shard {shard} ")
        } else {
            String::new()
        };
        format!(
            "{shard}{} {}",
            self.list.binary_id(test),
            self.list.tests[test].name
        )
    }

    fn test_label(&self, test: TestIdx, shard: u32) -> String {
        let shard = if self.shard_count > 1 {
            format!("shard {shard} ")
        } else {
            String::new()
        };
        format!(
            "{shard}{} {}",
            self.paint("35", self.list.binary_id(test)),
            self.paint("1", &self.list.tests[test].name)
        )
    }
}

/// `[  0.123s]`, the width nextest uses, so columns line up.
pub fn fmt_duration(d: Duration) -> String {
    format!("[{:>8.3}s]", d.as_secs_f64())
}

impl RunEvents for Display {
    fn planned(&mut self, tests: &PlannedTests) {
        self.list = tests.list.clone();
        let mut total = 0;
        for (shard, shard_tests) in &tests.shards {
            let n = shard_tests
                .iter()
                .filter(|&&t| tests.selection[t] != Selection::FilteredOut)
                .count();
            total += n;
            if let Some(c) = self.counts.get_mut(shard) {
                c.total = n;
            }
            if let Some(bar) = self.shard_bars.get(shard) {
                bar.set_length(n as u64);
            }
        }
        self.overall.set_length(total as u64);
        self.line(&tests.headline);
        if self.shows(StatusLevel::Skip) {
            for (shard, shard_tests) in &tests.shards {
                for &t in shard_tests {
                    if tests.selection[t] == Selection::SkipIgnored {
                        let label = self.test_label(t, *shard);
                        self.line(&format!(
                            "{} [         ] {label}",
                            self.paint("33", "      SKIP")
                        ));
                    }
                }
            }
        }
        if self.mode == DisplayMode::Live {
            self.multi
                .set_draw_target(ProgressDrawTarget::stderr_with_hz(8));
            // Keeps the elapsed time moving while environments start.
            self.overall.enable_steady_tick(Duration::from_millis(500));
        }
        self.planned = true;
    }

    fn env_event(&mut self, event: &EnvEvent) {
        match event {
            EnvEvent::PullProgress {
                image,
                current,
                total,
            } => {
                // Plain lines, or while cargo still builds: one line per pull.
                if self.mode == DisplayMode::Plain || !self.planned {
                    if !self.pull_bars.contains_key(image) {
                        self.line(&format!("   PULLING {image}"));
                        self.pull_bars.insert(image.clone(), ProgressBar::hidden());
                    }
                    return;
                }
                let bar = self.pull_bars.entry(image.clone()).or_insert_with(|| {
                    let bar = self.multi.insert(0, ProgressBar::new(0));
                    bar.set_style(
                        ProgressStyle::with_template(
                            "{prefix:>11} {bar:25.yellow/white} {bytes}/{total_bytes} {msg}",
                        )
                        .expect("valid template")
                        .progress_chars("=> "),
                    );
                    bar.set_prefix("pull");
                    bar.set_message(image.clone());
                    bar
                });
                if let Some(t) = total {
                    bar.set_length(*t);
                }
                bar.set_position(*current);
            }
            EnvEvent::ImageReady { image, pulled } => {
                if let Some(bar) = self.pull_bars.remove(image) {
                    bar.finish_and_clear();
                }
                if *pulled {
                    self.line(&format!("    PULLED {image}"));
                }
            }
            EnvEvent::ServiceExited {
                shard,
                service,
                exit_code,
                ..
            } => {
                let code = exit_code
                    .map(|c| c.to_string())
                    .unwrap_or_else(|| "?".into());
                let msg = format!("service {service} of shard {shard} exited (code {code})");
                self.line(&format!("{} {msg}", self.paint("31;1", "  ENV DIED")));
            }
            EnvEvent::Waiting {
                shard,
                service,
                message,
                warning,
            } => self.show_waiting(*shard, service, message, *warning),
            EnvEvent::Note { message } => {
                self.line(&format!("{} {message}", self.paint("36", "      NOTE")));
            }
            EnvEvent::Warning { shard, message } => {
                let place = shard.map(|s| format!("shard {s}: ")).unwrap_or_default();
                self.line(&format!(
                    "{} {place}{message}",
                    self.paint("33;1", "   WARNING")
                ));
            }
        }
    }

    fn shard_ready(&mut self, shard: u32, with_env: bool) {
        if self.waiting.remove(&shard).is_some() && !self.shard_bars.contains_key(&shard) {
            self.overall.set_message("");
        }
        self.ready.insert(shard);
        if let Some(bar) = self.shard_bars.get(&shard) {
            bar.set_message("");
        }
        if with_env {
            self.line(&format!(
                "{} [{:>8.3}s] environment of shard {shard}/{}",
                self.paint("32", "     READY"),
                self.started.elapsed().as_secs_f64(),
                self.shard_count
            ));
        }
    }

    fn retrying(&mut self, test: TestIdx, shard: u32, failed: &Attempt) {
        let tries = self.tries.entry(test).or_default();
        *tries += 1;
        let tries = *tries;
        if !self.shows(StatusLevel::Retry) {
            return;
        }
        let label = self.test_label(test, shard);
        self.line(&format!(
            "{} {} {label}",
            self.paint("33;1", &format!("{:>10}", format!("TRY {tries} FAIL"))),
            fmt_duration(failed.duration)
        ));
        if self.reporting.failure_output.is_immediate() {
            let plain = self.plain_label(test, shard);
            let why = attempt_why(failed);
            self.output(&output_block(
                &format!("{plain} (attempt {tries}: {why})"),
                failed,
                None,
            ));
        }
    }

    fn finished(&mut self, outcome: &TestOutcome) {
        let c = self.counts.entry(outcome.shard).or_default();
        c.done += 1;
        let tries = self.tries.remove(&outcome.test).unwrap_or(0);
        let shown: (&str, String) = match &outcome.verdict {
            Verdict::Passed => {
                c.passed += 1;
                ("32;1", "PASS".to_owned())
            }
            Verdict::Flaky => {
                c.passed += 1;
                ("33;1", format!("TRY {} PASS", tries + 1))
            }
            Verdict::Failed => {
                c.failed += 1;
                ("31;1", "FAIL".to_owned())
            }
            Verdict::TimedOut => {
                c.failed += 1;
                ("31;1", "TIMEOUT".to_owned())
            }
            Verdict::Skipped(_) => ("33", "SKIP".to_owned()),
        };
        let (passed, failed, done) = (c.passed, c.failed, c.done);
        if matches!(outcome.verdict, Verdict::Failed | Verdict::TimedOut) {
            self.failed += 1;
        }
        if let Some(bar) = self.shard_bars.get(&outcome.shard) {
            bar.set_position(done as u64);
            bar.set_prefix(format!("shard {}/{}", outcome.shard, self.shard_count));
            bar.set_message(format!("{passed} passed, {failed} failed"));
        }
        self.overall.inc(1);
        if self.failed > 0 {
            self.overall.set_message(format!("{} failed", self.failed));
        }
        if self.shows(status_level_of(&outcome.verdict)) {
            let (color, word) = shown;
            let label = self.test_label(outcome.test, outcome.shard);
            let took = match outcome.verdict {
                Verdict::Skipped(_) => "[         ]".to_owned(),
                _ => fmt_duration(outcome.duration()),
            };
            self.line(&format!(
                "{} {took} {label}",
                self.paint(color, &format!("{word:>10}"))
            ));
        }
        let immediate = self.reporting.output_of(&outcome.verdict);
        if let (Some(display), Some(last)) = (immediate, outcome.attempts.last()) {
            if display.is_immediate() {
                let header = output_header(&self.plain_label(outcome.test, outcome.shard), outcome);
                self.output(&output_block(&header, last, outcome.diagnosis.as_deref()));
            }
        }
    }

    fn tick(&mut self, running: &[RunningTest]) {
        if !self.planned {
            return;
        }
        for r in running {
            if !self.shows(StatusLevel::Slow) {
                break;
            }
            if r.elapsed >= self.slow_after && self.slow_reported.insert(r.test) {
                let label = self.test_label(r.test, r.shard);
                self.line(&format!(
                    "{} [>{:>7.0}s] {label}",
                    self.paint("33", "      SLOW"),
                    self.slow_after.as_secs_f64()
                ));
            }
        }
        match self.mode {
            DisplayMode::Live => {
                for (shard, bar) in &self.shard_bars {
                    if self.with_env && !self.ready.contains(shard) {
                        bar.set_message(format!(
                            "starting environment ({:.0}s)",
                            self.started.elapsed().as_secs_f64()
                        ));
                        continue;
                    }
                    let c = &self.counts[shard];
                    let longest = running
                        .iter()
                        .filter(|r| r.shard == *shard)
                        .max_by_key(|r| r.elapsed);
                    let mut msg = format!("{} passed, {} failed", c.passed, c.failed);
                    if let Some(r) = longest {
                        msg.push_str(&format!(
                            "  running {} ({:.0}s)",
                            self.list.tests[r.test].name,
                            r.elapsed.as_secs_f64()
                        ));
                    }
                    bar.set_message(msg);
                }
            }
            DisplayMode::Plain => {
                // With --no-capture the terminal is the tests'.
                if !self.reporting.no_capture && self.last_count.elapsed() >= self.count_every {
                    self.last_count = Instant::now();
                    let done: usize = self.counts.values().map(|c| c.done).sum();
                    let total: usize = self.counts.values().map(|c| c.total).sum();
                    self.line(&format!(
                        "  PROGRESS {done}/{total} tests done, {} failed, {} running",
                        self.failed,
                        running.len()
                    ));
                }
            }
        }
    }

    fn interrupted(&mut self, signal: i32, second: bool) {
        let name = crate::run::executor::signal_name(signal);
        let msg = if second {
            format!("{name} again: killing running tests now; environments are still removed")
        } else {
            format!("{name} received: stopping running tests, writing reports (press Ctrl-C again to kill them at once)")
        };
        self.line(&format!("{} {msg}", self.paint("31;1", "  CANCEL")));
    }
}
