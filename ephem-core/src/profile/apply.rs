//! A profile applied to a run: what the command line left unset comes from
//! the profile (flags win, as in nextest), and each test gets its knobs
//! from the profile's overrides.

use std::sync::Arc;

use guppy::graph::PackageGraph;

use super::{MaxFail, Profile, RetryPolicy};
use crate::error::Result;
use crate::options::TestOptions;
use crate::run::TestKnobs;
use crate::test_list::TestList;

/// The machine's CPUs, for `num-cpus`.
pub fn cpus() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// `options` with every run-wide setting the command line left unset taken
/// from `profile`: test threads, retries, slow timeout, fail-fast and the
/// timeout `slow-timeout.terminate-after` gives.
pub fn fill_in(options: &TestOptions, profile: &Profile) -> TestOptions {
    let mut out = options.clone();
    let cpus = cpus();
    out.test_threads = options
        .test_threads
        .or_else(|| profile.test_threads.map(|t| t.compute(cpus)));
    out.retries = Some(options.retries.unwrap_or(profile.retries.count));
    out.slow_timeout = Some(options.slow_timeout.unwrap_or(profile.slow_timeout.period));
    out.fail_fast = Some(options.fail_fast.unwrap_or(profile.fail_fast));
    out.test_timeout = options
        .test_timeout
        .or_else(|| profile.slow_timeout.kill_after());
    let (flags, from_profile, default) = (
        &options.output_flags,
        &profile.output,
        crate::report::levels::Reporting::default(),
    );
    out.reporting.status_level = flags
        .status_level
        .or(from_profile.status_level)
        .unwrap_or(default.status_level);
    out.reporting.final_status_level = flags
        .final_status_level
        .or(from_profile.final_status_level)
        .unwrap_or(default.final_status_level);
    out.reporting.failure_output = flags
        .failure_output
        .or(from_profile.failure_output)
        .unwrap_or(default.failure_output);
    out.reporting.success_output = flags
        .success_output
        .or(from_profile.success_output)
        .unwrap_or(default.success_output);
    out
}

/// How many failures stop the run, from filled-in options: `None` runs all.
pub fn max_fail(options: &TestOptions) -> Option<u32> {
    options.fail_fast.unwrap_or(MaxFail::FIRST).limit()
}

/// Each test's knobs (by index in `list`): the profile's settings after its
/// overrides, then the command line's `--retries` and `--test-timeout` on
/// top. `graph` is needed when the overrides have filters.
pub fn knobs(
    profile: &Profile,
    graph: Option<&PackageGraph>,
    list: &TestList,
    cli: &TestOptions,
    test_threads: usize,
) -> Result<Vec<TestKnobs>> {
    let compiled = profile.compile(graph)?;
    let cpus = cpus();
    let mut groups: std::collections::HashMap<String, Arc<str>> = Default::default();
    Ok(list
        .tests
        .iter()
        .map(|case| {
            let binary = &list.binaries[case.binary];
            let s = compiled.settings(binary, &case.name);
            TestKnobs {
                retries: cli.retries.map_or(s.retries, RetryPolicy::immediate),
                timeout: cli.test_timeout.or_else(|| s.slow_timeout.kill_after()),
                grace: s.slow_timeout.grace_period,
                threads: s.threads_required.compute(cpus, test_threads),
                group: s.test_group.map(|g| {
                    groups
                        .entry(g.clone())
                        .or_insert_with(|| Arc::from(g.as_str()))
                        .clone()
                }),
                priority: s.priority,
            }
        })
        .collect())
}

/// `[test-groups]` with their `max-threads` computed.
pub fn group_limits(profile: &Profile) -> std::collections::BTreeMap<String, usize> {
    let cpus = cpus();
    profile
        .test_groups
        .iter()
        .map(|(name, max)| (name.clone(), max.compute(cpus)))
        .collect()
}
