//! The Kubernetes safety nets with the real kube client against the loopback
//! stand-in: listing, the sweep's decisions by expiry, uid preconditions,
//! namespaces already Terminating, teardown's bounded wait, renewal, reaping
//! one run, and RBAC refusals. (Reaching the cluster: `kube_connect.rs`.)
//!
//! Every fixture applies `examples/kubernetes/rbac.yaml` to the stand-in.
//! `a_real_cluster_goes_through_the_whole_cycle` is ignored unless run with
//! `--ignored` and `EPHEM_TEST_KUBECONFIG` naming a real cluster's kubeconfig.

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ephem_fixtures::kubernetes::cleanup::{
    delete_namespace, DeletionOutcome, HoldingCondition, KubernetesCleanup,
};
use ephem_fixtures::kubernetes::client::{connect_with, Cluster};
use ephem_fixtures::kubernetes::labels;
use ephem_fixtures::process;
use ephem_fixtures::sweep::{self, local_process_state, ProcessState, SweepPolicy};
use ephem_fixtures::{Cleanup, ResourceKind, RunResource};
use ephem_kube_stand_in::{Condition, NamespaceDeletion, RecordedRequest, StandIn};
use serde_json::{json, Value};

/// A stand-in, a kubeconfig for it, and the safety nets connected to it.
struct Fixture {
    api: StandIn,
    cleanup: KubernetesCleanup,
    _dir: tempfile::TempDir,
}

/// `examples/kubernetes/rbac.yaml`, which every fixture applies: whatever
/// the safety nets ask that it does not grant fails these tests.
const RBAC: &str = include_str!("../../examples/kubernetes/rbac.yaml");

async fn fixture() -> Fixture {
    let api = StandIn::start().await.expect("stand-in starts");
    api.apply_rbac(RBAC).expect("rbac.yaml applies");
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("config");
    api.write_kubeconfig(&config, "stand-in")
        .expect("kubeconfig written");
    let cluster = connect_with(&[config], None)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    Fixture {
        api,
        cleanup: KubernetesCleanup::new(cluster),
        _dir: dir,
    }
}

impl Fixture {
    fn cluster(&self) -> &Cluster {
        self.cleanup.cluster()
    }

    /// Plants a namespace and returns its uid.
    fn plant(&self, namespace: Value) -> String {
        let stored = self.api.insert_namespace(namespace);
        stored["metadata"]["uid"].as_str().unwrap().to_owned()
    }

    fn exists(&self, name: &str) -> bool {
        self.api.namespace(name).is_some()
    }

    /// Requests that name `namespace` in their path or query.
    fn requests_about(&self, namespace: &str) -> Vec<RecordedRequest> {
        self.api
            .requests()
            .into_iter()
            .filter(|r| r.path.contains(namespace) || r.query.contains(namespace))
            .collect()
    }

    fn deletes(&self) -> Vec<RecordedRequest> {
        self.api
            .requests()
            .into_iter()
            .filter(|r| r.method == "DELETE")
            .collect()
    }
}

/// Who made a namespace.
#[derive(Clone)]
struct Runner {
    host: String,
    pid: u32,
    pid_start: Option<u64>,
}

impl Runner {
    /// This test process: alive.
    fn me() -> Runner {
        let pid = std::process::id();
        Runner {
            host: process::hostname(),
            pid,
            pid_start: process::start_time(pid),
        }
    }

    /// A process of this host that has exited.
    fn dead() -> Runner {
        let mut child = std::process::Command::new("true")
            .spawn()
            .expect("spawn true");
        let pid = child.id();
        child.wait().expect("reap true");
        assert_eq!(local_process_state(pid, None), ProcessState::Gone);
        Runner {
            host: process::hostname(),
            pid,
            pid_start: Some(1),
        }
    }

    /// A runner on another machine.
    fn elsewhere() -> Runner {
        Runner {
            host: "build-elsewhere.example".to_owned(),
            pid: std::process::id(),
            pid_start: None,
        }
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

/// A namespace as the backend labels and annotates it.
fn managed(name: &str, run: &str, shard: u32, runner: &Runner, expires: u64) -> Value {
    let mut annotations = json!({
        labels::HOSTNAME: runner.host,
        labels::PID: runner.pid.to_string(),
        labels::JANITOR_EXPIRES: labels::janitor_expires(at(expires)),
    });
    if let Some(start) = runner.pid_start {
        annotations[labels::PID_START] = json!(start.to_string());
    }
    json!({"metadata": {
        "name": name,
        "labels": {
            labels::MANAGED_BY: labels::MANAGED_BY_VALUE,
            labels::RUN: labels::label_value(run),
            labels::SHARD: shard.to_string(),
            labels::HOST: labels::label_value(&runner.host),
        },
        "annotations": annotations,
    }})
}

fn kept(mut namespace: Value) -> Value {
    namespace["metadata"]["annotations"][labels::KEEP] = json!("true");
    namespace
}

fn names(resources: &[RunResource]) -> Vec<&str> {
    let mut names: Vec<&str> = resources.iter().map(|r| r.name.as_str()).collect();
    names.sort_unstable();
    names
}

fn policy(all_hosts: bool) -> SweepPolicy {
    SweepPolicy {
        this_host: process::hostname(),
        all_hosts,
        now: now(),
        keep_runs: Vec::new(),
    }
}

/// Waits up to 2 s for the stand-in to finish deleting `name`.
async fn gone(f: &Fixture, name: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(2);
    while f.exists(name) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    !f.exists(name)
}

#[tokio::test]
async fn listing_reads_every_label_and_annotation_and_only_managed_namespaces() {
    let f = fixture().await;
    let runner = Runner::me();
    let expires = now() + 600;
    let uid = f.plant(kept(managed(
        "ephem-aaaa1111-3",
        "aaaa1111-run",
        3,
        &runner,
        expires,
    )));
    // Same run label, but not managed by cargo-ephem: someone else's.
    let mut foreign = managed("foreign", "aaaa1111-run", 1, &runner, expires);
    foreign["metadata"]["labels"][labels::MANAGED_BY] = json!("helm");
    f.plant(foreign);
    f.plant(json!({"metadata": {"name": "kube-system"}}));

    let listed = f.cleanup.list().await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(names(&listed), ["ephem-aaaa1111-3"]);
    let created = f.api.namespace("ephem-aaaa1111-3").unwrap()["metadata"]["creationTimestamp"]
        .as_str()
        .map(|t| chrono::DateTime::parse_from_rfc3339(t).unwrap().timestamp() as u64)
        .unwrap();
    assert_eq!(
        listed[0],
        RunResource {
            kind: ResourceKind::Namespace,
            id: uid,
            name: "ephem-aaaa1111-3".into(),
            run: "aaaa1111-run".into(),
            shard: Some(3),
            pid: Some(runner.pid),
            pid_start: runner.pid_start,
            host: Some(runner.host.clone()),
            expires: Some(expires),
            created: Some(at(created)),
            lease: false,
            kept: true,
            workspace: None,
            terminating: None,
        }
    );
    let list = f
        .api
        .requests()
        .into_iter()
        .find(|r| r.method == "GET" && r.path == "/api/v1/namespaces")
        .expect("a list of namespaces");
    assert_eq!(
        list.param("labelSelector").as_deref(),
        Some("app.kubernetes.io/managed-by=cargo-ephem"),
        "found by the managed-by label alone, whatever the version"
    );
    assert_eq!(f.cleanup.backend(), "kubernetes");
    assert_eq!(
        f.cleanup.address(),
        format!("{} (context stand-in)", f.api.url())
    );
}

/// A CI job's runner that no longer exists: a hostname never seen again,
/// and a pid that happens to be alive here (it means nothing here).
fn gone_ci_runner() -> Runner {
    Runner {
        host: "ci-runner-7f9c2-xk2lp".to_owned(),
        pid: std::process::id(),
        pid_start: None,
    }
}

fn planned_names(outcome: &sweep::SweepOutcome) -> Vec<&str> {
    outcome
        .planned
        .iter()
        .map(|(r, _)| r.name.as_str())
        .collect()
}

#[tokio::test]
async fn the_sweep_goes_by_expiry_whatever_the_host_and_spares_live_kept_and_unlabelled_ones() {
    let f = fixture().await;
    let (me, dead, far) = (Runner::me(), Runner::dead(), Runner::elsewhere());
    let soon = now() + 600;
    let past = now() - 600;
    f.plant(managed("far-expired", "far", 1, &gone_ci_runner(), past));
    f.plant(managed("far-fresh", "far-fresh", 1, &far, soon));
    let dead_uid = f.plant(managed("dead-expired", "dead", 1, &dead, past));
    // Unexpired: never touched without --all, whatever its pid says.
    f.plant(managed("dead-fresh", "dead-fresh", 1, &dead, soon));
    f.plant(managed("live-runner", "live", 1, &me, past));
    f.plant(kept(managed("kept-fresh", "kept-fresh", 1, &dead, soon)));
    f.plant(kept(managed(
        "kept-expired",
        "kept-expired",
        1,
        &dead,
        past,
    )));
    f.plant(json!({"metadata": {"name": "unlabelled-prod", "labels": {labels::RUN: "dead"}}}));

    // Plain (no --all), dry run: judged, nothing deleted.
    let dry = sweep::sweep(&f.cleanup, &policy(false), true)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        planned_names(&dry),
        ["dead-expired", "far-expired", "kept-expired"]
    );
    assert!(f.deletes().is_empty(), "a dry run deletes nothing");

    let plain = sweep::sweep(&f.cleanup, &policy(false), false)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(plain.failed.is_empty(), "{:?}", plain.failed);
    for (r, why) in &plain.planned {
        assert!(
            why.to_string().starts_with("expired 10m ago"),
            "{}: {why}",
            r.name
        );
    }
    for name in ["dead-expired", "far-expired", "kept-expired"] {
        assert!(gone(&f, name).await, "{name} was deleted");
    }
    for name in [
        "far-fresh",
        "dead-fresh",
        "live-runner",
        "kept-fresh",
        "unlabelled-prod",
    ] {
        assert!(f.exists(name), "{name} is spared");
    }

    // --all: also runs that have not expired, unless kept on purpose or
    // their runner runs here.
    let everywhere = sweep::sweep(&f.cleanup, &policy(true), false)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(planned_names(&everywhere), ["dead-fresh", "far-fresh"]);
    for (r, why) in &everywhere.planned {
        assert!(
            why.to_string().ends_with(", taken by --all"),
            "{}: {why}",
            r.name
        );
    }
    for name in ["dead-fresh", "far-fresh"] {
        assert!(gone(&f, name).await, "{name} was deleted");
    }
    for name in ["live-runner", "kept-fresh", "unlabelled-prod"] {
        assert!(f.exists(name), "{name} is spared even by --all");
    }

    // Every DELETE is by uid, dependents in the background; nothing is finalized.
    let deletes = f.deletes();
    assert_eq!(deletes.len(), 5);
    let dead_delete = deletes
        .iter()
        .find(|r| r.path.ends_with("/dead-expired"))
        .unwrap();
    let options = dead_delete.json().expect("DeleteOptions");
    assert_eq!(options["preconditions"]["uid"], dead_uid.as_str());
    assert_eq!(options["propagationPolicy"], "Background");
    assert!(deletes
        .iter()
        .all(|r| r.json().unwrap()["preconditions"]["uid"].is_string()));
    assert!(
        f.requests_about("unlabelled-prod").is_empty(),
        "never even asked about"
    );
    assert!(f
        .api
        .requests()
        .iter()
        .all(|r| !r.path.ends_with("/finalize")));
}

#[tokio::test]
async fn a_namespace_recreated_between_list_and_delete_is_left_alone() {
    let f = fixture().await;
    let dead = Runner::dead();
    let old_uid = f.plant(managed("ephem-reborn-1", "reborn", 1, &dead, now() + 600));
    let listed = f.cleanup.list().await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(listed[0].id, old_uid);

    // Deleted and re-created (by another run, or by hand) meanwhile.
    assert!(f.api.remove_namespace("ephem-reborn-1"));
    let new_uid = f.plant(managed(
        "ephem-reborn-1",
        "reborn",
        1,
        &Runner::me(),
        now() + 600,
    ));
    assert_ne!(new_uid, old_uid);

    let results = f.cleanup.remove(&listed).await;
    let error = results[0].1.as_ref().expect_err("not deleted");
    assert!(
        error.contains("ephem-reborn-1") && error.contains("re-created"),
        "{error}"
    );
    let still = f.api.namespace("ephem-reborn-1").expect("still there");
    assert_eq!(still["metadata"]["uid"], new_uid.as_str());
    assert!(still["metadata"]["deletionTimestamp"].is_null());
    let deletes = f.deletes();
    assert_eq!(deletes.len(), 1, "never retried without the precondition");
    assert_eq!(
        deletes[0].json().unwrap()["preconditions"]["uid"],
        old_uid.as_str()
    );
}

fn stuck_conditions() -> Vec<Condition> {
    vec![
        Condition::new(
            "NamespaceFinalizersRemaining",
            "SomeFinalizersRemain",
            "Some content in the namespace has finalizers remaining: example.com/hold in 1 resource instances",
        ),
        Condition {
            status: "False".into(),
            ..Condition::new(
                "NamespaceDeletionDiscoveryFailure",
                "ResourcesDiscovered",
                "All resources successfully discovered",
            )
        },
    ]
}

/// Deletes namespace `name` through the API as a run's teardown would,
/// with a ConfigMap inside that a finalizer holds: the cluster keeps it
/// Terminating with the namespace controller's conditions.
async fn delete_held(f: &Fixture, name: &str, uid: &str) {
    let held = json!({"metadata": {"name": "held", "finalizers": ["example.com/hold"]}});
    f.api.insert_object(name, "configmaps", held);
    let outcome = delete_namespace(f.cluster(), name, uid, Duration::from_millis(300))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        matches!(outcome, DeletionOutcome::StillTerminating(_)),
        "{outcome:?}"
    );
}

/// Moves a namespace's deletion back in time by `ago`.
fn terminating_since(f: &Fixture, name: &str, ago: Duration) {
    let since = chrono::DateTime::<chrono::Utc>::from(SystemTime::now() - ago);
    f.api.update_object(None, "namespaces", name, |ns| {
        ns["metadata"]["deletionTimestamp"] = json!(since.format("%Y-%m-%dT%H:%M:%SZ").to_string());
    });
}

#[tokio::test]
async fn a_namespace_already_terminating_is_never_deleted_again_and_is_reported_with_what_holds_it()
{
    let f = fixture().await;
    let expired = now() - 600;
    let stuck_uid = f.plant(managed(
        "ephem-stuck-1",
        "stuck",
        1,
        &gone_ci_runner(),
        expired,
    ));
    let young_uid = f.plant(managed(
        "ephem-stuck-2",
        "stuck",
        2,
        &gone_ci_runner(),
        expired,
    ));
    // Of a run that has not expired: reported all the same.
    let live_uid = f.plant(managed(
        "ephem-fresh-1",
        "fresh",
        1,
        &Runner::me(),
        now() + 600,
    ));
    delete_held(&f, "ephem-stuck-1", &stuck_uid).await;
    delete_held(&f, "ephem-stuck-2", &young_uid).await;
    delete_held(&f, "ephem-fresh-1", &live_uid).await;
    terminating_since(&f, "ephem-stuck-1", Duration::from_secs(600));
    f.plant(managed(
        "ephem-stuck-3",
        "stuck",
        3,
        &gone_ci_runner(),
        expired,
    ));
    f.api.clear_requests();

    for dry_run in [true, false] {
        let outcome = sweep::sweep(&f.cleanup, &policy(false), dry_run)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            planned_names(&outcome),
            ["ephem-stuck-3"],
            "dry run {dry_run}"
        );
        assert!(outcome.failed.is_empty(), "{:?}", outcome.failed);
        let reported: Vec<&str> = outcome
            .terminating
            .iter()
            .map(|r| r.name.as_str())
            .collect();
        assert_eq!(
            reported,
            ["ephem-fresh-1", "ephem-stuck-1", "ephem-stuck-2"]
        );
        let stuck = outcome.terminating[1].terminating.as_ref().unwrap();
        let line = stuck.describe(SystemTime::now());
        assert!(line.starts_with("Terminating for 10m: "), "{line}");
        assert_eq!(
            stuck.holding,
            [
                HoldingCondition {
                    type_: "NamespaceContentRemaining".into(),
                    message: "Some resources are remaining: configmaps. has 1 resource instances"
                        .into(),
                },
                HoldingCondition {
                    type_: "NamespaceFinalizersRemaining".into(),
                    message: "Some content in the namespace has finalizers remaining: example.com/hold in 1 resource instances".into(),
                },
            ]
        );
        assert!(
            !line.contains("NamespaceDeletionDiscoveryFailure"),
            "only what holds it: {line}"
        );
        assert!(outcome.any_stuck(SystemTime::now()));
        let summary = outcome.summary("removed");
        assert!(
            summary.ends_with(
                "3 namespaces already being deleted, not deleted again, 1 of them for over 5m"
            ),
            "{summary}"
        );
    }
    let deletes: Vec<String> = f.deletes().iter().map(RecordedRequest::line).collect();
    assert_eq!(deletes.len(), 1, "{deletes:?}");
    assert!(deletes[0].ends_with("/ephem-stuck-3"), "{deletes:?}");
    for name in ["ephem-stuck-1", "ephem-stuck-2", "ephem-fresh-1"] {
        assert!(f.exists(name), "{name} is still Terminating");
    }

    // gc --run (remove_run) leaves them to finish too.
    assert_eq!(
        f.cleanup
            .remove_run("stuck")
            .await
            .unwrap_or_else(|e| panic!("{e}")),
        0
    );
    assert_eq!(f.deletes().len(), 1, "never deleted twice");
    assert!(f
        .api
        .requests()
        .iter()
        .all(|r| !r.path.ends_with("/finalize") && r.method != "PUT"));

    // Once the finalizer's controller lets go, the cluster finishes the job.
    f.api
        .update_object(Some("ephem-stuck-1"), "configmaps", "held", |cm| {
            cm["metadata"]["finalizers"] = json!([]);
        });
    assert!(!f.exists("ephem-stuck-1"));
}

#[tokio::test]
async fn teardown_waits_a_bounded_time_and_reports_a_namespace_still_terminating() {
    let f = fixture().await;
    f.api
        .set_deletion(NamespaceDeletion::After(Duration::from_millis(300)));
    let uid = f.plant(managed("ephem-td-1", "td", 1, &Runner::me(), now() + 600));
    let started = Instant::now();
    f.api.clear_requests();
    let outcome = delete_namespace(f.cluster(), "ephem-td-1", &uid, Duration::from_secs(5))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(outcome, DeletionOutcome::Gone);
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "it waited for the namespace to go"
    );
    assert!(!f.exists("ephem-td-1"));
    // One watch of that one namespace (kube's await_condition), no polling.
    let requests = f.api.requests();
    let by_name = |r: &&RecordedRequest| {
        r.path == "/api/v1/namespaces"
            && r.param("fieldSelector").as_deref() == Some("metadata.name=ephem-td-1")
    };
    let watches = requests
        .iter()
        .filter(by_name)
        .filter(|r| r.param("watch").as_deref() == Some("true"))
        .count();
    assert_eq!(watches, 1, "{:?}", requests);
    assert!(
        !requests
            .iter()
            .any(|r| r.method == "GET" && r.path == "/api/v1/namespaces/ephem-td-1"),
        "polled with GETs: {requests:?}"
    );

    f.api
        .set_deletion(NamespaceDeletion::Stuck(stuck_conditions()));
    let uid = f.plant(managed("ephem-td-2", "td", 2, &Runner::me(), now() + 600));
    let started = Instant::now();
    let outcome = delete_namespace(f.cluster(), "ephem-td-2", &uid, Duration::from_millis(600))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "bounded: {:?}",
        started.elapsed()
    );
    assert_eq!(
        outcome,
        DeletionOutcome::StillTerminating(vec![HoldingCondition {
            type_: "NamespaceFinalizersRemaining".into(),
            message: "Some content in the namespace has finalizers remaining: example.com/hold in 1 resource instances".into(),
        }])
    );

    // Another namespace under the name: ours is gone, the other untouched.
    let other = f.plant(managed("ephem-td-3", "td", 3, &Runner::me(), now() + 600));
    let outcome = delete_namespace(
        f.cluster(),
        "ephem-td-3",
        "an-older-uid",
        Duration::from_secs(1),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(outcome, DeletionOutcome::Gone);
    assert_eq!(
        f.api.namespace("ephem-td-3").unwrap()["metadata"]["uid"],
        other.as_str()
    );
    assert!(f.api.namespace("ephem-td-3").unwrap()["metadata"]["deletionTimestamp"].is_null());
}

#[tokio::test]
async fn renew_moves_the_expiry_and_a_janitor_ttl_that_ends_with_it() {
    let f = fixture().await;
    let me = Runner::me();
    let created = "2024-05-01T10:00:00Z";
    for (name, run) in [
        ("ephem-rn-1", "rn"),
        ("ephem-rn-2", "rn"),
        ("ephem-other-1", "other"),
    ] {
        let mut ns = managed(name, run, 1, &me, now() + 60);
        ns["metadata"]["creationTimestamp"] = json!(created);
        f.plant(ns);
    }
    let later = now() + 3600;
    f.cleanup
        .renew("rn", at(later), false)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let created_secs = 1_714_557_600;
    for name in ["ephem-rn-1", "ephem-rn-2"] {
        let annotations = &f.api.namespace(name).unwrap()["metadata"]["annotations"];
        assert_eq!(
            annotations[labels::JANITOR_EXPIRES],
            labels::janitor_expires(at(later))
        );
        let ttl = annotations[labels::JANITOR_TTL].as_str().unwrap();
        let secs: u64 = ttl.trim_end_matches('s').parse().unwrap();
        // kube-janitor counts the TTL from creation: it must not end before the expiry.
        assert!(
            created_secs + secs >= later && created_secs + secs <= later + 1,
            "{ttl}"
        );
        assert!(annotations[labels::KEEP].is_null());
    }
    let other = &f.api.namespace("ephem-other-1").unwrap()["metadata"]["annotations"];
    assert_ne!(
        other[labels::JANITOR_EXPIRES],
        labels::janitor_expires(at(later))
    );
    let patches: Vec<RecordedRequest> = f
        .api
        .requests()
        .into_iter()
        .filter(|r| r.method == "PATCH")
        .collect();
    assert_eq!(patches.len(), 2);
    assert!(patches
        .iter()
        .all(|p| p.content_type.as_deref() == Some("application/merge-patch+json")));

    // --keep-env marks the run; a later renewal without keep lifts the mark.
    f.cleanup
        .renew("rn", at(later + 60), true)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let listed = f.cleanup.list().await.unwrap_or_else(|e| panic!("{e}"));
    let rn: Vec<&RunResource> = listed.iter().filter(|r| r.run == "rn").collect();
    assert_eq!(rn.len(), 2);
    assert!(rn.iter().all(|r| r.kept && r.expires == Some(later + 60)));
    f.cleanup
        .renew("rn", at(later + 120), false)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let listed = f.cleanup.list().await.unwrap_or_else(|e| panic!("{e}"));
    assert!(listed.iter().filter(|r| r.run == "rn").all(|r| !r.kept));
    f.cleanup
        .end_run("rn")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
}

#[tokio::test]
async fn remove_run_takes_only_that_run_including_a_namespace_created_a_moment_later() {
    let f = fixture().await;
    let dead = Runner::dead();
    f.plant(managed("ephem-gone-1", "gone", 1, &dead, now() + 600));
    f.plant(managed("ephem-gone-2", "gone", 2, &dead, now() + 600));
    f.plant(managed("ephem-stays-1", "stays", 1, &dead, now() + 600));
    // A create request that was in flight when the runner died.
    let late = managed("ephem-gone-3", "gone", 3, &dead, now() + 600);
    let started = Instant::now();
    let (removed, ()) = tokio::join!(f.cleanup.remove_run("gone"), async {
        tokio::time::sleep(Duration::from_millis(400)).await;
        f.plant(late);
    });
    assert_eq!(removed.unwrap_or_else(|e| panic!("{e}")), 3);
    assert!(started.elapsed() < Duration::from_secs(8), "bounded");
    for name in ["ephem-gone-1", "ephem-gone-2", "ephem-gone-3"] {
        assert!(gone(&f, name).await, "{name}");
    }
    assert!(f.exists("ephem-stays-1"));
    assert!(f.requests_about("ephem-stays-1").is_empty());
}

#[tokio::test]
async fn forbidden_list_and_delete_name_the_verb_and_the_resource() {
    let f = fixture().await;
    let uid = f.plant(managed(
        "ephem-rbac-1",
        "rbac",
        1,
        &Runner::dead(),
        now() + 600,
    ));
    f.api.forbid("list", "namespaces");
    let error = f.cleanup.list().await.unwrap_err().to_string();
    assert!(
        error.contains("forbids list on namespaces at the cluster scope"),
        "{error}"
    );
    assert!(error.contains("examples/kubernetes/rbac.yaml"), "{error}");
    assert!(
        error.contains("cannot list resource \"namespaces\""),
        "the API's words too: {error}"
    );
    let error = sweep::sweep(&f.cleanup, &policy(false), false)
        .await
        .unwrap_err();
    assert!(
        error.to_string().contains("forbids list on namespaces"),
        "{error}"
    );

    f.api.allow_all();
    f.api.forbid("delete", "namespaces");
    let listed = f.cleanup.list().await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(listed[0].id, uid);
    let results = f.cleanup.remove(&listed).await;
    let error = results[0].1.as_ref().unwrap_err();
    assert!(
        error.contains("forbids delete on namespaces in namespace ephem-rbac-1"),
        "{error}"
    );
    assert!(f.exists("ephem-rbac-1"));
    let error = f.cleanup.remove_run("rbac").await.unwrap_err().to_string();
    assert!(error.contains("forbids delete on namespaces"), "{error}");
}

/// The whole cycle against a real cluster whose kubeconfig
/// `EPHEM_TEST_KUBECONFIG` names (and `EPHEM_TEST_KUBE_CONTEXT` a context,
/// if not the current one). Ignored unless asked for with `--ignored`;
/// asked for without the variable, it fails rather than pass untested.
#[tokio::test]
#[ignore = "needs a real cluster: set EPHEM_TEST_KUBECONFIG and run with --ignored"]
async fn a_real_cluster_goes_through_the_whole_cycle() {
    let kubeconfig = std::env::var_os("EPHEM_TEST_KUBECONFIG").expect(
        "EPHEM_TEST_KUBECONFIG must name the kubeconfig of a real cluster (e.g. `kind get kubeconfig > /tmp/kind.yaml`)",
    );
    let context = std::env::var("EPHEM_TEST_KUBE_CONTEXT").ok();
    let files: Vec<PathBuf> = std::env::split_paths(&kubeconfig).collect();
    let cluster = connect_with(&files, context.as_deref())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let cleanup = KubernetesCleanup::new(cluster.clone());
    let run = format!("e2e{}", std::process::id());
    let name = labels::namespace_name("ephem-test", &run, 1);
    let namespaces: kube::Api<k8s_openapi::api::core::v1::Namespace> =
        kube::Api::all(cluster.client.clone());
    let namespace =
        serde_json::from_value(managed(&name, &run, 1, &Runner::me(), now() + 600)).unwrap();
    let created = namespaces
        .create(&kube::api::PostParams::default(), &namespace)
        .await
        .unwrap_or_else(|e| panic!("create {name}: {e}"));
    let uid = created.metadata.uid.unwrap();

    let listed = cleanup.list().await.unwrap_or_else(|e| panic!("{e}"));
    assert!(listed.iter().any(|r| r.id == uid && r.run == run));
    cleanup
        .renew(&run, at(now() + 1200), false)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let outcome = delete_namespace(&cluster, &name, &uid, Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(outcome, DeletionOutcome::Gone);
}
