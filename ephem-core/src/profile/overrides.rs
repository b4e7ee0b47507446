//! `[[profile.NAME.overrides]]`: per-test settings chosen by filterset and
//! platform. As in nextest, overrides are tried in order (the profile's,
//! then those of what it inherits, then `default`'s) and, for each
//! setting separately, the first matching override that sets it wins.

use std::collections::BTreeMap;

use guppy::graph::PackageGraph;
use toml::Spanned;

use super::raw::{self, Fault, RawOverride};
use super::settings::{RetryPolicy, SlowTimeout, TestThreads, ThreadsRequired};
use super::Profile;
use crate::error::{EphemError, Result};
use crate::filterset::OverrideFilter;
use crate::test_list::TestBinary;

/// One override, read; its filter is compiled by [`Profile::compile`].
#[derive(Clone, Debug)]
pub struct Override {
    /// The filterset, as written.
    pub filter: Option<String>,
    /// Whether its `platform` matches this host (true without one).
    pub platform_matches: bool,
    /// `retries`.
    pub retries: Option<RetryPolicy>,
    /// `slow-timeout`.
    pub slow_timeout: Option<SlowTimeout>,
    /// `threads-required`.
    pub threads_required: Option<ThreadsRequired>,
    /// `test-group` (`@global` is `None` inside [`TestSettings`]).
    pub test_group: Option<String>,
    /// `priority`, -100 to 100.
    pub priority: Option<i8>,
}

impl Override {
    pub(super) fn read(
        raw: &Spanned<RawOverride>,
        groups: &BTreeMap<String, TestThreads>,
    ) -> Result<Override, Fault> {
        let o = raw.get_ref();
        if o.filter.is_none() && o.platform.is_none() {
            return Err(Fault::at(
                raw,
                "overrides: each override needs `filter` or `platform`",
            ));
        }
        let platform_matches = match &o.platform {
            None => true,
            Some(p) => platform_matches(p)?,
        };
        if let Some(g) = &o.test_group {
            let name = g.get_ref();
            if name != "@global" && !groups.contains_key(name) {
                return Err(Fault::at(
                    g,
                    format!("test-group: `{name}` is not defined in [test-groups]"),
                ));
            }
        }
        let priority = match &o.priority {
            None => None,
            Some(p) => Some(
                i8::try_from(*p.get_ref())
                    .ok()
                    .filter(|n| (-100..=100).contains(n))
                    .ok_or_else(|| Fault::at(p, "priority: expected -100 to 100"))?,
            ),
        };
        Ok(Override {
            filter: o.filter.as_ref().map(|f| f.get_ref().clone()),
            platform_matches,
            retries: o.retries.as_ref().map(raw::retries).transpose()?,
            slow_timeout: o.slow_timeout.as_ref().map(raw::slow_timeout).transpose()?,
            threads_required: o
                .threads_required
                .as_ref()
                .map(raw::threads_required)
                .transpose()?,
            test_group: o.test_group.as_ref().map(|g| g.get_ref().clone()),
            priority,
        })
    }
}

/// `platform = "cfg(...)"` or `{ host = ..., target = ... }`, evaluated for
/// this host (tests run where they are built: host and target are one).
fn platform_matches(v: &Spanned<toml::Value>) -> Result<bool, Fault> {
    let specs: Vec<&str> =
        match v.get_ref() {
            toml::Value::String(s) => vec![s.as_str()],
            toml::Value::Table(t) => {
                let mut specs = Vec::new();
                for (k, value) in t {
                    match (k.as_str(), value.as_str()) {
                        ("host" | "target", Some(s)) => specs.push(s),
                        _ => return Err(Fault::at(
                            v,
                            "platform: expected a string or { host = \"...\", target = \"...\" }",
                        )),
                    }
                }
                specs
            }
            _ => {
                return Err(Fault::at(
                    v,
                    "platform: expected a cfg() expression or a target triple",
                ))
            }
        };
    let here = target_spec::Platform::build_target()
        .map_err(|e| Fault::at(v, format!("platform: this host's platform is unknown: {e}")))?;
    let mut all = true;
    for spec in specs {
        let parsed = target_spec::TargetSpec::new(spec.to_owned())
            .map_err(|e| Fault::at(v, format!("platform: {spec:?}: {e}")))?;
        all &= parsed.eval(&here).unwrap_or(false);
    }
    Ok(all)
}

/// What one test runs under once overrides are applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TestSettings {
    /// Retries and the wait before each.
    pub retries: RetryPolicy,
    /// When it is slow, and killed.
    pub slow_timeout: SlowTimeout,
    /// Threads it takes.
    pub threads_required: ThreadsRequired,
    /// Its test group; `None`: `@global` (no limit of its own).
    pub test_group: Option<String>,
    /// Higher runs first.
    pub priority: i8,
}

/// A profile's overrides with their filters compiled.
pub struct CompiledOverrides<'p> {
    profile: &'p Profile,
    filters: Vec<Option<OverrideFilter>>,
}

impl Profile {
    /// Compiles the overrides' filters against `graph` (needed when
    /// [`Profile::needs_graph`]); an invalid filter is a usage error that
    /// names the override.
    pub fn compile(&self, graph: Option<&PackageGraph>) -> Result<CompiledOverrides<'_>> {
        let mut filters = Vec::new();
        for o in &self.overrides {
            let compiled = match (&o.filter, graph) {
                (None, _) => None,
                (Some(expr), Some(graph)) => {
                    Some(OverrideFilter::parse(expr, graph).map_err(|e| {
                        EphemError::Usage(format!(
                            "{}: profile `{}`, override filter {expr:?}: {e}",
                            self.file.as_ref().map_or("nextest.toml", |f| f.as_str()),
                            self.name
                        ))
                    })?)
                }
                (Some(expr), None) => {
                    return Err(EphemError::Internal(format!(
                        "override filter {expr:?} compiled without a package graph"
                    )))
                }
            };
            filters.push(compiled);
        }
        Ok(CompiledOverrides {
            profile: self,
            filters,
        })
    }
}

impl CompiledOverrides<'_> {
    /// The settings of the test `name` in `binary`: for each setting, the
    /// first matching override that sets it, else the profile's.
    pub fn settings(&self, binary: &TestBinary, name: &str) -> TestSettings {
        let p = self.profile;
        let mut s = TestSettings {
            retries: p.retries,
            slow_timeout: p.slow_timeout,
            threads_required: p.threads_required,
            test_group: None,
            priority: 0,
        };
        let (mut retries, mut slow, mut threads, mut group, mut priority) =
            (false, false, false, false, false);
        for (o, filter) in p.overrides.iter().zip(&self.filters) {
            let matches =
                o.platform_matches && filter.as_ref().is_none_or(|f| f.matches(binary, name));
            if !matches {
                continue;
            }
            take(&mut retries, &mut s.retries, o.retries);
            take(&mut slow, &mut s.slow_timeout, o.slow_timeout);
            take(&mut threads, &mut s.threads_required, o.threads_required);
            take(&mut priority, &mut s.priority, o.priority);
            if !group {
                if let Some(g) = &o.test_group {
                    group = true;
                    s.test_group = (g != "@global").then(|| g.clone());
                }
            }
        }
        s
    }
}

/// The first value offered wins; later ones are ignored.
fn take<T>(taken: &mut bool, slot: &mut T, offered: Option<T>) {
    if let (false, Some(v)) = (*taken, offered) {
        *slot = v;
        *taken = true;
    }
}
