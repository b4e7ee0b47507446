//! `.config/nextest.toml` as written: serde types whose values keep their
//! place in the file (`toml::Spanned`), turned into typed settings with
//! errors that say file:line. Keys that take several shapes are read as
//! plain TOML values and converted by hand, for messages that name the
//! shapes nextest accepts.

use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::time::Duration;

use serde::Deserialize;
use toml::{Spanned, Value};

use super::settings::{Backoff, MaxFail, RetryPolicy, SlowTimeout, TestThreads, ThreadsRequired};
use crate::limits::{MAX_RETRIES, MAX_TEST_THREADS};

/// The whole file. Keys not named here are collected by `unapplied_keys`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(super) struct RawConfig {
    #[serde(default)]
    pub store: Option<RawStore>,
    #[serde(default)]
    pub profile: BTreeMap<String, Spanned<RawProfile>>,
    #[serde(default)]
    pub test_groups: BTreeMap<String, Spanned<RawTestGroup>>,
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct RawStore {
    pub dir: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(super) struct RawTestGroup {
    pub max_threads: Option<Spanned<Value>>,
}

/// One `[profile.NAME]`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(super) struct RawProfile {
    pub inherits: Option<Spanned<String>>,
    pub retries: Option<Spanned<Value>>,
    pub slow_timeout: Option<Spanned<Value>>,
    pub fail_fast: Option<Spanned<Value>>,
    pub test_threads: Option<Spanned<Value>>,
    pub threads_required: Option<Spanned<Value>>,
    pub status_level: Option<Spanned<String>>,
    pub final_status_level: Option<Spanned<String>>,
    pub failure_output: Option<Spanned<String>>,
    pub success_output: Option<Spanned<String>>,
    #[serde(default)]
    pub junit: RawJunit,
    #[serde(default)]
    pub overrides: Vec<Spanned<RawOverride>>,
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct RawJunit {
    pub path: Option<Spanned<String>>,
}

/// One `[[profile.NAME.overrides]]`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(super) struct RawOverride {
    pub filter: Option<Spanned<String>>,
    pub platform: Option<Spanned<Value>>,
    pub retries: Option<Spanned<Value>>,
    pub slow_timeout: Option<Spanned<Value>>,
    pub threads_required: Option<Spanned<Value>>,
    pub test_group: Option<Spanned<String>>,
    pub priority: Option<Spanned<i64>>,
}

/// A fault in the file: where (a byte span) and what.
#[derive(Debug)]
pub(super) struct Fault {
    pub span: std::ops::Range<usize>,
    pub message: String,
}

impl Fault {
    pub fn at<T>(value: &Spanned<T>, message: impl Into<String>) -> Fault {
        Fault {
            span: value.span(),
            message: message.into(),
        }
    }
}

type Parsed<T> = Result<T, Fault>;

fn duration(v: &Spanned<Value>, key: &str, raw: &Value) -> Parsed<Duration> {
    let text = raw
        .as_str()
        .ok_or_else(|| Fault::at(v, format!("{key}: expected a duration such as \"60s\"")))?;
    crate::limits::parse_duration(text).map_err(|e| Fault::at(v, format!("{key}: {e}")))
}

fn boolean(v: &Spanned<Value>, key: &str, raw: Option<&Value>) -> Parsed<bool> {
    match raw {
        None => Ok(false),
        Some(Value::Boolean(b)) => Ok(*b),
        Some(_) => Err(Fault::at(v, format!("{key}: expected true or false"))),
    }
}

fn only_keys(v: &Spanned<Value>, what: &str, table: &toml::Table, allowed: &[&str]) -> Parsed<()> {
    match table.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(k) => Err(Fault::at(
            v,
            format!(
                "{what}: unknown key `{k}` (allowed: {})",
                allowed.join(", ")
            ),
        )),
        None => Ok(()),
    }
}

/// `retries = N` or `{ backoff = "fixed" | "exponential", count, delay,
/// jitter, max-delay }`.
pub(super) fn retries(v: &Spanned<Value>) -> Parsed<RetryPolicy> {
    let count = |raw: &Value| -> Parsed<u32> {
        match raw.as_integer() {
            Some(n) if (0..=i64::from(MAX_RETRIES)).contains(&n) => Ok(n as u32),
            _ => Err(Fault::at(
                v,
                format!("retries: expected a count from 0 to {MAX_RETRIES}"),
            )),
        }
    };
    match v.get_ref() {
        n @ Value::Integer(_) => Ok(RetryPolicy::immediate(count(n)?)),
        Value::Table(t) => {
            let backoff = t.get("backoff").and_then(Value::as_str);
            let allowed: &[&str] = match backoff {
                Some("exponential") => &["backoff", "count", "delay", "jitter", "max-delay"],
                Some("fixed") => &["backoff", "count", "delay", "jitter"],
                _ => {
                    return Err(Fault::at(
                        v,
                        "retries: `backoff` must be \"fixed\" or \"exponential\"",
                    ))
                }
            };
            only_keys(v, "retries", t, allowed)?;
            let n = count(t.get("count").ok_or_else(|| {
                Fault::at(v, "retries: a retry policy needs `count`")
            })?)?;
            let delay = match t.get("delay") {
                Some(d) => duration(v, "retries.delay", d)?,
                None if backoff == Some("exponential") => {
                    return Err(Fault::at(v, "retries: exponential backoff needs `delay`"))
                }
                None => Duration::ZERO,
            };
            let jitter = boolean(v, "retries.jitter", t.get("jitter"))?;
            let backoff = if backoff == Some("exponential") {
                if delay.is_zero() {
                    return Err(Fault::at(v, "retries: exponential backoff needs a non-zero `delay`"));
                }
                let max_delay = match t.get("max-delay") {
                    Some(d) => Some(duration(v, "retries.max-delay", d)?),
                    None => None,
                };
                if max_delay.is_some_and(|m| m < delay) {
                    return Err(Fault::at(v, "retries: `max-delay` is shorter than `delay`"));
                }
                Backoff::Exponential {
                    delay,
                    jitter,
                    max_delay,
                }
            } else {
                Backoff::Fixed { delay, jitter }
            };
            Ok(RetryPolicy { count: n, backoff })
        }
        _ => Err(Fault::at(
            v,
            "retries: expected a count or a table such as { backoff = \"fixed\", count = 2, delay = \"1s\" }",
        )),
    }
}

/// `slow-timeout = "60s"` or `{ period, terminate-after, grace-period }`.
pub(super) fn slow_timeout(v: &Spanned<Value>) -> Parsed<SlowTimeout> {
    match v.get_ref() {
        s @ Value::String(_) => Ok(SlowTimeout {
            period: duration(v, "slow-timeout", s)?,
            ..SlowTimeout::default()
        }),
        Value::Table(t) => {
            only_keys(
                v,
                "slow-timeout",
                t,
                &["period", "terminate-after", "grace-period", "on-timeout"],
            )?;
            let period = duration(
                v,
                "slow-timeout.period",
                t.get("period")
                    .ok_or_else(|| Fault::at(v, "slow-timeout: needs `period`"))?,
            )?;
            let terminate_after = match t.get("terminate-after") {
                None => None,
                Some(n) => Some(
                    n.as_integer()
                        .and_then(|n| u32::try_from(n).ok())
                        .and_then(NonZeroU32::new)
                        .ok_or_else(|| {
                            Fault::at(v, "slow-timeout.terminate-after: expected a count of periods, 1 or more")
                        })?,
                ),
            };
            let grace_period = match t.get("grace-period") {
                Some(d) => duration(v, "slow-timeout.grace-period", d)?,
                None => SlowTimeout::default().grace_period,
            };
            Ok(SlowTimeout {
                period,
                terminate_after,
                grace_period,
            })
        }
        _ => Err(Fault::at(
            v,
            "slow-timeout: expected a duration such as \"60s\" or a table such as { period = \"60s\", terminate-after = 2 }",
        )),
    }
}

/// `fail-fast = true | false | { max-fail = N | "all" }`.
pub(super) fn fail_fast(v: &Spanned<Value>) -> Parsed<MaxFail> {
    let bad = || {
        Fault::at(
            v,
            "fail-fast: expected true, false or a table such as { max-fail = 3 }",
        )
    };
    match v.get_ref() {
        Value::Boolean(true) => Ok(MaxFail::FIRST),
        Value::Boolean(false) => Ok(MaxFail::All),
        Value::Table(t) => {
            only_keys(v, "fail-fast", t, &["max-fail", "terminate"])?;
            match t.get("max-fail") {
                Some(Value::String(s)) => s.parse().map_err(|e: String| Fault::at(v, e)),
                Some(Value::Integer(n)) => u32::try_from(*n)
                    .ok()
                    .and_then(NonZeroU32::new)
                    .map(MaxFail::Count)
                    .ok_or_else(|| {
                        Fault::at(v, "fail-fast.max-fail: expected 1 or more, or \"all\"")
                    }),
                _ => Err(bad()),
            }
        }
        _ => Err(bad()),
    }
}

/// `test-threads = N | "num-cpus" | -N`.
pub(super) fn test_threads(v: &Spanned<Value>) -> Parsed<TestThreads> {
    match v.get_ref() {
        Value::String(s) if s == "num-cpus" => Ok(TestThreads::NumCpus),
        Value::Integer(n) if (1..=MAX_TEST_THREADS as i64).contains(n) => {
            Ok(TestThreads::Count(*n as usize))
        }
        Value::Integer(n) if (-(MAX_TEST_THREADS as i64)..0).contains(n) => {
            Ok(TestThreads::CpusMinus(n.unsigned_abs() as usize))
        }
        _ => Err(Fault::at(
            v,
            format!("test-threads: expected 1 to {MAX_TEST_THREADS}, \"num-cpus\", or a negative number (CPUs minus that many)"),
        )),
    }
}

/// One of a display setting's names (`status-level = "fail"`).
pub(super) fn named<T>(v: &Spanned<String>, key: &str) -> Parsed<T>
where
    T: std::str::FromStr<Err = crate::report::levels::UnknownName>,
{
    v.get_ref()
        .parse()
        .map_err(|e: crate::report::levels::UnknownName| Fault::at(v, format!("{key}: {e}")))
}

/// `threads-required = N | "num-cpus" | "num-test-threads"`.
pub(super) fn threads_required(v: &Spanned<Value>) -> Parsed<ThreadsRequired> {
    match v.get_ref() {
        Value::String(s) if s == "num-cpus" => Ok(ThreadsRequired::NumCpus),
        Value::String(s) if s == "num-test-threads" => Ok(ThreadsRequired::NumTestThreads),
        Value::Integer(n) if (1..=MAX_TEST_THREADS as i64).contains(n) => {
            Ok(ThreadsRequired::Count(*n as usize))
        }
        _ => Err(Fault::at(
            v,
            format!("threads-required: expected 1 to {MAX_TEST_THREADS}, \"num-cpus\" or \"num-test-threads\""),
        )),
    }
}

/// `max-threads = N | "num-cpus"` of a test group.
pub(super) fn max_threads(v: &Spanned<Value>) -> Parsed<TestThreads> {
    match v.get_ref() {
        Value::String(s) if s == "num-cpus" => Ok(TestThreads::NumCpus),
        Value::Integer(n) if (1..=MAX_TEST_THREADS as i64).contains(n) => {
            Ok(TestThreads::Count(*n as usize))
        }
        _ => Err(Fault::at(
            v,
            format!("max-threads: expected 1 to {MAX_TEST_THREADS} or \"num-cpus\""),
        )),
    }
}

/// Keys nextest knows (or that are misspelt) that this runner does not
/// apply, as dotted paths (`profile.ci.leak-timeout`).
pub(super) fn unapplied_keys(doc: &toml::Table) -> Vec<String> {
    const TOP: &[&str] = &["store", "profile", "test-groups"];
    const PROFILE: &[&str] = &[
        "inherits",
        "retries",
        "slow-timeout",
        "fail-fast",
        "test-threads",
        "threads-required",
        "status-level",
        "final-status-level",
        "failure-output",
        "success-output",
        "junit",
        "overrides",
    ];
    const OVERRIDE: &[&str] = &[
        "filter",
        "platform",
        "retries",
        "slow-timeout",
        "threads-required",
        "test-group",
        "priority",
    ];
    let mut out = Vec::new();
    let mut extra = |table: &toml::Table, known: &[&str], prefix: &str| {
        for key in table.keys().filter(|k| !known.contains(&k.as_str())) {
            out.push(format!("{prefix}{key}"));
        }
    };
    extra(doc, TOP, "");
    if let Some(Value::Table(store)) = doc.get("store") {
        extra(store, &["dir"], "store.");
    }
    if let Some(Value::Table(groups)) = doc.get("test-groups") {
        for (name, g) in groups {
            if let Value::Table(g) = g {
                extra(g, &["max-threads"], &format!("test-groups.{name}."));
            }
        }
    }
    if let Some(Value::Table(profiles)) = doc.get("profile") {
        for (name, p) in profiles {
            let Value::Table(p) = p else { continue };
            let prefix = format!("profile.{name}.");
            extra(p, PROFILE, &prefix);
            if let Some(Value::Table(junit)) = p.get("junit") {
                extra(junit, &["path"], &format!("{prefix}junit."));
            }
            if let Some(Value::Array(overrides)) = p.get("overrides") {
                for o in overrides.iter().filter_map(Value::as_table) {
                    extra(o, OVERRIDE, &format!("{prefix}overrides."));
                }
            }
        }
    }
    out.sort();
    out.dedup();
    out
}
