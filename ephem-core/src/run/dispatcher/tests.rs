//! The dispatcher's tests, with a backend that counts what it was asked.

use std::sync::atomic::{AtomicUsize, Ordering};

use ephem_fixtures::{RunResource, ShardContext};

use super::*;
use crate::run::TestKnobs;
use crate::test_list::TestBinary;

/// A backend whose shards are ready at once; it counts teardowns and
/// can panic where a test asks it to. Not a stand-in for Docker: these
/// tests are about the dispatcher's bookkeeping, whatever the backend.
#[derive(Default)]
struct CountingBackend {
    provisions: AtomicUsize,
    teardowns: AtomicUsize,
    panic_in_provision: bool,
    panic_in_teardown: bool,
    /// This shard's provisioning fails (an environment error).
    fail_shard: Option<u32>,
}

#[async_trait::async_trait]
impl Backend for CountingBackend {
    fn name(&self) -> &str {
        "counting"
    }
    fn address(&self) -> &str {
        "memory"
    }
    async fn prepare(&self, _: &RunContext) -> Result<(), EnvError> {
        Ok(())
    }
    async fn provision(&self, shard: &ShardContext) -> Result<Environment, EnvError> {
        assert!(!self.panic_in_provision, "provision panics on purpose");
        self.provisions.fetch_add(1, Ordering::SeqCst);
        if self.fail_shard == Some(shard.shard) {
            return Err(EnvError::Other("not ready on purpose".into()));
        }
        Ok(Environment::default())
    }
    async fn teardown(&self, _: &ShardContext) -> Result<(), EnvError> {
        self.teardowns.fetch_add(1, Ordering::SeqCst);
        assert!(!self.panic_in_teardown, "teardown panics on purpose");
        Ok(())
    }
    fn cleanup(&self) -> Arc<dyn Cleanup> {
        Arc::new(NoCleanup)
    }
}

struct NoCleanup;

#[async_trait::async_trait]
impl Cleanup for NoCleanup {
    fn backend(&self) -> &str {
        "counting"
    }
    fn address(&self) -> &str {
        "memory"
    }
    async fn list(&self) -> Result<Vec<RunResource>, EnvError> {
        Ok(Vec::new())
    }
    async fn remove(&self, _: &[RunResource]) -> Vec<ephem_fixtures::cleanup::Removal> {
        Vec::new()
    }
    async fn remove_run(&self, _: &str) -> Result<usize, EnvError> {
        Ok(0)
    }
    async fn renew(&self, _: &str, _: SystemTime, _: bool) -> Result<(), EnvError> {
        Ok(())
    }
    async fn end_run(&self, _: &str) -> Result<(), EnvError> {
        Ok(())
    }
}

struct Silent;

impl RunEvents for Silent {
    fn env_event(&mut self, _: &EnvEvent) {}
    fn shard_ready(&mut self, _: u32, _: bool) {}
    fn retrying(&mut self, _: TestIdx, _: u32, _: &Attempt) {}
    fn finished(&mut self, _: &TestOutcome) {}
    fn tick(&mut self, _: &[RunningTest]) {}
    fn interrupted(&mut self, _: i32, _: bool) {}
}

/// Keeps the warnings the run reports.
#[derive(Default)]
struct Warnings(Vec<String>);

impl RunEvents for Warnings {
    fn env_event(&mut self, event: &EnvEvent) {
        if let EnvEvent::Warning { message, .. } = event {
            self.0.push(message.clone());
        }
    }
    fn shard_ready(&mut self, _: u32, _: bool) {}
    fn retrying(&mut self, _: TestIdx, _: u32, _: &Attempt) {}
    fn finished(&mut self, _: &TestOutcome) {}
    fn tick(&mut self, _: &[RunningTest]) {}
    fn interrupted(&mut self, _: i32, _: bool) {}
}

#[tokio::test]
async fn a_failing_renewal_is_warned_about_once_per_streak() {
    let backend = Arc::new(CountingBackend::default());
    let mut warnings = Warnings::default();
    {
        let (mut d, _events) = Dispatcher::new(input(backend, 1), &mut warnings);
        d.handle(Msg::Renewed(Some("forbids patch on namespaces".into())));
        d.handle(Msg::Renewed(Some("forbids patch on namespaces".into())));
        d.handle(Msg::Renewed(None));
        d.handle(Msg::Renewed(Some("no answer within 30s".into())));
    }
    assert_eq!(warnings.0.len(), 2, "{:?}", warnings.0);
    assert!(
        warnings.0[0]
            .starts_with("could not push the run's expiry forward (forbids patch on namespaces)")
            && warnings.0[0].contains("--env-ttl"),
        "{}",
        warnings.0[0]
    );
    assert!(warnings.0[1].contains("no answer within 30s"));
}

/// Two tests of a "binary" that is `/bin/true`: every attempt passes.
fn input(backend: Arc<CountingBackend>, shards: u32) -> RunInput {
    let binary = TestBinary {
        binary_id: "pkg".into(),
        binary_name: "true".into(),
        package_id: "pkg".into(),
        package_name: "pkg".into(),
        kind: "lib".into(),
        path: "/bin/true".into(),
        cwd: "/".into(),
        env: Arc::new(Vec::new()),
    };
    let list = TestList::new(
        vec![(binary, vec![("a".into(), false), ("b".into(), false)])],
        "/".into(),
    );
    let (_tx, events) = mpsc::unbounded_channel();
    RunInput {
        shards: (1..=shards).collect(),
        tests: TestsSource::Known(PlannedTests {
            list: Arc::new(list),
            selection: Arc::new(vec![Selection::Run, Selection::Run]),
            shards: (1..=shards)
                .map(|m| (m, vec![(m as usize - 1) % 2]))
                .collect(),
            headline: String::new(),
            knobs: None,
        }),
        build: None,
        options: RunOptions {
            run_id: "unit".into(),
            test_threads: 2,
            retries: 0,
            test_timeout: None,
            grace: Duration::from_secs(1),
            slow_after: Duration::from_secs(60),
            fail_fast: true,
            max_fail: 1,
            test_groups: Default::default(),
            shard_count: shards,
            keep_env: false,
            reuse_ttl: None,
            shard_test_threads: None,
            capture: Default::default(),
            panic_at: None,
        },
        environments: Some(RunEnvironments {
            cleanup: backend.cleanup(),
            backend,
            events,
            scopes: None,
        }),
        env_ttl: Duration::from_secs(60),
    }
}

#[tokio::test]
async fn a_provisioning_result_after_a_stop_does_not_revive_the_shard() {
    let backend = Arc::new(CountingBackend::default());
    let mut silent = Silent;
    let (mut d, _events) = Dispatcher::new(input(backend.clone(), 1), &mut silent);
    // The run was stopped while shard 1 provisioned, and its teardown
    // was requested; then the provisioning's success arrives.
    d.prepare_task = None;
    d.shards[0].phase = EnvPhase::Provisioning;
    d.stop("not run: stopped");
    d.schedule();
    assert_eq!(d.shards[0].phase, EnvPhase::Released);
    assert_eq!(d.teardowns_pending, 1);
    d.handle(Msg::Provisioned(1, Ok(Environment::default())));
    d.schedule();
    assert_eq!(d.shards[0].phase, EnvPhase::Released, "revived");
    assert_eq!(d.teardowns_pending, 1, "a second teardown was requested");
    assert!(d.kept.is_empty());
}

/// Runs two shards on `backend`, failing the test if the run does not
/// end on its own (the bug: waiting forever for a panicked task).
async fn run_two_shards(backend: &Arc<CountingBackend>) -> RunResult {
    tokio::time::timeout(
        Duration::from_secs(30),
        run(input(backend.clone(), 2), &mut Silent),
    )
    .await
    .expect("the run ends instead of waiting for the panicked task")
}

#[tokio::test]
async fn a_panicking_provision_ends_the_run_as_an_internal_error() {
    let backend = Arc::new(CountingBackend {
        panic_in_provision: true,
        ..Default::default()
    });
    let result = run_two_shards(&backend).await;
    let error = result.internal_error.expect("an internal error");
    assert!(error.contains("provisioning of shard"), "{error}");
    assert!(error.contains("provision panics on purpose"), "{error}");
    assert!(result
        .outcomes
        .iter()
        .all(|o| matches!(o.verdict, Verdict::Skipped(_))));
    // Both shards were torn down, whichever of them panicked first.
    assert_eq!(backend.teardowns.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_panicking_teardown_ends_the_run_as_an_internal_error() {
    let backend = Arc::new(CountingBackend {
        panic_in_teardown: true,
        ..Default::default()
    });
    let result = run_two_shards(&backend).await;
    assert!(result
        .internal_error
        .is_some_and(|e| e.contains("teardown of shard")));
    assert_eq!(backend.teardowns.load(Ordering::SeqCst), 2);
    // A test that had not ended when the first teardown panicked is
    // cancelled, never failed.
    for o in &result.outcomes {
        match &o.verdict {
            Verdict::Passed => {}
            Verdict::Skipped(why) => assert!(why.contains("internal error"), "{why}"),
            other => panic!("test {} ended {other:?}", o.test),
        }
    }
}

#[tokio::test]
async fn a_shard_runs_at_most_its_configured_tests_at_once() {
    let backend = Arc::new(CountingBackend::default());
    let mut silent = Silent;
    let mut inp = input(backend, 1);
    if let TestsSource::Known(tests) = &mut inp.tests {
        tests.shards = vec![(1, vec![0, 1])];
    }
    inp.options.test_threads = 8;
    let (d, _) = Dispatcher::new(inp, &mut silent);
    assert_eq!(d.per_shard_limit(), 8);
    let mut inp = input(Arc::new(CountingBackend::default()), 1);
    inp.options.test_threads = 8;
    inp.options.shard_test_threads = Some(1);
    let mut silent = Silent;
    let (d, _) = Dispatcher::new(inp, &mut silent);
    assert_eq!(d.per_shard_limit(), 1);
    // -j still caps it.
    let mut inp = input(Arc::new(CountingBackend::default()), 1);
    inp.options.test_threads = 2;
    inp.options.shard_test_threads = Some(16);
    let mut silent = Silent;
    let (d, _) = Dispatcher::new(inp, &mut silent);
    assert_eq!(d.per_shard_limit(), 2);
}

#[tokio::test]
async fn every_shard_records_when_its_environment_was_provisioned_and_removed() {
    let backend = Arc::new(CountingBackend::default());
    let result = run_two_shards(&backend).await;
    assert!(result.prepare.is_some_and(|p| p.start <= p.end));
    assert_eq!(result.timelines.len(), 2);
    for t in &result.timelines {
        let provision = t.provision.expect("provisioned");
        let teardown = t.teardown.expect("torn down");
        assert!(!t.provision_failed);
        assert!(provision.start <= provision.end, "{t:?}");
        assert!(provision.end <= teardown.start, "{t:?}");
        assert!(teardown.start <= teardown.end, "{t:?}");
    }
}

/// Two shards whose tests come later through the returned sender.
fn input_coming(
    backend: Arc<CountingBackend>,
) -> (RunInput, oneshot::Sender<Option<PlannedTests>>) {
    let mut inp = input(backend, 2);
    let (tx, rx) = oneshot::channel();
    inp.tests = TestsSource::Coming(rx);
    (inp, tx)
}

async fn until(what: impl Fn() -> bool) {
    for _ in 0..500 {
        if what() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting");
}

#[tokio::test]
async fn environments_start_during_the_build_and_an_empty_shard_goes_at_once() {
    let backend = Arc::new(CountingBackend::default());
    let (inp, tx) = input_coming(backend.clone());
    let plan = match input(backend.clone(), 2).tests {
        TestsSource::Known(mut tests) => {
            // Shard 2 turns out to have nothing to run.
            tests.shards = vec![(1, vec![0, 1]), (2, vec![])];
            tests
        }
        TestsSource::Coming(_) => unreachable!(),
    };
    let b = backend.clone();
    let mut silent = Silent;
    let (result, ()) = tokio::join!(run(inp, &mut silent), async move {
        // Both shards are provisioned before the plan exists.
        until(|| b.provisions.load(Ordering::SeqCst) == 2).await;
        tx.send(Some(plan)).unwrap();
    });
    assert_eq!(backend.teardowns.load(Ordering::SeqCst), 2);
    assert_eq!(result.outcomes.len(), 2);
    assert!(result.outcomes.iter().all(|o| o.shard == 1));
    assert!(result.timelines.iter().all(|t| t.teardown.is_some()));
}

#[tokio::test]
async fn a_failed_build_tears_down_the_environments_it_started() {
    let backend = Arc::new(CountingBackend::default());
    let (inp, tx) = input_coming(backend.clone());
    let b = backend.clone();
    let mut silent = Silent;
    let (result, ()) = tokio::join!(run(inp, &mut silent), async move {
        until(|| b.provisions.load(Ordering::SeqCst) == 2).await;
        tx.send(None).unwrap();
    });
    assert!(result.outcomes.is_empty());
    assert_eq!(backend.teardowns.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_plan_that_arrives_after_a_stop_is_reported_as_not_run() {
    let backend = Arc::new(CountingBackend {
        panic_in_provision: true,
        ..Default::default()
    });
    let (inp, tx) = input_coming(backend.clone());
    let plan = match input(backend.clone(), 2).tests {
        TestsSource::Known(tests) => tests,
        TestsSource::Coming(_) => unreachable!(),
    };
    let mut silent = Silent;
    let (result, ()) = tokio::join!(
        async {
            tokio::time::timeout(Duration::from_secs(30), run(inp, &mut silent))
                .await
                .expect("the run ends")
        },
        async move {
            // The provisioning panics first; the build ends later.
            tokio::time::sleep(Duration::from_millis(200)).await;
            tx.send(Some(plan)).unwrap();
        }
    );
    assert!(result.internal_error.is_some());
    assert_eq!(result.outcomes.len(), 2);
    for o in &result.outcomes {
        assert!(
            matches!(&o.verdict, Verdict::Skipped(why) if why.contains("internal error")),
            "{o:?}"
        );
    }
}

#[tokio::test]
async fn a_shard_that_failed_before_the_plan_came_does_not_hold_the_run() {
    let backend = Arc::new(CountingBackend {
        fail_shard: Some(1),
        ..Default::default()
    });
    let (mut inp, tx) = input_coming(backend.clone());
    inp.options.fail_fast = false;
    let plan = match input(backend.clone(), 2).tests {
        TestsSource::Known(tests) => tests,
        TestsSource::Coming(_) => unreachable!(),
    };
    let b = backend.clone();
    let mut silent = Silent;
    let (result, ()) = tokio::join!(
        async {
            // It used to wait for shard 1's queue forever.
            tokio::time::timeout(Duration::from_secs(30), run(inp, &mut silent))
                .await
                .expect("the run ends")
        },
        async move {
            // Shard 1 fails and shard 2 is ready before the build ends.
            until(|| b.provisions.load(Ordering::SeqCst) == 2).await;
            tx.send(Some(plan)).unwrap();
        }
    );
    assert_eq!(result.env_errors.len(), 1);
    assert_eq!(result.outcomes.len(), 2);
    let by_shard = |n: u32| result.outcomes.iter().find(|o| o.shard == n).unwrap();
    assert!(
        matches!(&by_shard(1).verdict, Verdict::Skipped(why) if why == "not run: environment of shard 1 failed"),
        "{:?}",
        by_shard(1)
    );
    assert!(
        matches!(by_shard(2).verdict, Verdict::Passed),
        "{:?}",
        by_shard(2)
    );
    assert_eq!(backend.teardowns.load(Ordering::SeqCst), 2);
}

/// Tests `a` and `b` that fail (`/bin/false`) in one shard, with knobs.
fn failing_pair(backend: Arc<CountingBackend>, a: TestKnobs, b: TestKnobs) -> RunInput {
    let mut inp = input(backend, 1);
    let binary = TestBinary {
        binary_id: "pkg".into(),
        binary_name: "false".into(),
        package_id: "pkg".into(),
        package_name: "pkg".into(),
        kind: "lib".into(),
        path: "/bin/false".into(),
        cwd: "/".into(),
        env: Arc::new(Vec::new()),
    };
    let list = TestList::new(
        vec![(binary, vec![("a".into(), false), ("b".into(), false)])],
        "/".into(),
    );
    inp.tests = TestsSource::Known(PlannedTests {
        list: Arc::new(list),
        selection: Arc::new(vec![Selection::Run, Selection::Run]),
        shards: vec![(1, vec![0, 1])],
        headline: String::new(),
        knobs: Some(Arc::new(vec![a, b])),
    });
    inp
}

fn knobs(retries: crate::profile::RetryPolicy, priority: i8) -> TestKnobs {
    TestKnobs {
        retries,
        timeout: None,
        grace: Duration::from_secs(1),
        threads: 1,
        group: None,
        priority,
    }
}

#[tokio::test]
async fn a_stop_ends_a_retry_waiting_out_its_backoff() {
    use crate::profile::{Backoff, RetryPolicy};
    let backend = Arc::new(CountingBackend::default());
    // `a` (higher priority: first) fails and waits an hour for its retry;
    // `b` fails with no retries: the first failure stops the run, which
    // must not wait for `a`'s retry.
    let hour = RetryPolicy {
        count: 3,
        backoff: Backoff::Fixed {
            delay: Duration::from_secs(3600),
            jitter: false,
        },
    };
    let mut inp = failing_pair(
        backend.clone(),
        knobs(hour, 10),
        knobs(RetryPolicy::immediate(0), 0),
    );
    inp.options.test_threads = 1;
    let mut silent = Silent;
    let result = tokio::time::timeout(Duration::from_secs(30), run(inp, &mut silent))
        .await
        .expect("the run ends without waiting for the retry");
    assert_eq!(result.outcomes.len(), 2, "{:?}", result.outcomes);
    for o in &result.outcomes {
        assert_eq!(o.verdict, Verdict::Failed, "{o:?}");
        assert_eq!(o.attempts.len(), 1, "{o:?}");
    }
    assert_eq!(backend.teardowns.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn max_fail_counts_tests_not_attempts() {
    let backend = Arc::new(CountingBackend::default());
    let twice = crate::profile::RetryPolicy::immediate(1);
    let mut inp = failing_pair(backend, knobs(twice, 0), knobs(twice, 0));
    inp.options.test_threads = 1;
    inp.options.max_fail = 2;
    let mut silent = Silent;
    let result = tokio::time::timeout(Duration::from_secs(30), run(inp, &mut silent))
        .await
        .expect("the run ends");
    // Two failed attempts of `a` are one failure: `b` still runs.
    let attempts: Vec<usize> = result.outcomes.iter().map(|o| o.attempts.len()).collect();
    assert_eq!(attempts, [2, 2]);
    assert!(result.outcomes.iter().all(|o| o.verdict == Verdict::Failed));
}

fn scope(services: &[&str], serial: bool) -> Arc<TestScope> {
    Arc::new(TestScope {
        services: services.iter().map(|s| s.to_string()).collect(),
        all: false,
        exports: Default::default(),
        serial,
    })
}

/// A test that matches no service starts while its shard's environment is
/// still being prepared; one that matches waits for it, and the shard is
/// released once no test that uses it is left, the other still running.
#[tokio::test]
async fn a_test_outside_every_scope_starts_before_the_environment() {
    let backend = Arc::new(CountingBackend::default());
    let mut silent = Silent;
    let (mut d, _events) = Dispatcher::new(input(backend.clone(), 1), &mut silent);
    d.test_scopes = vec![scope(&["db"], true), scope(&[], false)];
    d.shards[0].queue.push_back(Pending {
        test: 1,
        attempt_no: 1,
    });
    assert_eq!(d.shards[0].phase, EnvPhase::AwaitPrepare);
    d.schedule();
    assert!(
        d.running.contains_key(&1),
        "the test outside the scope waits"
    );
    assert!(
        !d.running.contains_key(&0),
        "the test in the scope does not"
    );
    d.shards[0].phase = EnvPhase::Ready;
    d.shards[0].serial = true;
    d.schedule();
    assert!(d.running.contains_key(&0));
    assert_eq!(d.shards[0].serial_running, 1);
    assert_eq!(d.shards[0].env_running, 1);
    d.attempt_done(1, 0, 1, passed());
    d.schedule();
    assert_eq!(d.shards[0].phase, EnvPhase::Released, "nothing uses it");
    assert!(d.running.contains_key(&1), "the other test runs on");
}

/// Serial tests (in the scope of a service that resets) run one at a
/// time; a test outside it starts beside them, even behind a waiting one.
#[tokio::test]
async fn a_reset_serialises_only_the_tests_in_its_scope() {
    let backend = Arc::new(CountingBackend::default());
    let mut silent = Silent;
    let (mut d, _events) = Dispatcher::new(input(backend.clone(), 1), &mut silent);
    d.opts.test_threads = 4;
    d.test_scopes = vec![scope(&["db"], true), scope(&[], false)];
    d.shards[0].queue.push_back(Pending {
        test: 1,
        attempt_no: 1,
    });
    d.shards[0].phase = EnvPhase::Ready;
    d.shards[0].serial = true;
    // Another serial test is running (as if started earlier).
    d.shards[0].serial_running = 1;
    d.schedule();
    assert!(!d.running.contains_key(&0), "a second serial test started");
    assert!(
        d.running.contains_key(&1),
        "the other did not start beside it"
    );
    d.shards[0].serial_running = 0;
    d.schedule();
    assert!(d.running.contains_key(&0));
}

fn passed() -> Attempt {
    Attempt {
        status: AttemptStatus::Passed,
        started_at: SystemTime::now(),
        duration: Duration::ZERO,
        stdout: String::new(),
        stderr: String::new(),
    }
}

/// Without a backend every shard is ready at once and releasing it (there
/// is nothing to release) never stops its queued tests from starting.
#[tokio::test]
async fn without_a_backend_every_test_runs_one_slot_after_another() {
    let backend = Arc::new(CountingBackend::default());
    let mut input = input(backend, 1);
    input.environments = None;
    input.options.test_threads = 1;
    let mut silent = Silent;
    let (mut d, _events) = Dispatcher::new(input, &mut silent);
    d.shards[0].queue.push_back(Pending {
        test: 1,
        attempt_no: 1,
    });
    d.schedule();
    assert!(d.running.contains_key(&0));
    d.attempt_done(1, 0, 1, passed());
    d.schedule();
    assert!(d.running.contains_key(&1), "the second test never started");
}
