//! The Kubernetes backend against the stand-in as a shared, production-like
//! cluster behaves: each kind of 403 told apart (Pod Security, a webhook, a
//! LimitRange, RBAC), a new namespace's ServiceAccount waited for, states
//! that recover waited for (Unschedulable, throttled pulls, crashes within
//! `restarts`) with the latest event in the progress line, states that
//! cannot failed at once, and the readiness watch resuming from its last
//! resourceVersion and listing again after a 410.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use ephem_fixtures::kubernetes::client::connect_with;
use ephem_fixtures::kubernetes::labels;
use ephem_fixtures::kubernetes::KubernetesBackend;
use ephem_fixtures::{
    Backend, EnvError, EnvEvent, Environment, EphemConfig, RunContext, ShardContext,
};
use ephem_kube_stand_in::{Fate, Lifecycle, PodSecurityLevel, StandIn, Webhook};
use serde_json::{json, Value};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

struct Fixture {
    api: StandIn,
    backend: Arc<KubernetesBackend>,
    events: UnboundedReceiver<EnvEvent>,
    _dir: tempfile::TempDir,
}

async fn fixture(config: &str, lifecycle: Option<Lifecycle>) -> Fixture {
    let api = StandIn::start().await.expect("stand-in starts");
    if let Some(lifecycle) = lifecycle {
        api.set_lifecycle(lifecycle);
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let kubeconfig = dir.path().join("config");
    api.write_kubeconfig(&kubeconfig, "stand-in").unwrap();
    let cluster = connect_with(&[kubeconfig], None)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let config = EphemConfig::parse(config, "ephem.toml").unwrap_or_else(|e| panic!("{e}"));
    let (tx, events) = unbounded_channel();
    let backend = KubernetesBackend::with_cluster(cluster, config, tx)
        .with_teardown_wait(Duration::from_secs(2));
    Fixture {
        api,
        backend: Arc::new(backend),
        events,
        _dir: dir,
    }
}

static NEXT_RUN: AtomicU32 = AtomicU32::new(1);

fn shard() -> ShardContext {
    let run = NEXT_RUN.fetch_add(1, Ordering::Relaxed);
    ShardContext {
        run: RunContext {
            run_id: format!("{run:08x}-adm0-bbbb-cccc-{}", std::process::id()),
            shard_count: 1,
            expires_at: SystemTime::now() + Duration::from_secs(1800),
        },
        shard: 1,
    }
}

fn namespace_of(shard: &ShardContext) -> String {
    labels::namespace_name("ephem", &shard.run.run_id, shard.shard)
}

fn quick() -> Lifecycle {
    Lifecycle::new(Duration::from_millis(20), Duration::from_millis(50))
}

impl Fixture {
    async fn provision(&self, s: &ShardContext) -> Result<Environment, EnvError> {
        self.backend.provision(s).await
    }

    async fn fails(&self, s: &ShardContext) -> String {
        let err = self
            .provision(s)
            .await
            .expect_err("provisioning should fail");
        self.backend.teardown(s).await.unwrap();
        let line = err.to_string();
        assert!(
            !line.contains('\n') || matches!(err, EnvError::NotReady { .. }),
            "{line}"
        );
        line
    }

    /// Every `Waiting` event so far, as `service: message`.
    fn waited(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        while let Ok(event) = self.events.try_recv() {
            if let EnvEvent::Waiting {
                service, message, ..
            } = event
            {
                out.push(format!("{service}: {message}"));
            }
        }
        out
    }
}

const ONE: &str = r#"
backend = "kubernetes"
[services.svc]
image = "svc:1"
ports = [8080]
wait = { tcp = 8080 }
startup-timeout = "60s"
"#;

// ---- States that recover are waited for; those that cannot fail at once ----

#[tokio::test]
async fn a_pod_unschedulable_for_3s_that_then_schedules_passes_and_says_why_it_waits() {
    let message = "0/3 nodes are available: 3 Insufficient memory. preemption: 0/3 nodes are available: 3 No preemption victims found for incoming pod.";
    let lifecycle = quick().rule(
        "svc",
        Fate::UnschedulableFor {
            message: message.into(),
            duration: Duration::from_secs(3),
        },
    );
    let mut f = fixture(ONE, Some(lifecycle)).await;
    let s = shard();
    f.provision(&s).await.unwrap_or_else(|e| panic!("{e}"));
    let waited = f.waited();
    assert!(
        waited
            .iter()
            .any(|w| w == &format!("svc: FailedScheduling: {message}")),
        "the progress line shows the scheduler's event: {waited:?}"
    );
    f.backend.teardown(&s).await.unwrap();
}

#[tokio::test]
async fn a_throttled_pull_that_succeeds_on_the_second_try_passes() {
    let throttled = "rpc error: code = Unknown desc = failed to pull and unpack image \"docker.io/library/svc:1\": failed to copy: httpReadSeeker: failed open: unexpected status code https://registry-1.docker.io/v2/library/svc/manifests/sha256:8d0b: 429 Too Many Requests - Server message: toomanyrequests: You have reached your pull rate limit. You may increase the limit by authenticating and upgrading: https://www.docker.com/increase-rate-limit";
    let lifecycle = quick().rule(
        "svc",
        Fate::PullFailsThen {
            message: throttled.into(),
            failures: 1,
            log: Vec::new(),
        },
    );
    let mut f = fixture(ONE, Some(lifecycle)).await;
    let s = shard();
    f.provision(&s).await.unwrap_or_else(|e| panic!("{e}"));
    let waited = f.waited();
    assert!(
        waited.iter().any(|w| w.contains("429 Too Many Requests")),
        "the progress line shows the throttled pull: {waited:?}"
    );
    f.backend.teardown(&s).await.unwrap();
}

#[tokio::test]
async fn an_image_that_does_not_exist_fails_within_2s_naming_the_image() {
    let missing = "rpc error: code = NotFound desc = failed to pull and unpack image \"docker.io/library/svc:1\": failed to resolve reference \"docker.io/library/svc:1\": docker.io/library/svc:1: not found";
    let lifecycle = quick().rule(
        "svc",
        Fate::PullFails {
            message: missing.into(),
        },
    );
    let f = fixture(ONE, Some(lifecycle)).await;
    let s = shard();
    let started = Instant::now();
    let err = f.provision(&s).await.unwrap_err();
    let took = started.elapsed();
    f.backend.teardown(&s).await.unwrap();
    assert!(
        took < Duration::from_secs(2),
        "failed only after {took:?}: {err}"
    );
    let EnvError::NotReady { reason, .. } = &err else {
        panic!("{err}")
    };
    assert!(
        reason.starts_with("container svc cannot pull image \"svc:1\": it does not exist"),
        "{reason}"
    );
    assert!(reason.contains(missing), "the kubelet's words: {reason}");
}

/// Provisions with the pod's status set by hand, for states our pods only
/// reach through something else.
async fn by_hand(config: &str, steps: &[(Value, bool)]) -> Result<(), EnvError> {
    let f = fixture(config, None).await;
    let s = shard();
    let ns = namespace_of(&s);
    let backend = f.backend.clone();
    let task = {
        let s = s.clone();
        tokio::spawn(async move { backend.provision(&s).await })
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while !f
        .api
        .objects(&ns, "pods")
        .iter()
        .any(|p| p["metadata"]["name"] == "svc")
    {
        assert!(Instant::now() < deadline, "no pod");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for (status, final_) in steps {
        f.api.set_pod_status(&ns, "svc", status.clone());
        tokio::time::sleep(Duration::from_millis(300)).await;
        if !final_ {
            assert!(
                !task.is_finished(),
                "gave up on a state that recovers: {status}"
            );
        }
    }
    let outcome = tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("decided")
        .unwrap()
        .map(|_| ());
    f.backend.teardown(&s).await.unwrap();
    outcome
}

fn container(state: Value, restarts: i32, last_exit: Option<i32>) -> Value {
    let mut c = json!({"name": "svc", "image": "svc:1", "imageID": "", "ready": false,
        "restartCount": restarts, "state": state});
    if let Some(code) = last_exit {
        c["lastState"] = json!({"terminated": {"exitCode": code}});
    }
    json!({"phase": "Pending", "containerStatuses": [c]})
}

fn ready_now() -> Value {
    json!({"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}],
        "containerStatuses": [{"name": "svc", "image": "svc:1", "imageID": "", "ready": true,
            "restartCount": 2, "state": {"running": {"startedAt": "2026-01-01T00:00:00Z"}}}]})
}

#[tokio::test]
async fn crashes_within_the_configured_restarts_are_waited_for_and_one_more_fails() {
    let config = format!("{ONE}kubernetes = {{ restarts = 2 }}\n");
    let crash = |restarts| {
        container(
            json!({"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 10s restarting failed container=svc"}}),
            restarts,
            Some(1),
        )
    };
    by_hand(&config, &[(crash(1), false), (ready_now(), true)])
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let err = by_hand(&config, &[(crash(1), false), (crash(2), true)])
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("container svc is in CrashLoopBackOff (it exited with code 1) after 2 restarts (restarts = 2 allowed)"),
        "{err}"
    );
}

#[tokio::test]
async fn config_errors_fail_at_once_unless_the_kubelet_only_lags() {
    let lagging = container(
        json!({"waiting": {"reason": "CreateContainerConfigError", "message": "failed to sync secret cache: timed out waiting for the condition"}}),
        0,
        None,
    );
    by_hand(ONE, &[(lagging.clone(), false), (ready_now(), true)])
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let missing = container(
        json!({"waiting": {"reason": "CreateContainerConfigError", "message": "couldn't find key PW in Secret ns/ephem-secrets"}}),
        0,
        None,
    );
    let err = by_hand(ONE, &[(lagging, false), (missing, true)])
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("container svc is in CreateContainerConfigError: couldn't find key PW"),
        "{err}"
    );
}

#[tokio::test]
async fn a_root_image_under_restricted_fails_at_once_saying_which_key_to_set() {
    let config = format!("{ONE}[kubernetes]\npod-security = \"restricted\"\n");
    let f = fixture(&config, Some(quick())).await;
    let err = f.fails(&shard()).await;
    assert!(
        err.contains("container has runAsNonRoot and image will run as root")
            && err
                .contains("set [services.svc.kubernetes] run-as-user to the image's non-root user"),
        "{err}"
    );
}

// ---- A 403 is not always RBAC ----

#[tokio::test]
async fn a_pod_security_refusal_names_the_pod_and_the_fields() {
    // The cluster enforces restricted by default; with pod-security = "none"
    // cargo-ephem neither labels the namespace nor hardens the pod.
    let config = format!("{ONE}[kubernetes]\npod-security = \"none\"\n");
    let f = fixture(&config, Some(quick())).await;
    f.api.set_pod_security_default(PodSecurityLevel::Restricted);
    let err = f.fails(&shard()).await;
    assert!(
        err.contains("Pod Security admission (\"restricted:latest\") refused pod svc:")
            && err.contains("allowPrivilegeEscalation != false (container \"svc\" must set securityContext.allowPrivilegeEscalation=false)")
            && err.contains("[kubernetes] pod-security = \"restricted\""),
        "{err}"
    );
    assert!(!err.contains("rbac.yaml"), "not an RBAC problem: {err}");
}

#[tokio::test]
async fn the_namespace_label_makes_the_clusters_verdict_and_ours_agree() {
    // A cluster that enforces restricted by default: the example (restricted,
    // running as its images' users) provisions; its namespace says so.
    let example = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/postgres-redis/ephem.toml"
    ))
    .unwrap();
    let lifecycle = quick()
        .rule(
            "postgres",
            Fate::run(&["database system is ready to accept connections"; 2]),
        )
        .rule("redis", Fate::run(&["Ready to accept connections"]));
    let f = fixture(
        &format!("backend = \"kubernetes\"\n{example}"),
        Some(lifecycle),
    )
    .await;
    f.api.set_pod_security_default(PodSecurityLevel::Restricted);
    let s = shard();
    f.provision(&s).await.unwrap_or_else(|e| panic!("{e}"));
    let ns = f.api.namespace(&namespace_of(&s)).unwrap();
    assert_eq!(
        ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"],
        "restricted"
    );
    f.backend.teardown(&s).await.unwrap();

    // With the default (baseline), a cluster whose default is restricted
    // still admits the pods: the namespace's label decides.
    let f = fixture(ONE, Some(quick())).await;
    f.api.set_pod_security_default(PodSecurityLevel::Restricted);
    let s = shard();
    f.provision(&s).await.unwrap_or_else(|e| panic!("{e}"));
    f.backend.teardown(&s).await.unwrap();
}

#[tokio::test]
async fn a_webhook_denial_names_the_webhook() {
    let f = fixture(ONE, Some(quick())).await;
    f.api.deny_with_webhook(Webhook::denying(
        "validate.kyverno.svc-fail",
        "pods",
        "\n\nresource Pod/ns/svc was blocked due to the following policies\n\nrequire-team-label:\n  check-team: 'validation error: label team is required'\n",
    ));
    let err = f.fails(&shard()).await;
    assert!(
        err.contains("the cluster's admission webhook \"validate.kyverno.svc-fail\" refused to create pod svc")
            && err.contains("resource Pod/ns/svc was blocked due to the following policies require-team-label: check-team: 'validation error: label team is required'")
            && err.contains("ask the cluster's admins"),
        "{err}"
    );
    assert!(!err.contains('\n') && !err.contains("rbac.yaml"), "{err}");

    let f = fixture(ONE, Some(quick())).await;
    f.api.deny_with_webhook(Webhook {
        code: Some(400),
        ..Webhook::denying(
            "namespace-owner.policy.example",
            "namespaces",
            "namespaces need an owner label",
        )
    });
    let err = f.provision(&shard()).await.unwrap_err().to_string();
    assert!(
        err.contains("the cluster's admission webhook \"namespace-owner.policy.example\" refused to create namespace ephem-")
            && err.contains("namespaces need an owner label"),
        "{err}"
    );
}

#[tokio::test]
async fn a_limit_range_refusal_names_the_limit_range_and_the_key_to_change() {
    let f = fixture(ONE, Some(quick())).await;
    // The ServiceAccount lags, so pods wait: time for a cluster policy to
    // add its LimitRange to the new namespace, as a policy engine would.
    f.api.set_service_account_delay(Duration::from_millis(500));
    let s = shard();
    let ns = namespace_of(&s);
    let backend = f.backend.clone();
    let task = {
        let s = s.clone();
        tokio::spawn(async move { backend.provision(&s).await })
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while f.api.namespace(&ns).is_none() {
        assert!(Instant::now() < deadline, "no namespace");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    f.api.insert_object(
        &ns,
        "limitranges",
        json!({"metadata": {"name": "policy-max"}, "spec": {"limits": [{"type": "Container",
            "max": {"cpu": "500m"}, "default": {"cpu": "500m"}, "defaultRequest": {"cpu": "500m"}}]}}),
    );
    let err = task.await.unwrap().unwrap_err().to_string();
    f.backend.teardown(&s).await.unwrap();
    assert!(
        err.contains("a LimitRange of namespace")
            && err.contains(
                "refused pod svc (maximum cpu usage per Container is 500m, but limit is 1.)"
            )
            && err.contains("[kubernetes.limits]"),
        "{err}"
    );
}

#[tokio::test]
async fn a_new_namespaces_missing_service_account_is_waited_for() {
    let f = fixture(ONE, Some(quick())).await;
    f.api.set_service_account_delay(Duration::from_secs(1));
    let s = shard();
    f.provision(&s).await.unwrap_or_else(|e| panic!("{e}"));
    let tries = f
        .api
        .requests()
        .iter()
        .filter(|r| r.method == "POST" && r.path.ends_with("/pods"))
        .count();
    assert!(tries > 1, "the first pod was not refused: {tries} tries");
    f.backend.teardown(&s).await.unwrap();
}

#[tokio::test]
async fn rbac_denials_still_name_the_verb_resource_and_manifest() {
    let f = fixture(ONE, Some(quick())).await;
    f.api.forbid("create", "pods");
    let err = f.fails(&shard()).await;
    assert!(
        err.contains("forbids create on pods in namespace ephem-")
            && err.contains("examples/kubernetes/rbac.yaml"),
        "{err}"
    );
}

// ---- The readiness watch on a cluster whose watches end ----

/// `resourceVersion` of each watch of the namespace's pods, in order.
fn watch_versions(api: &StandIn, ns: &str) -> Vec<String> {
    api.requests()
        .iter()
        .filter(|r| {
            r.path == format!("/api/v1/namespaces/{ns}/pods")
                && r.param("watch").as_deref() == Some("true")
        })
        .map(|r| r.param("resourceVersion").unwrap_or_default())
        .collect()
}

fn running_not_ready() -> Value {
    json!({"phase": "Running", "conditions": [{"type": "Ready", "status": "False"}],
        "containerStatuses": [{"name": "svc", "image": "svc:1", "imageID": "", "ready": false,
            "restartCount": 0, "state": {"running": {"startedAt": "2026-01-01T00:00:00Z"}}}]})
}

async fn until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn the_readiness_watch_resumes_from_its_last_resource_version_and_lists_again_after_410() {
    let f = fixture(ONE, None).await;
    f.api.set_bookmark_interval(None);
    let s = shard();
    let ns = namespace_of(&s);
    let backend = f.backend.clone();
    let task = {
        let s = s.clone();
        tokio::spawn(async move { backend.provision(&s).await })
    };
    until("the pod is watched", || {
        !watch_versions(&f.api, &ns).is_empty()
    })
    .await;

    // The pod changes; the API server drops the watch; the client resumes
    // from the pod's resourceVersion, the last it saw.
    let seen = {
        f.api.set_pod_status(&ns, "svc", running_not_ready());
        tokio::time::sleep(Duration::from_millis(200)).await;
        f.api.objects(&ns, "pods")[0]["metadata"]["resourceVersion"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    f.api.end_watches();
    until("the watch resumed", || {
        watch_versions(&f.api, &ns).len() >= 2
    })
    .await;
    assert_eq!(watch_versions(&f.api, &ns)[1], seen);

    // A bookmark moves it on without any change to the pod.
    f.api
        .insert_namespace(json!({"metadata": {"name": "elsewhere"}}));
    let bookmarked = f.api.namespace("elsewhere").unwrap()["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_owned();
    f.api.bookmark_watches();
    tokio::time::sleep(Duration::from_millis(200)).await;
    f.api.end_watches();
    until("the watch resumed again", || {
        watch_versions(&f.api, &ns).len() >= 3
    })
    .await;
    assert_eq!(watch_versions(&f.api, &ns)[2], bookmarked);

    // A short history, and changes before the resumed watch is answered (a
    // slow API server): 410, then a list.
    f.api.set_watch_history(2);
    f.api.set_latency(Duration::from_secs(1));
    f.api.end_watches();
    tokio::time::sleep(Duration::from_millis(100)).await;
    for i in 0..5 {
        f.api
            .insert_namespace(json!({"metadata": {"name": format!("churn-{i}")}}));
    }
    f.api.clear_requests();
    f.api.set_latency(Duration::ZERO);
    until("listed again", || {
        f.api.requests().iter().any(|r| {
            r.path == format!("/api/v1/namespaces/{ns}/pods") && r.param("watch").is_none()
        })
    })
    .await;
    assert!(!task.is_finished(), "a 410 is no reason to give up");
    f.api.set_pod_status(
        &ns,
        "svc",
        json!({"conditions": [{"type": "Ready", "status": "True"}],
        "containerStatuses": [{"name": "svc", "image": "svc:1", "imageID": "", "ready": true,
            "restartCount": 0, "state": {"running": {"startedAt": "2026-01-01T00:00:00Z"}}}]}),
    );
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("ready after the re-list")
        .unwrap()
        .unwrap_or_else(|e| panic!("{e}"));
    f.backend.teardown(&s).await.unwrap();
}
