//! The values of nextest's profile keys, typed: what `retries`,
//! `slow-timeout`, `fail-fast`, `test-threads` and `threads-required` mean
//! once read, with nextest's built-in defaults.

use std::num::NonZeroU32;
use std::time::Duration;

/// `retries = N` or `retries = { backoff, count, delay, jitter, max-delay }`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Extra attempts after a failure.
    pub count: u32,
    /// How long to wait before each retry.
    pub backoff: Backoff,
}

/// The wait before a retry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backoff {
    /// The same `delay` before every retry (nextest's default: none).
    Fixed {
        /// The wait.
        delay: Duration,
        /// Wait a random 50% to 100% of it.
        jitter: bool,
    },
    /// `delay`, doubled before each further retry, at most `max_delay`.
    Exponential {
        /// The first wait.
        delay: Duration,
        /// Wait a random 50% to 100% of it.
        jitter: bool,
        /// The cap.
        max_delay: Option<Duration>,
    },
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::Fixed {
            delay: Duration::ZERO,
            jitter: false,
        }
    }
}

impl RetryPolicy {
    /// `count` retries with no wait between them (`--retries N`).
    pub fn immediate(count: u32) -> RetryPolicy {
        RetryPolicy {
            count,
            backoff: Backoff::default(),
        }
    }

    /// The wait before retry number `retry` (1 for the second attempt),
    /// before jitter.
    pub fn delay_before(&self, retry: u32) -> Duration {
        match self.backoff {
            Backoff::Fixed { delay, .. } => delay,
            Backoff::Exponential {
                delay, max_delay, ..
            } => {
                let factor = 1u32 << retry.saturating_sub(1).min(30);
                let grown = delay.saturating_mul(factor);
                max_delay.map_or(grown, |max| grown.min(max))
            }
        }
    }

    /// Whether the wait is randomised.
    pub fn jitter(&self) -> bool {
        match self.backoff {
            Backoff::Fixed { jitter, .. } | Backoff::Exponential { jitter, .. } => jitter,
        }
    }
}

/// `slow-timeout = "60s"` or `{ period, terminate-after, grace-period }`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlowTimeout {
    /// A test running longer is reported slow, once per period.
    pub period: Duration,
    /// Kill the test after this many periods.
    pub terminate_after: Option<NonZeroU32>,
    /// Between SIGTERM and SIGKILL when it is killed.
    pub grace_period: Duration,
}

impl Default for SlowTimeout {
    fn default() -> Self {
        SlowTimeout {
            period: Duration::from_secs(60),
            terminate_after: None,
            grace_period: Duration::from_secs(10),
        }
    }
}

impl SlowTimeout {
    /// When the test is killed: `period × terminate-after`.
    pub fn kill_after(&self) -> Option<Duration> {
        self.terminate_after
            .map(|n| self.period.saturating_mul(n.get()))
    }
}

/// `fail-fast = true | false | { max-fail = N | "all" }`, `--max-fail`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MaxFail {
    /// Stop scheduling after this many failures.
    Count(NonZeroU32),
    /// Run everything.
    All,
}

impl MaxFail {
    /// `fail-fast = true`: stop after the first failure.
    pub const FIRST: MaxFail = MaxFail::Count(NonZeroU32::MIN);

    /// The failures after which the run stops, if any.
    pub fn limit(self) -> Option<u32> {
        match self {
            MaxFail::Count(n) => Some(n.get()),
            MaxFail::All => None,
        }
    }
}

impl std::str::FromStr for MaxFail {
    type Err = String;

    /// `N` (at least 1) or `all`, as nextest's `--max-fail`.
    fn from_str(s: &str) -> Result<Self, String> {
        if s.eq_ignore_ascii_case("all") {
            return Ok(MaxFail::All);
        }
        s.parse::<NonZeroU32>().map(MaxFail::Count).map_err(|_| {
            format!("invalid max-fail {s:?}: expected a number of failures (1 or more) or `all`")
        })
    }
}

/// `test-threads = N | "num-cpus" | -N`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TestThreads {
    /// Exactly this many.
    Count(usize),
    /// As many as CPUs.
    NumCpus,
    /// CPUs minus this many (at least 1).
    CpusMinus(usize),
}

impl TestThreads {
    /// The number for a machine with `cpus` CPUs.
    pub fn compute(self, cpus: usize) -> usize {
        match self {
            TestThreads::Count(n) => n,
            TestThreads::NumCpus => cpus,
            TestThreads::CpusMinus(n) => cpus.saturating_sub(n).max(1),
        }
    }
}

/// `threads-required = N | "num-cpus" | "num-test-threads"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ThreadsRequired {
    /// This many of the run's threads.
    Count(usize),
    /// As many as CPUs.
    NumCpus,
    /// All of the run's threads: the test runs alone.
    NumTestThreads,
}

impl Default for ThreadsRequired {
    fn default() -> Self {
        ThreadsRequired::Count(1)
    }
}

impl ThreadsRequired {
    /// The threads one test takes, between 1 and `test_threads`.
    pub fn compute(self, cpus: usize, test_threads: usize) -> usize {
        let n = match self {
            ThreadsRequired::Count(n) => n,
            ThreadsRequired::NumCpus => cpus,
            ThreadsRequired::NumTestThreads => test_threads,
        };
        n.clamp(1, test_threads.max(1))
    }
}
