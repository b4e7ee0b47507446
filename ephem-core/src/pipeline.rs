//! `cargo ephem test` as one pipeline a reader can follow in [`test`]:
//! check the inputs, reach the backend, plan (build, list, select, split),
//! run (reaper and sweep first), report. Also `list` and `junit merge`.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use camino::{Utf8Path, Utf8PathBuf};
use ephem_fixtures::Environment;

use crate::discover::{BuildControl, Workspace};
use crate::environments::{Connected, EnvSetup};
use crate::error::{exit_codes, EphemError, Result};
use crate::mask;
use crate::options::{ListFormat, ListOptions, NoTests, Sharding, TestOptions};
use crate::partition::Timings;
use crate::plan::TestPlan;
use crate::profile::{self, Profile};
use crate::report::command::HTML_IS_A_FOLDER;
use crate::report::display::{Display, DisplayMode};
use crate::report::html;
use crate::report::junit;
use crate::report::levels::OutputDisplay;
use crate::report::record::{self, RecordEnvironments, RunMeta, RunRecord, SourcedRecord};
use crate::report::summary::{self, shell_quote, Counts};
use crate::rerun::{self, Rerun};
use crate::run::{
    self, Capture, PanicPoint, PlannedTests, RunEnvironments, RunInput, RunOptions, RunResult,
    TestsSource,
};
use crate::scopes::ServiceScopes;
use crate::select;
use crate::signals::Signals;
use crate::teardown::{self, Reaper, RunEnd};
use crate::test_list::{IgnoredMode, Selection, Selector};

/// Runs `cargo ephem test`; returns the exit code.
pub fn test(options: &TestOptions) -> Result<i32> {
    // 1. Everything that can be checked before the build: a typo must not
    //    cost one.
    options.check()?;
    let timings = read_timings(&options.timings)?;
    if let Some(path) = &options.junit {
        junit::check_writable(path)?;
        record::check_writable(
            "--junit's run record",
            &record_file(path, options.sharding),
            "remove it or give --junit another name",
        )?;
    }
    if let Some(path) = &options.html {
        record::check_writable("--html", path, HTML_IS_A_FOLDER)?;
    }
    // The workspace (from an archive, the tests were built elsewhere:
    // unpack them now), the filtersets, the run a rerun repeats.
    let select::Prepared {
        workspace,
        archived,
        selector,
        rerun,
    } = select::prepare(
        &options.cargo,
        &options.filter,
        options.archive.as_ref(),
        options.rerun.as_ref(),
    )?;
    // The nextest profile: flags left unset come from it; its overrides'
    // filters are checked now, before the build.
    let cli = options;
    let profile = Profile::load(
        &workspace.root,
        &workspace.target_dir,
        options.profile.as_deref(),
    )?;
    if let Some(note) = profile.unapplied_note() {
        eprintln!("{note}");
    }
    let graph = profile_graph(&profile, &workspace, options)?;
    let filled = profile::apply::fill_in(options, &profile);
    let options = &filled;
    let env_options = match &rerun {
        Some(rerun) => rerun.environments(&options.env, &workspace.root),
        None => options.env.clone(),
    };
    let mut setup = EnvSetup::load(&workspace.root, &env_options)?;
    let record_env =
        rerun::recorded_environments(setup.as_ref().map(|s| s.path.as_path()), &workspace.root);
    let shard_test_threads = setup.as_ref().and_then(|s| s.config.shards.test_threads);
    let reuse_ttl = match setup.as_mut() {
        Some(setup) if options.reuse => Some(setup.enable_reuse(&workspace.root)?),
        _ => None,
    };
    let scopes = service_scopes(setup.as_ref(), &workspace, options)?;
    let runtime = crate::runtime()?;

    // 2. Reach the backend before building: a dead daemon costs seconds.
    //    A configuration without services needs none.
    let connected = match setup.filter(EnvSetup::has_services) {
        Some(setup) => Some(runtime.block_on(setup.connect())?),
        None => None,
    };

    // 3. The reaper and the sweep of abandoned runs, before this run starts
    //    anything of its own.
    let run_id = uuid::Uuid::new_v4().to_string();
    let reaper = start_reaper(options, connected.as_ref(), &workspace, &run_id)?;
    if let Some(c) = &connected {
        runtime.block_on(teardown::sweep_at_start(c.cleanup.as_ref(), &run_id))?;
    }

    // 4. Plan (build, list, select, split) on a thread of its own while
    //    the run starts: the shards' environments are provisioned during the
    //    build, so the first test waits for the longer of the two, not both.
    let control = BuildControl::default();
    let (plan_tx, plan_rx) = tokio::sync::oneshot::channel();
    // Handlers first: from here on Ctrl-C and SIGTERM stop the run (and the
    // build, whose process group they no longer reach) instead of killing it.
    let signals = runtime.block_on(async { Signals::new() });
    let planning = {
        let (options, control) = (options.clone(), control.clone());
        let env_note = connected
            .as_ref()
            .map(|c| format!(", {} environments from {}", c.kind, c.config_path))
            .unwrap_or_default();
        let run_id = run_id.clone();
        let target_dir = workspace.target_dir.clone();
        let rerun = rerun.clone();
        let (cli, profile) = (cli.clone(), profile.clone());
        runtime.spawn_blocking(move || {
            let list = match archived {
                Some(list) => list,
                None => workspace.discover_with(&options.cargo, &control, &|b| {
                    selector.filtersets.set_aside(b)
                })?,
            };
            let plan = TestPlan::new(Arc::new(list), &selector, options.sharding, &timings);
            let mut headline = headline(&plan, &options, &env_note, &run_id);
            if let Some(rerun) = &rerun {
                headline = format!(
                    "{}\n{headline}",
                    rerun.announce(&plan.list, &plan.selection)
                );
            }
            let mut planned = plan.planned_tests(headline);
            if profile.file.is_some() {
                let threads = test_threads(&options);
                let knobs =
                    profile::apply::knobs(&profile, graph.as_ref(), &plan.list, &cli, threads)?;
                planned.knobs = Some(Arc::new(knobs));
            }
            let _ = plan_tx.send(Some(planned));
            Ok::<_, EphemError>((plan, selector, target_dir))
        })
    };

    // 5. Run: environments first, tests once planned, teardown as shards end.
    let mut input = run_input(options, &run_id, shard_test_threads, plan_rx, control);
    input.options.reuse_ttl = reuse_ttl;
    input.options.test_groups = profile::apply::group_limits(&profile);
    input.options.grace = profile.slow_timeout.grace_period;
    input.environments = connected.map(|c| RunEnvironments {
        backend: c.backend,
        cleanup: c.cleanup,
        events: c.events,
        scopes,
    });
    let mut display = Display::new(
        DisplayMode::detect(),
        &options.sharding.shards_here(),
        options.sharding.count(),
        slow_after(options),
    )
    .with_reporting(options.reporting);
    if options.reporting.no_capture && options.test_threads.is_some_and(|j| j > 1) {
        display.line("      NOTE --no-capture runs one test at a time: --test-threads is ignored");
    }
    if input.environments.is_some() {
        display = display.with_environments();
        let shards = input.shards.len();
        let held = input
            .environments
            .as_ref()
            .and_then(|e| e.scopes.as_ref())
            .is_some_and(|s| s.all_scoped());
        display.line(&if held {
            format!(
                "  Preparing the environments of {shards} shard{} while the tests build (started for the shards whose tests match a service), run {run_id}",
                if shards == 1 { "" } else { "s" }
            )
        } else {
            format!(
                "  Starting the environments of {shards} shard{} while the tests build, run {run_id}",
                if shards == 1 { "" } else { "s" }
            )
        });
    }
    let result = runtime.block_on(run::run_with_signals(input, &mut display, signals));
    display.finish();
    reaper.finish(if result.internal_error.is_some() {
        RunEnd::Reap
    } else if !result.kept.is_empty() || result.kept_for_reuse.is_some() {
        RunEnd::Kept
    } else {
        RunEnd::Done
    });
    let (plan, selector, target_dir) = match runtime.block_on(planning) {
        Ok(planned) => planned?,
        Err(e) => {
            return Err(EphemError::Internal(format!(
                "the build and listing task failed: {e}"
            )))
        }
    };

    // 6. Report, and leave the run's record for `--rerun-failed`.
    let done = Done {
        plan: &plan,
        selector: &selector,
        rerun: rerun.as_ref(),
        record_env,
        target_dir: &target_dir,
        profile_junit: profile.junit_path.as_deref(),
    };
    report(&done, options, &result, &run_id)
}

/// What the report of a finished run needs besides its result.
struct Done<'a> {
    plan: &'a TestPlan,
    selector: &'a Selector,
    rerun: Option<&'a Rerun>,
    record_env: RecordEnvironments,
    target_dir: &'a Utf8Path,
    /// The profile's `junit.path`, under its store directory.
    profile_junit: Option<&'a Utf8Path>,
}

/// The services' `tests` scopes, compiled against the workspace's packages
/// (read again with them if `-E` did not need them); `None` when no
/// service has one. A bad expression costs no build (exit 2).
fn service_scopes(
    setup: Option<&EnvSetup>,
    workspace: &Workspace,
    options: &TestOptions,
) -> Result<Option<Arc<ServiceScopes>>> {
    let Some(setup) = setup.filter(|s| ServiceScopes::needed(&s.config)) else {
        return Ok(None);
    };
    let json = match &workspace.graph_json {
        Some(json) => json.clone(),
        None if options.archive.is_none() => Workspace::load_with_graph(&options.cargo)?
            .graph_json
            .ok_or_else(|| EphemError::Internal("cargo metadata gave no package graph".into()))?,
        None => {
            return Err(EphemError::Usage(format!(
                "{}: a service's tests = ... needs the package graph, which this archive lacks (made by an older cargo-ephem); make it again with this version",
                setup.path
            )))
        }
    };
    let graph = crate::filterset::package_graph(&json)?;
    let scopes = ServiceScopes::parse(&setup.config, &setup.path, &graph)?;
    Ok(scopes.any_scoped().then(|| Arc::new(scopes)))
}

fn read_timings(paths: &[Utf8PathBuf]) -> Result<Timings> {
    if paths.is_empty() {
        Ok(Timings::default())
    } else {
        junit::read_timings(paths)
    }
}

/// The reaper of this run: it removes the run's environments and kills its
/// tests should the runner die.
fn start_reaper(
    options: &TestOptions,
    connected: Option<&Connected>,
    workspace: &Workspace,
    run_id: &str,
) -> Result<Reaper> {
    Reaper::spawn(
        &options.reaper,
        run_id,
        connected.map(|c| c.kind),
        connected.map(|c| c.config_path.as_path()),
        &teardown::reaper::log_path(&workspace.target_dir, run_id),
    )
    .map_err(|e| EphemError::Internal(format!("cannot start the reaper process: {e}")))
}

/// What the dispatcher runs: this invocation's shards with the options'
/// knobs; the tests come through `plan_rx` once built; no environments yet.
fn run_input(
    options: &TestOptions,
    run_id: &str,
    shard_test_threads: Option<usize>,
    plan_rx: tokio::sync::oneshot::Receiver<Option<PlannedTests>>,
    control: BuildControl,
) -> RunInput {
    RunInput {
        shards: options.sharding.shards_here(),
        tests: TestsSource::Coming(plan_rx),
        build: Some(control),
        options: RunOptions {
            run_id: run_id.to_owned(),
            test_threads: test_threads(options),
            retries: options.retries.unwrap_or(0),
            test_timeout: options.test_timeout,
            grace: Duration::from_secs(10),
            slow_after: slow_after(options),
            fail_fast: profile::apply::max_fail(options).is_some(),
            max_fail: profile::apply::max_fail(options).unwrap_or(1),
            test_groups: Default::default(),
            shard_count: options.sharding.count(),
            keep_env: options.keep_env,
            reuse_ttl: None,
            shard_test_threads,
            capture: capture(options),
            panic_at: PanicPoint::from_env(),
        },
        environments: None,
        env_ttl: options.env.env_ttl,
    }
}

/// Where tests' output goes: the terminal with `--no-capture`; else
/// captured, a passing test's too when `--success-output` shows it.
fn capture(options: &TestOptions) -> Capture {
    let reporting = options.reporting.effective();
    if reporting.no_capture {
        Capture::None
    } else if reporting.success_output != OutputDisplay::Never {
        Capture::All
    } else {
        Capture::Failures
    }
}

fn slow_after(options: &TestOptions) -> Duration {
    options.slow_timeout.unwrap_or(Duration::from_secs(60))
}

/// The package graph a profile's override filters are compiled against
/// (read again when `-E` did not need it), with the filters checked.
fn profile_graph(
    profile: &Profile,
    workspace: &Workspace,
    options: &TestOptions,
) -> Result<Option<guppy::graph::PackageGraph>> {
    if !profile.needs_graph() {
        return Ok(None);
    }
    let json = match &workspace.graph_json {
        Some(json) => json.clone(),
        None if options.archive.is_none() => Workspace::load_with_graph(&options.cargo)?
            .graph_json
            .ok_or_else(|| EphemError::Internal("cargo metadata gave no package graph".into()))?,
        None => {
            return Err(EphemError::Usage(
                "the profile's override filters need the package graph, which this archive \
                 does not carry (it was made by an older cargo-ephem); make it again"
                    .to_owned(),
            ))
        }
    };
    let graph = crate::filterset::package_graph(&json)?;
    profile.compile(Some(&graph))?;
    Ok(Some(graph))
}

fn test_threads(options: &TestOptions) -> usize {
    if options.reporting.no_capture {
        // The tests share the terminal (the dispatcher enforces it too).
        return 1;
    }
    options.test_threads.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    })
}

/// The line that says what starts, once the plan is known.
fn headline(plan: &TestPlan, options: &TestOptions, env_note: &str, run_id: &str) -> String {
    let here = plan.shards.len();
    format!(
        "  Starting {} tests in {here} shard{} of {} ({} partition), {} at once{env_note}, run {run_id}",
        plan.to_run_here(),
        if here == 1 { "" } else { "s" },
        plan.shard_count,
        plan.kind,
        test_threads(options),
    )
}

/// The end of a run: JUnit, run record and HTML page, summary, errors,
/// kept environments, exit code.
fn report(done: &Done<'_>, options: &TestOptions, result: &RunResult, run_id: &str) -> Result<i32> {
    let plan = done.plan;
    if let Some(path) = &options.junit {
        write_junit(path, plan, result)?;
    }
    if let Some(path) = done.profile_junit {
        let all: Vec<_> = result.outcomes.iter().collect();
        junit::write_report(&junit::build_report("cargo-ephem", &plan.list, &all), path)?;
        eprintln!("    JUnit {path} (profile)");
    }
    // After JUnit, so that failing to write these never loses it; their
    // error comes once the summary has been shown.
    let pictured = write_picture(done, options, result, run_id);
    let code = conclude(done, options, result, run_id);
    pictured.map(|()| code)
}

/// The run record: always where `--rerun-failed` finds it, beside the JUnit
/// report (`--junit`), and drawn as the HTML page (`--html`); each is
/// tried even if another fails.
fn write_picture(
    done: &Done<'_>,
    options: &TestOptions,
    result: &RunResult,
    run_id: &str,
) -> Result<()> {
    let plan = done.plan;
    let meta = RunMeta {
        run_id: run_id.to_owned(),
        group: record::group_key(run_id),
        shard_count: plan.shard_count,
        partition: plan.kind.to_string(),
    };
    let mut record = RunRecord::from_run(result, &plan.list, meta);
    record.environments = Some(done.record_env.clone());
    if let Some(rerun) = done.rerun {
        record.outstanding = rerun.outstanding(&plan.list, &plan.selection);
    }
    rerun::record_latest(&record, done.target_dir);
    let mut source = "this run".to_owned();
    let recorded = options.junit.as_ref().map_or(Ok(()), |junit| {
        let path = record_file(junit, options.sharding);
        source = path.to_string();
        record::write_record(&record, &path)?;
        eprintln!("   Record {path}");
        Ok(())
    });
    let drawn = options.html.as_ref().map_or(Ok(()), |path| {
        let groups = record::group_records(vec![SourcedRecord { source, record }])?;
        html::write_html(&groups, path)?;
        eprintln!("     HTML {path}");
        Ok(())
    });
    recorded.and(drawn)
}

/// `<stem>-shard-<M>.record.json` for a job that runs shard M of several
/// (`--partition`), so a matrix's records do not collide; else
/// `<stem>.record.json`.
fn record_file(junit: &Utf8Path, sharding: Sharding) -> Utf8PathBuf {
    let only = match sharding {
        Sharding::Partition(p) if p.count > 1 => Some(p.shard),
        _ => None,
    };
    record::record_path(junit, only)
}

/// The summary, errors and kept environments; the exit code.
fn conclude(done: &Done<'_>, options: &TestOptions, result: &RunResult, run_id: &str) -> i32 {
    let plan = done.plan;
    if plan.to_run_total == 0 {
        return no_tests(options, plan, done.rerun.is_some());
    }
    if plan.to_run_here() == 0 {
        let skipped = Counts::of(&result.outcomes).skipped;
        eprintln!(
            "note: shard {} of {} is empty: the other shards hold all {} tests to run{}",
            plan.shards_here().first().copied().unwrap_or(1),
            plan.shard_count,
            plan.to_run_total,
            if skipped > 0 {
                format!("; its ignored tests ({skipped}) are reported as skipped")
            } else {
                String::new()
            }
        );
        return exit_codes::OK;
    }
    let prefix = rerun_prefix(options, done.selector);
    let record = options
        .junit
        .as_ref()
        .map(|junit| record_file(junit, options.sharding).to_string());
    let hint = summary::RerunHint {
        prefix: &prefix,
        record: record.as_deref(),
    };
    eprint!(
        "{}",
        mask::mask(&summary::render(
            result,
            &plan.list,
            hint,
            plan.shard_count,
            &summary::Shown {
                reporting: options.reporting,
                slow_after: slow_after(options),
            },
        ))
    );
    if let Some(rerun) = done.rerun {
        let left = rerun.outstanding(&plan.list, &plan.selection).len();
        if left > 0 {
            eprintln!(
                "note: {left} test{} of the earlier run {} still to rerun (left out by this run's \
                 filters); `--rerun-failed` runs {} next",
                if left == 1 { "" } else { "s" },
                if left == 1 { "is" } else { "are" },
                if left == 1 { "it" } else { "them" },
            );
        }
    }
    for (shard, error) in &result.env_errors {
        let text = mask::error_text(&error.to_string());
        let named = *shard == 0 || text.starts_with(&format!("shard {shard}"));
        let place = if named {
            String::new()
        } else {
            format!("shard {shard}: ")
        };
        eprintln!("error: {place}{text}");
    }
    if let Some(error) = &result.internal_error {
        eprintln!(
            "error: internal error: {} (please report this bug); the run was stopped and its \
             environments removed",
            mask::error_text(error)
        );
    }
    print_kept(&result.kept, run_id, options);
    if let Some((count, ttl)) = result.kept_for_reuse {
        eprintln!(
            "Kept {count} environment{} for the next `cargo ephem test --reuse` (removed after {} unused; `cargo ephem down` removes them now)",
            if count == 1 { "" } else { "s" },
            humantime::format_duration(ttl)
        );
    }
    exit_code(result)
}

fn write_junit(path: &Utf8Path, plan: &TestPlan, result: &RunResult) -> Result<()> {
    for m in plan.shards_here() {
        let outcomes: Vec<_> = result.outcomes.iter().filter(|o| o.shard == m).collect();
        let report = junit::build_report(&format!("cargo-ephem shard {m}"), &plan.list, &outcomes);
        junit::write_report(&report, &junit::shard_report_path(path, m))?;
    }
    let all: Vec<_> = result.outcomes.iter().collect();
    junit::write_report(&junit::build_report("cargo-ephem", &plan.list, &all), path)?;
    eprintln!("    JUnit {path} (and one file per shard beside it)");
    Ok(())
}

/// What an empty selection means: `--no-tests` judges the whole plan. A
/// rerun with nothing left to run has converged: a note and exit 0, as in
/// nextest (unless `--no-tests fail`).
fn no_tests(options: &TestOptions, plan: &TestPlan, rerun: bool) -> i32 {
    let filter = &options.filter;
    let what = if rerun {
        "nothing to rerun: the earlier run left no failed or unrun test that this selection \
         holds"
            .to_owned()
    } else if filter.patterns.is_empty() && filter.skip.is_empty() && filter.filtersets.is_empty() {
        format!(
            "no tests to run in {} test binaries",
            plan.list.binaries.len()
        )
    } else {
        let exprs = filter
            .filtersets
            .iter()
            .map(|e| format!(" -E {e:?}"))
            .collect::<String>();
        format!(
            "no test matches the filters {:?}{exprs} among {} tests",
            filter.patterns,
            plan.list.tests.len()
        )
    };
    match options.no_tests {
        NoTests::Pass => exit_codes::OK,
        NoTests::Warn if rerun => {
            eprintln!("note: {what}");
            exit_codes::OK
        }
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

/// How to reach kept environments and how to remove them (`gc` with this
/// run's workspace and backend).
fn print_kept(kept: &[(u32, Environment)], run_id: &str, options: &TestOptions) {
    let mut gc_flags = Vec::new();
    if let Some(manifest) = &options.cargo.manifest_path {
        gc_flags.extend(["--manifest-path".to_owned(), shell_quote(manifest.as_str())]);
    }
    if let Some(backend) = options.env.backend {
        gc_flags.extend(["--backend".to_owned(), backend.name().to_owned()]);
    }
    crate::hold::print_kept(kept, run_id, &gc_flags, options.env.env_ttl);
}

/// The command line that reruns this selection; failed tests are appended.
fn rerun_prefix(options: &TestOptions, selector: &Selector) -> String {
    let mut words = vec!["cargo".to_owned(), "ephem".to_owned(), "test".to_owned()];
    words.extend(options.cargo.rerun_args().iter().map(|a| shell_quote(a)));
    if let Some(input) = &options.archive {
        words.extend([
            "--archive-file".to_owned(),
            shell_quote(input.file.as_str()),
        ]);
        if let Some(dir) = &input.workspace_remap {
            words.extend(["--workspace-remap".to_owned(), shell_quote(dir.as_str())]);
        }
    }
    if let Some(profile) = &options.profile {
        words.extend(["--profile".to_owned(), shell_quote(profile)]);
    }
    match options.filter.ignored {
        IgnoredMode::Only => words.push("--ignored".to_owned()),
        IgnoredMode::Include => words.push("--include-ignored".to_owned()),
        IgnoredMode::Default => {}
    }
    for expr in selector.filtersets.inputs() {
        words.extend(["-E".to_owned(), shell_quote(expr)]);
    }
    words.join(" ")
}

fn exit_code(result: &RunResult) -> i32 {
    if result.internal_error.is_some() {
        return exit_codes::INTERNAL;
    }
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

/// Runs `cargo ephem list`; returns the exit code.
pub fn list(options: &ListOptions) -> Result<i32> {
    let prepared = select::prepare(
        &options.cargo,
        &options.filter,
        options.archive.as_ref(),
        None,
    )?;
    let selector = &prepared.selector;
    let list =
        match prepared.archived {
            Some(list) => list,
            None => prepared.workspace.discover_with(
                &options.cargo,
                &BuildControl::default(),
                &|b| selector.filtersets.set_aside(b),
            )?,
        };
    let decisions = selector.decide(&list);
    let selection: Vec<Selection> = decisions.iter().map(|d| d.selection).collect();
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    match options.format {
        ListFormat::Json => {
            let summary = list.to_summary(&decisions);
            serde_json::to_writer_pretty(&mut out, &summary)
                .map_err(|e| EphemError::Internal(format!("writing JSON: {e}")))?;
            let _ = writeln!(out);
        }
        ListFormat::Human => {
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

/// Runs `cargo ephem junit merge`; returns the exit code.
pub fn merge_junit(output: &Utf8Path, inputs: &[Utf8PathBuf]) -> Result<i32> {
    let (report, stats) = junit::merge_reports("cargo-ephem", inputs)?;
    junit::write_report(&report, output)?;
    let dups = if stats.duplicates > 0 {
        format!(
            " ({} duplicate test cases dropped: the same test was in two inputs)",
            stats.duplicates
        )
    } else {
        String::new()
    };
    eprintln!(
        "merged {} files: {} suites, {} test cases into {output}{dups}",
        stats.files, stats.suites, stats.tests
    );
    Ok(exit_codes::OK)
}
