//! What the display shows, as nextest decides it: status levels (which
//! result lines appear during the run and at its end) and when a test's
//! captured output is shown (`--failure-output`, `--success-output`).
//!
//! The names, their order and the defaults are nextest's, so that a
//! `NEXTEST_STATUS_LEVEL` or `--final-status-level` a team already uses
//! means the same here.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use crate::run::{TestOutcome, Verdict};

/// Which result lines are shown while the run goes. Each level shows
/// everything the levels before it show.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub enum StatusLevel {
    /// No result line.
    None,
    /// Failed and timed-out tests.
    Fail,
    /// Also failed attempts that will be retried, and flaky tests.
    Retry,
    /// Also tests running longer than `--slow-timeout`.
    Slow,
    /// Also leaky tests (nextest's; none are detected here, so as `slow`).
    Leak,
    /// Also passing tests.
    #[default]
    Pass,
    /// Also skipped tests.
    Skip,
    /// Everything (as `skip`).
    All,
}

/// Which result lines are repeated at the end of the run. The order
/// differs from [`StatusLevel`]: skipped tests come before passing ones.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub enum FinalStatusLevel {
    /// No result line.
    None,
    /// Failed and timed-out tests.
    Fail,
    /// Also flaky tests (`retry` is accepted for it, as nextest does).
    #[default]
    Flaky,
    /// Also passing tests that ran longer than `--slow-timeout`.
    Slow,
    /// Also skipped tests.
    Skip,
    /// Also leaky tests (none are detected here, so as `skip`).
    Leak,
    /// Also passing tests.
    Pass,
    /// Everything (as `pass`).
    All,
}

/// When a test's captured output is shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputDisplay {
    /// As soon as the test ends.
    Immediate,
    /// As soon as it ends and again at the end of the run.
    ImmediateFinal,
    /// At the end of the run.
    Final,
    /// Never (JUnit still has a failure's output).
    Never,
}

impl OutputDisplay {
    /// Shown when the test ends.
    pub fn is_immediate(self) -> bool {
        matches!(
            self,
            OutputDisplay::Immediate | OutputDisplay::ImmediateFinal
        )
    }

    /// Shown at the end of the run.
    pub fn is_final(self) -> bool {
        matches!(self, OutputDisplay::Final | OutputDisplay::ImmediateFinal)
    }
}

/// Everything that decides what the display and the summary show.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reporting {
    /// Result lines during the run (`--status-level`).
    pub status_level: StatusLevel,
    /// Result lines at the end (`--final-status-level`).
    pub final_status_level: FinalStatusLevel,
    /// Output of failing tests (`--failure-output`).
    pub failure_output: OutputDisplay,
    /// Output of passing tests (`--success-output`).
    pub success_output: OutputDisplay,
    /// Tests write to the terminal (`--no-capture`): there is no output
    /// to show, and nothing may draw over theirs.
    pub no_capture: bool,
}

impl Default for Reporting {
    /// nextest's defaults: `pass`, `flaky`, `immediate`, `never`.
    fn default() -> Self {
        Reporting {
            status_level: StatusLevel::Pass,
            final_status_level: FinalStatusLevel::Flaky,
            failure_output: OutputDisplay::Immediate,
            success_output: OutputDisplay::Never,
            no_capture: false,
        }
    }
}

impl Reporting {
    /// With `--no-capture` nothing is captured, so no output is shown
    /// (nextest does the same); the levels stay.
    pub fn effective(self) -> Reporting {
        if !self.no_capture {
            return self;
        }
        Reporting {
            failure_output: OutputDisplay::Never,
            success_output: OutputDisplay::Never,
            ..self
        }
    }

    /// When the output of a test with this verdict is shown; `None` for
    /// a test that did not run.
    pub fn output_of(&self, verdict: &Verdict) -> Option<OutputDisplay> {
        let this = self.effective();
        match verdict {
            Verdict::Passed | Verdict::Flaky => Some(this.success_output),
            Verdict::Failed | Verdict::TimedOut => Some(this.failure_output),
            Verdict::Skipped(_) => None,
        }
    }
}

/// The level at which a finished test's line is shown during the run.
pub fn status_level_of(verdict: &Verdict) -> StatusLevel {
    match verdict {
        Verdict::Passed => StatusLevel::Pass,
        // A flaky test is news about retries.
        Verdict::Flaky => StatusLevel::Retry,
        Verdict::Failed | Verdict::TimedOut => StatusLevel::Fail,
        Verdict::Skipped(_) => StatusLevel::Skip,
    }
}

/// The level at which a test's line is repeated at the end: a passing
/// test whose last attempt ran past `slow_after` counts as slow.
pub fn final_status_level_of(outcome: &TestOutcome, slow_after: Duration) -> FinalStatusLevel {
    match outcome.verdict {
        Verdict::Passed if outcome.duration() >= slow_after => FinalStatusLevel::Slow,
        Verdict::Passed => FinalStatusLevel::Pass,
        Verdict::Flaky => FinalStatusLevel::Flaky,
        Verdict::Failed | Verdict::TimedOut => FinalStatusLevel::Fail,
        Verdict::Skipped(_) => FinalStatusLevel::Skip,
    }
}

/// A value that is not one of a flag's names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnknownName {
    /// What was given.
    pub given: String,
    /// What is accepted.
    pub expected: &'static [&'static str],
}

impl fmt::Display for UnknownName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:?} is not one of {}",
            self.given,
            self.expected.join(", ")
        )
    }
}

impl std::error::Error for UnknownName {}

/// Names and their values, in order, for parsing and printing.
macro_rules! named {
    ($ty:ident { $($name:literal => $value:ident),* $(,)? } $(aliases { $($alias:literal => $avalue:ident),* })?) => {
        impl $ty {
            /// Every accepted name, in the order of the levels.
            pub const NAMES: &'static [&'static str] = &[$($name),*];

            /// The name nextest uses.
            pub fn name(self) -> &'static str {
                match self {
                    $($ty::$value => $name),*
                }
            }
        }

        impl FromStr for $ty {
            type Err = UnknownName;

            fn from_str(s: &str) -> Result<Self, UnknownName> {
                match s {
                    $($name => Ok($ty::$value),)*
                    $($($alias => Ok($ty::$avalue),)*)?
                    _ => Err(UnknownName {
                        given: s.to_owned(),
                        expected: Self::NAMES,
                    }),
                }
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.name())
            }
        }
    };
}

named!(StatusLevel {
    "none" => None,
    "fail" => Fail,
    "retry" => Retry,
    "slow" => Slow,
    "leak" => Leak,
    "pass" => Pass,
    "skip" => Skip,
    "all" => All,
});

named!(FinalStatusLevel {
    "none" => None,
    "fail" => Fail,
    "flaky" => Flaky,
    "slow" => Slow,
    "skip" => Skip,
    "leak" => Leak,
    "pass" => Pass,
    "all" => All,
} aliases { "retry" => Flaky });

named!(OutputDisplay {
    "immediate" => Immediate,
    "immediate-final" => ImmediateFinal,
    "final" => Final,
    "never" => Never,
});

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::{Attempt, AttemptStatus};
    use std::time::SystemTime;

    fn outcome(verdict: Verdict, ran: Duration) -> TestOutcome {
        TestOutcome {
            test: 0,
            shard: 1,
            attempts: vec![Attempt {
                status: AttemptStatus::Passed,
                started_at: SystemTime::now(),
                duration: ran,
                stdout: String::new(),
                stderr: String::new(),
            }],
            verdict,
            diagnosis: None,
        }
    }

    #[test]
    fn names_round_trip_in_order() {
        for (i, name) in StatusLevel::NAMES.iter().enumerate() {
            let level: StatusLevel = name.parse().unwrap();
            assert_eq!(level.name(), *name);
            if i > 0 {
                assert!(StatusLevel::NAMES[i - 1].parse::<StatusLevel>().unwrap() < level);
            }
        }
        for name in FinalStatusLevel::NAMES {
            assert_eq!(name.parse::<FinalStatusLevel>().unwrap().name(), *name);
        }
        for name in OutputDisplay::NAMES {
            assert_eq!(name.parse::<OutputDisplay>().unwrap().name(), *name);
        }
        assert_eq!("retry".parse(), Ok(FinalStatusLevel::Flaky));
        let err = "loud".parse::<StatusLevel>().unwrap_err().to_string();
        assert!(
            err.contains("\"loud\"") && err.contains("none, fail, retry"),
            "{err}"
        );
    }

    #[test]
    fn each_verdict_shows_from_its_level_on() {
        let at = |level: StatusLevel, verdict: &Verdict| level >= status_level_of(verdict);
        let skipped = Verdict::Skipped("ignored".into());
        // nextest's default, `pass`: everything but skipped tests.
        for v in [
            Verdict::Passed,
            Verdict::Flaky,
            Verdict::Failed,
            Verdict::TimedOut,
        ] {
            assert!(at(StatusLevel::default(), &v), "{v:?}");
        }
        assert!(!at(StatusLevel::Pass, &skipped));
        assert!(at(StatusLevel::Skip, &skipped) && at(StatusLevel::All, &skipped));
        // `fail`: failures only; `retry` adds flaky; `slow` and `leak` no passes.
        assert!(at(StatusLevel::Fail, &Verdict::TimedOut));
        assert!(!at(StatusLevel::Fail, &Verdict::Flaky));
        assert!(at(StatusLevel::Retry, &Verdict::Flaky));
        assert!(!at(StatusLevel::Leak, &Verdict::Passed));
        for v in [Verdict::Passed, Verdict::Flaky, Verdict::Failed, skipped] {
            assert!(!at(StatusLevel::None, &v), "{v:?}");
        }
    }

    #[test]
    fn final_levels_order_skip_before_pass_and_slow_before_both() {
        let slow = Duration::from_secs(1);
        let quick = outcome(Verdict::Passed, Duration::from_millis(10));
        let long = outcome(Verdict::Passed, Duration::from_secs(2));
        let skipped = TestOutcome {
            attempts: Vec::new(),
            ..outcome(Verdict::Skipped("ignored".into()), Duration::ZERO)
        };
        let level = |o: &TestOutcome| final_status_level_of(o, slow);
        assert_eq!(level(&quick), FinalStatusLevel::Pass);
        assert_eq!(level(&long), FinalStatusLevel::Slow);
        assert_eq!(level(&skipped), FinalStatusLevel::Skip);
        // The default, `flaky`, repeats failures and flaky tests only.
        let default = FinalStatusLevel::default();
        assert!(default >= level(&outcome(Verdict::Failed, slow)));
        assert!(default >= level(&outcome(Verdict::Flaky, slow)));
        assert!(default < level(&long));
        assert!(FinalStatusLevel::Slow >= level(&long));
        assert!(FinalStatusLevel::Slow < level(&skipped));
        assert!(FinalStatusLevel::Skip >= level(&skipped));
        assert!(FinalStatusLevel::Skip < level(&quick));
    }

    #[test]
    fn no_capture_shows_no_output_and_keeps_the_levels() {
        let asked = Reporting {
            status_level: StatusLevel::Skip,
            success_output: OutputDisplay::Immediate,
            no_capture: true,
            ..Reporting::default()
        };
        assert_eq!(
            asked.output_of(&Verdict::Failed),
            Some(OutputDisplay::Never)
        );
        assert_eq!(
            asked.output_of(&Verdict::Passed),
            Some(OutputDisplay::Never)
        );
        assert_eq!(asked.effective().status_level, StatusLevel::Skip);
        let captured = Reporting {
            no_capture: false,
            ..asked
        };
        assert_eq!(
            captured.output_of(&Verdict::Flaky),
            Some(OutputDisplay::Immediate)
        );
        assert_eq!(captured.output_of(&Verdict::Skipped("x".into())), None);
        assert!(OutputDisplay::ImmediateFinal.is_immediate());
        assert!(OutputDisplay::ImmediateFinal.is_final());
        assert!(!OutputDisplay::Never.is_immediate() && !OutputDisplay::Never.is_final());
    }
}
