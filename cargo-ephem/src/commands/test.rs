//! `cargo ephem test`: the main job.

use std::sync::Arc;
use std::time::Duration;

use camino::Utf8Path;
use ephem_core::discover::{CargoOptions, Workspace};
use ephem_core::partition::{PartitionItem, PartitionKind, ShardPlan, Timings};
use ephem_core::report::display::{Display, DisplayMode};
use ephem_core::report::junit;
use ephem_core::report::summary::{self, shell_quote, Counts};
use ephem_core::run::{self, RunInput, RunOptions, RunResult};
use ephem_core::test_list::{Selection, TestList};
use ephem_core::{exit_codes, EphemError, Result};
use ephem_fixtures::Backend;

use super::env;
use super::gc;
use super::reap::{self, Reaper};
use crate::cli::{FilterArgs, NoTests, TestArgs};

pub fn test(args: TestArgs) -> Result<i32> {
    // Check everything that can be checked before the build, so a typo does
    // not cost a build.
    if args.partition.map(|p| p.kind) == Some(PartitionKind::Duration) && args.timings.is_empty() {
        return Err(EphemError::Usage(
            "--partition duration:M/N needs --timings FILE (a JUnit report of an earlier run); \
             use slice:M/N when there is none"
                .to_owned(),
        ));
    }
    let timings = if args.timings.is_empty() {
        Timings::default()
    } else {
        junit::read_timings(&args.timings)?
    };
    let test_threads = args.test_threads.unwrap_or_else(default_threads);
    if test_threads == 0 {
        return Err(EphemError::Usage(
            "--test-threads must be at least 1".to_owned(),
        ));
    }
    let cargo = args.cargo.to_options();
    let workspace = Workspace::load(&cargo)?;
    let config = env::load_config(&workspace.root, &args.env)?;
    let runtime = super::runtime()?;
    let run_id = uuid::Uuid::new_v4().to_string();
    // Connect before building: a daemon that is down fails the run in
    // seconds, not after a build.
    let connected = match config {
        Some(config) => Some(runtime.block_on(env::connect(config))?),
        None => None,
    };
    let list = Arc::new(workspace.discover(&cargo)?);
    let selection = list.select(&args.filter.to_filter());

    let (kind, shard_count, shards_here) = match (args.partition, args.shards) {
        (Some(p), _) => (p.kind, p.count, vec![p.shard]),
        (None, n) => {
            let n = n.unwrap_or(1);
            let kind = if args.timings.is_empty() {
                PartitionKind::Slice
            } else {
                PartitionKind::Duration
            };
            (kind, n, (1..=n).collect())
        }
    };
    let selected: Vec<usize> = (0..list.tests.len())
        .filter(|&i| selection[i] != Selection::FilteredOut)
        .collect();
    let items: Vec<PartitionItem<'_>> = selected
        .iter()
        .map(|&i| PartitionItem {
            binary_id: list.binary_id(i),
            name: &list.tests[i].name,
            runs: selection[i] == Selection::Run,
        })
        .collect();
    let plan = ShardPlan::new(&items, shard_count, kind, &timings);
    let shards: Vec<(u32, Vec<usize>)> = shards_here
        .iter()
        .map(|&m| {
            (
                m,
                plan.shards[(m - 1) as usize]
                    .iter()
                    .map(|&k| selected[k])
                    .collect(),
            )
        })
        .collect();

    let to_run = shards
        .iter()
        .flat_map(|(_, t)| t)
        .filter(|&&t| selection[t] == Selection::Run)
        .count();
    if to_run == 0 {
        return Ok(no_tests(&args, &list));
    }

    let options = RunOptions {
        run_id: run_id.clone(),
        test_threads,
        retries: args.retries,
        test_timeout: args.test_timeout,
        grace: Duration::from_secs(10),
        slow_after: args.slow_timeout,
        fail_fast: !args.no_fail_fast,
        shard_count,
        keep_env: args.keep_env,
    };
    // The reaper starts before any test or container does; the sweep of
    // abandoned runs happens before this run adds its own resources.
    let reaper = Reaper::spawn(
        &run_id,
        connected.is_some(),
        &reap::log_path(&workspace.target_dir, &run_id),
    )
    .map_err(|e| EphemError::Internal(format!("cannot start the reaper process: {e}")))?;
    if let Some(c) = &connected {
        let outcome = runtime.block_on(gc::sweep(
            c.backend.client(),
            false,
            false,
            vec![run_id.clone()],
        ))?;
        if !outcome.planned.is_empty() {
            eprintln!("     SWEEP {}", outcome.summary("removed"));
        }
    }

    let per_shard: Vec<(u32, usize)> = shards.iter().map(|(m, t)| (*m, t.len())).collect();
    let mut display = Display::new(
        DisplayMode::detect(),
        list.clone(),
        &per_shard,
        shard_count,
        args.slow_timeout,
    );
    if connected.is_some() {
        display = display.with_environments();
    }
    let env_note = match &connected {
        Some(c) => format!(", environments from {}", c.config_path),
        None => String::new(),
    };
    display.line(&format!(
        "  Starting {to_run} tests in {} shard{} of {shard_count} ({kind} partition), {test_threads} at once{env_note}, run {run_id}",
        shards.len(),
        if shards.len() == 1 { "" } else { "s" },
    ));
    let (backend, env_events) = match connected {
        Some(c) => (Some(c.backend as Arc<dyn Backend>), Some(c.events)),
        None => (None, None),
    };
    let input = RunInput {
        list: list.clone(),
        selection,
        shards,
        options,
        backend,
        env_events,
        env_ttl: args.env.env_ttl,
    };
    let result = if std::env::var_os(PANIC_HOOK).is_some() {
        runtime.block_on(run::run(input, &mut PanicOnReady(&mut display)))
    } else {
        runtime.block_on(run::run(input, &mut display))
    };
    display.finish();
    reaper.finish(!result.kept.is_empty());

    let rerun = rerun_prefix(&cargo, &args.filter);
    eprint!("{}", summary::render(&result, &list, &rerun, shard_count));
    for (shard, error) in &result.env_errors {
        let place = if *shard == 0 {
            String::new()
        } else {
            format!("shard {shard}: ")
        };
        let text = error.to_string();
        let already_named = text.starts_with(&format!("shard {shard}"));
        eprintln!("error: {}{text}", if already_named { "" } else { &place });
    }
    env::print_kept(&result.kept, &run_id);
    if let Some(path) = &args.junit {
        write_junit(path, &list, &result, &shards_here)?;
    }
    Ok(exit_code(&result))
}

fn no_tests(args: &TestArgs, list: &TestList) -> i32 {
    let what = if args.filter.filters.is_empty() && args.filter.skip.is_empty() {
        format!("no tests to run in {} test binaries", list.binaries.len())
    } else {
        format!(
            "no test matches the filters {:?} among {} tests",
            args.filter.filters,
            list.tests.len()
        )
    };
    match args.no_tests {
        NoTests::Pass => exit_codes::OK,
        NoTests::Warn => {
            eprintln!(
                "note: {what}; nothing was run (use `cargo ephem list` to see the test names)"
            );
            exit_codes::OK
        }
        NoTests::Fail => {
            eprintln!("error: {what} (--no-tests=fail)");
            exit_codes::NO_TESTS
        }
    }
}

fn default_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

fn write_junit(path: &Utf8Path, list: &TestList, result: &RunResult, shards: &[u32]) -> Result<()> {
    for &m in shards {
        let outcomes: Vec<_> = result.outcomes.iter().filter(|o| o.shard == m).collect();
        let report = junit::build_report(&format!("cargo-ephem shard {m}"), list, &outcomes);
        junit::write_report(&report, &junit::shard_report_path(path, m))?;
    }
    let all: Vec<_> = result.outcomes.iter().collect();
    junit::write_report(&junit::build_report("cargo-ephem", list, &all), path)?;
    eprintln!("    JUnit {path} (and one file per shard beside it)");
    Ok(())
}

fn rerun_prefix(cargo: &CargoOptions, filter: &FilterArgs) -> String {
    let mut words = vec!["cargo".to_owned(), "ephem".to_owned(), "test".to_owned()];
    words.extend(cargo.rerun_args().iter().map(|a| shell_quote(a)));
    if filter.ignored {
        words.push("--ignored".to_owned());
    } else if filter.include_ignored {
        words.push("--include-ignored".to_owned());
    }
    words.join(" ")
}

fn exit_code(result: &RunResult) -> i32 {
    if let Some(sig) = result.interrupted {
        return exit_codes::SIGNAL_BASE + sig;
    }
    if !result.env_errors.is_empty() {
        return exit_codes::ENVIRONMENT_FAILED;
    }
    if Counts::of(&result.outcomes).any_failed() {
        return exit_codes::TESTS_FAILED;
    }
    exit_codes::OK
}

/// Test hook: when set, the runner panics as soon as a shard's environment
/// is ready, so the end-to-end tests can prove that a panic leaves nothing
/// behind. There is no other way to make a correct runner panic on demand.
const PANIC_HOOK: &str = "CARGO_EPHEM_TEST_PANIC_ON_READY";

struct PanicOnReady<'a>(&'a mut Display);

impl ephem_core::run::RunEvents for PanicOnReady<'_> {
    fn env_event(&mut self, event: &ephem_fixtures::EnvEvent) {
        self.0.env_event(event)
    }
    fn shard_ready(&mut self, shard: u32, with_env: bool) {
        self.0.shard_ready(shard, with_env);
        if with_env {
            panic!("{PANIC_HOOK} is set: panicking on purpose");
        }
    }
    fn retrying(&mut self, test: usize, shard: u32, failed: &ephem_core::run::Attempt) {
        self.0.retrying(test, shard, failed)
    }
    fn finished(&mut self, outcome: &ephem_core::run::TestOutcome) {
        self.0.finished(outcome)
    }
    fn tick(&mut self, running: &[ephem_core::run::RunningTest]) {
        self.0.tick(running)
    }
    fn interrupted(&mut self, signal: i32, second: bool) {
        self.0.interrupted(signal, second)
    }
}
