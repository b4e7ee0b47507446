//! Wiring of each subcommand to the library crates.

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ephem_core::discover::{self, CargoOptions};
use ephem_core::partition::{PartitionItem, PartitionKind, ShardPlan, Timings};
use ephem_core::report::display::{Display, DisplayMode};
use ephem_core::report::junit;
use ephem_core::report::summary::{self, shell_quote, Counts};
use ephem_core::run::{self, RunInput, RunOptions, RunResult};
use ephem_core::test_list::{IgnoredMode, Selection, TestFilter, TestList};
use ephem_core::{exit_codes, EphemError, Result};

use crate::cli::{
    App, Command, FilterArgs, JunitCommand, ListArgs, MessageFormat, NoTests, TestArgs,
};

/// Runs a parsed command; returns the exit code.
pub fn run(app: App) -> Result<i32> {
    match app.command {
        Command::Test(args) => test(args),
        Command::List(args) => list(args),
        Command::Junit(JunitCommand::Merge { output, inputs }) => {
            let (report, stats) = junit::merge_reports("cargo-ephem", &inputs)?;
            junit::write_report(&report, &output)?;
            eprintln!(
                "merged {} files: {} suites, {} test cases into {output}{}",
                stats.files,
                stats.suites,
                stats.tests,
                if stats.duplicates > 0 {
                    format!(
                        " ({} duplicate test cases dropped: the same test was in two inputs)",
                        stats.duplicates
                    )
                } else {
                    String::new()
                }
            );
            Ok(exit_codes::OK)
        }
    }
}

fn filter_of(args: &FilterArgs) -> TestFilter {
    TestFilter {
        patterns: args.filters.clone(),
        exact: args.exact,
        skip: args.skip.clone(),
        ignored: if args.ignored {
            IgnoredMode::Only
        } else if args.include_ignored {
            IgnoredMode::Include
        } else {
            IgnoredMode::Default
        },
    }
}

fn list(args: ListArgs) -> Result<i32> {
    let list = discover::discover(&args.cargo.to_options())?;
    let selection = list.select(&filter_of(&args.filter));
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    match args.message_format {
        MessageFormat::Json => {
            let summary = list.to_summary(&selection);
            serde_json::to_writer_pretty(&mut out, &summary)
                .map_err(|e| EphemError::Internal(format!("writing JSON: {e}")))?;
            let _ = writeln!(out);
        }
        MessageFormat::Human => {
            for (idx, binary) in list.binaries.iter().enumerate() {
                let tests: Vec<_> = list
                    .tests
                    .iter()
                    .zip(&selection)
                    .filter(|(t, s)| t.binary == idx && **s != Selection::FilteredOut)
                    .collect();
                if tests.is_empty() {
                    continue;
                }
                let _ = writeln!(out, "{}:", binary.binary_id);
                for (t, s) in tests {
                    let note = if *s == Selection::SkipIgnored {
                        " (ignored)"
                    } else {
                        ""
                    };
                    let _ = writeln!(out, "    {}{note}", t.name);
                }
            }
        }
    }
    Ok(exit_codes::OK)
}

fn test(args: TestArgs) -> Result<i32> {
    // Check everything that can be checked before the build, so a typo does
    // not cost a build.
    let partition_kind = args.partition.map(|p| p.kind);
    if partition_kind == Some(PartitionKind::Duration) && args.timings.is_empty() {
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
    let list = Arc::new(discover::discover(&cargo)?);
    let filter = filter_of(&args.filter);
    let selection = list.select(&filter);

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

    let to_run: usize = shards
        .iter()
        .flat_map(|(_, t)| t)
        .filter(|&&t| selection[t] == Selection::Run)
        .count();
    if to_run == 0 {
        let what = if args.filter.filters.is_empty() && args.filter.skip.is_empty() {
            format!("no tests to run in {} test binaries", list.binaries.len())
        } else {
            format!(
                "no test matches the filters {:?} among {} tests",
                args.filter.filters,
                list.tests.len()
            )
        };
        return Ok(match args.no_tests {
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
        });
    }

    let run_id = uuid::Uuid::new_v4().to_string();
    let options = RunOptions {
        run_id: run_id.clone(),
        test_threads,
        retries: args.retries,
        test_timeout: args.test_timeout,
        grace: Duration::from_secs(10),
        slow_after: args.slow_timeout,
        fail_fast: !args.no_fail_fast,
        shard_count,
        keep_env: false,
    };
    let mode = DisplayMode::detect();
    let counts_per_shard: Vec<(u32, usize)> = shards.iter().map(|(m, t)| (*m, t.len())).collect();
    let mut display = Display::new(
        mode,
        list.clone(),
        &counts_per_shard,
        shard_count,
        args.slow_timeout,
    );
    display.line(&format!(
        "  Starting {to_run} tests in {} shard{} of {shard_count} ({kind} partition), {test_threads} at once, run {run_id}",
        shards.len(),
        if shards.len() == 1 { "" } else { "s" },
    ));
    let input = RunInput {
        list: list.clone(),
        selection,
        shards,
        options,
        backend: None,
        env_events: None,
        expires_at: SystemTime::now() + Duration::from_secs(30 * 60),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| EphemError::Internal(format!("starting the async runtime: {e}")))?;
    let result = runtime.block_on(run::run(input, &mut display));
    display.finish();

    let rerun = rerun_prefix(&cargo, &args.filter);
    eprint!("{}", summary::render(&result, &list, &rerun, shard_count));
    if let Some(path) = &args.junit {
        write_junit(path, &list, &result, &shards_here)?;
    }
    Ok(exit_code(&result))
}

fn default_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

fn write_junit(
    path: &camino::Utf8Path,
    list: &TestList,
    result: &RunResult,
    shards: &[u32],
) -> Result<()> {
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
