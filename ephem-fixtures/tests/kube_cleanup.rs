//! The Kubernetes safety nets with the real kube client against the loopback
//! stand-in: listing, the sweep's decisions, uid preconditions, stuck
//! namespaces, renewal, reaping one run, and how reaching the cluster fails.
//!
//! With `EPHEM_TEST_KUBECONFIG` set, `a_real_cluster_goes_through_the_whole_cycle`
//! also runs against that cluster.

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ephem_fixtures::kubernetes::cleanup::{
    delete_namespace, DeletionOutcome, HoldingCondition, KubernetesCleanup,
};
use ephem_fixtures::kubernetes::client::{connect_with, Cluster};
use ephem_fixtures::kubernetes::labels;
use ephem_fixtures::process;
use ephem_fixtures::sweep::{self, local_process_state, ProcessState, SweepPolicy, SweepReason};
use ephem_fixtures::{Cleanup, ResourceKind, RunResource};
use ephem_kube_stand_in::{Condition, NamespaceDeletion, RecordedRequest, StandIn};
use serde_json::{json, Value};

/// A stand-in, a kubeconfig for it, and the safety nets connected to it.
struct Fixture {
    api: StandIn,
    cleanup: KubernetesCleanup,
    _dir: tempfile::TempDir,
}

async fn fixture() -> Fixture {
    let api = StandIn::start().await.expect("stand-in starts");
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

#[tokio::test]
async fn the_sweep_removes_abandoned_runs_and_spares_live_kept_and_unlabelled_ones() {
    let f = fixture().await;
    let (me, dead, far) = (Runner::me(), Runner::dead(), Runner::elsewhere());
    let soon = now() + 600;
    let past = now() - 600;
    f.plant(managed("far-expired", "far", 1, &far, past));
    f.plant(managed("far-fresh", "far-fresh", 1, &far, soon));
    let dead_uid = f.plant(managed("dead-runner", "dead", 1, &dead, soon));
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

    // This host only, dry run: judged, nothing deleted.
    let here = sweep::sweep(&f.cleanup, &policy(false), true)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let planned: Vec<&str> = here.planned.iter().map(|(r, _)| r.name.as_str()).collect();
    assert_eq!(planned, ["dead-runner", "kept-expired"]);
    assert!(f.deletes().is_empty(), "a dry run deletes nothing");

    let everywhere = sweep::sweep(&f.cleanup, &policy(true), false)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(everywhere.failed.is_empty(), "{:?}", everywhere.failed);
    let reasons: Vec<(&str, SweepReason)> = everywhere
        .planned
        .iter()
        .map(|(r, why)| (r.name.as_str(), *why))
        .collect();
    assert_eq!(reasons.len(), 3, "{reasons:?}");
    assert_eq!(reasons[0].0, "dead-runner");
    assert_eq!(reasons[0].1, SweepReason::RunnerGone { pid: dead.pid });
    assert_eq!(reasons[1].0, "far-expired");
    assert!(matches!(reasons[1].1, SweepReason::Expired { .. }));
    assert_eq!(reasons[2].0, "kept-expired");
    for name in ["dead-runner", "far-expired", "kept-expired"] {
        assert!(gone(&f, name).await, "{name} was deleted");
    }
    for name in ["far-fresh", "live-runner", "kept-fresh", "unlabelled-prod"] {
        assert!(f.exists(name), "{name} is spared");
    }

    // Every DELETE is by uid, dependents in the background; nothing is finalized.
    let deletes = f.deletes();
    assert_eq!(deletes.len(), 3);
    let dead_delete = deletes
        .iter()
        .find(|r| r.path.ends_with("/dead-runner"))
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

#[tokio::test]
async fn a_namespace_stuck_terminating_is_reported_with_what_holds_it_never_finalized() {
    let f = fixture().await;
    let mut stuck = managed("ephem-stuck-1", "stuck", 1, &Runner::dead(), now() + 600);
    let since = chrono::DateTime::<chrono::Utc>::from(SystemTime::now() - Duration::from_secs(600));
    stuck["metadata"]["deletionTimestamp"] = json!(since.format("%Y-%m-%dT%H:%M:%SZ").to_string());
    let conditions: Vec<Value> = stuck_conditions().iter().map(Condition::to_json).collect();
    stuck["status"] = json!({"phase": "Terminating", "conditions": conditions});
    f.plant(stuck);
    // A namespace that began Terminating a moment ago is not stuck.
    let mut young = managed("ephem-stuck-2", "stuck", 2, &Runner::dead(), now() + 600);
    young["metadata"]["deletionTimestamp"] =
        json!(chrono::DateTime::<chrono::Utc>::from(SystemTime::now())
            .format("%Y-%m-%dT%H:%M:%SZ")
            .to_string());
    f.plant(young);

    let outcome = sweep::sweep(&f.cleanup, &policy(false), false)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(outcome.planned.len(), 2);
    assert_eq!(outcome.failed.len(), 1, "{:?}", outcome.failed);
    let (resource, message) = &outcome.failed[0];
    assert_eq!(resource.name, "ephem-stuck-1");
    assert!(message.contains("Terminating for 10m"), "{message}");
    assert!(
        message.contains("NamespaceFinalizersRemaining: Some content in the namespace has finalizers remaining: example.com/hold"),
        "{message}"
    );
    assert!(
        !message.contains("NamespaceDeletionDiscoveryFailure"),
        "only what holds it: {message}"
    );
    assert!(!message.contains('\n'));
    assert!(f.exists("ephem-stuck-1"));
    assert!(f
        .api
        .requests()
        .iter()
        .all(|r| !r.path.ends_with("/finalize") && r.method != "PUT"));
}

#[tokio::test]
async fn teardown_waits_a_bounded_time_and_reports_a_namespace_still_terminating() {
    let f = fixture().await;
    f.api
        .set_deletion(NamespaceDeletion::After(Duration::from_millis(300)));
    let uid = f.plant(managed("ephem-td-1", "td", 1, &Runner::me(), now() + 600));
    let started = Instant::now();
    let outcome = delete_namespace(f.cluster(), "ephem-td-1", &uid, Duration::from_secs(5))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(outcome, DeletionOutcome::Gone);
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "it waited for the namespace to go"
    );
    assert!(!f.exists("ephem-td-1"));

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
async fn an_unreachable_server_fails_within_5s_naming_context_and_server() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config");
    std::fs::write(
        &config,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: http://127.0.0.1:{port}\nusers:\n- name: u\n  user:\n    token: t\ncontexts:\n- name: ci-cluster\n  context:\n    cluster: c\n    user: u\ncurrent-context: ci-cluster\n"
        ),
    )
    .unwrap();
    let started = Instant::now();
    let error = connect_with(&[config], None).await.unwrap_err().to_string();
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(
        error.starts_with(&format!(
            "cannot reach the Kubernetes API server at http://127.0.0.1:{port} (context ci-cluster):"
        )),
        "{error}"
    );
    assert!(error.contains("refused"), "{error}");

    // A server that accepts but never answers in time.
    let api = StandIn::start().await.unwrap();
    api.set_latency(Duration::from_secs(30));
    let config = dir.path().join("slow");
    api.write_kubeconfig(&config, "slow").unwrap();
    let started = Instant::now();
    let error = connect_with(&[config], None).await.unwrap_err().to_string();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(
        error.contains("(context slow)") && error.contains(&api.url()),
        "{error}"
    );
    assert!(error.contains("no answer to GET /version"), "{error}");
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

#[tokio::test]
async fn connect_picks_the_current_context_or_the_named_one() {
    let (a, b) = (
        StandIn::start().await.unwrap(),
        StandIn::start().await.unwrap(),
    );
    let dir = tempfile::tempdir().unwrap();
    let files: Vec<PathBuf> = vec![dir.path().join("a"), dir.path().join("b")];
    a.write_kubeconfig(&files[0], "ctx-a").unwrap();
    b.write_kubeconfig(&files[1], "ctx-b").unwrap();

    // Merged like KUBECONFIG=a:b: the first file's current-context wins.
    let current = connect_with(&files, None)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        (current.context.as_str(), current.server.as_str()),
        ("ctx-a", a.url().as_str())
    );
    assert!(!current.in_cluster);
    let named = connect_with(&files, Some("ctx-b"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        (named.context.as_str(), named.server.as_str()),
        ("ctx-b", b.url().as_str())
    );
    assert_eq!(b.requests().last().unwrap().path, "/version");

    let error = connect_with(&files, Some("prod"))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("no context \"prod\"") && error.contains("ctx-a, ctx-b"),
        "{error}"
    );

    b.set_token("rotated");
    let error = connect_with(&files, Some("ctx-b"))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("rejected the credentials") && error.contains("(context ctx-b)"),
        "{error}"
    );
}

/// The whole cycle against a real cluster, when `EPHEM_TEST_KUBECONFIG`
/// names its kubeconfig (and `EPHEM_TEST_KUBE_CONTEXT` a context, if not the
/// current one); without it, this test only says it did not run.
#[tokio::test]
async fn a_real_cluster_goes_through_the_whole_cycle() {
    let Some(kubeconfig) = std::env::var_os("EPHEM_TEST_KUBECONFIG") else {
        eprintln!("skipped: EPHEM_TEST_KUBECONFIG is not set");
        return;
    };
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
