//! The Kubernetes backend with the real kube client against the loopback
//! stand-in: a shard's objects in order, readiness from watch events for
//! each wait kind, each failure reason, port-forwards carrying real bytes,
//! exports, service deaths, teardown, prepull, Helm, and how reaching the
//! cluster and RBAC fail.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use ephem_fixtures::kubernetes::client::connect_with;
use ephem_fixtures::kubernetes::labels;
use ephem_fixtures::kubernetes::render::{PREPULL_LABEL, PREPULL_NAME, SECRET_NAME};
use ephem_fixtures::kubernetes::KubernetesBackend;
use ephem_fixtures::{
    Backend, EnvError, EnvEvent, Environment, EphemConfig, RunContext, ShardContext,
};
use ephem_kube_stand_in::{
    Condition, Fate, Lifecycle, NamespaceDeletion, RecordedRequest, StandIn,
};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

/// A stand-in, the backend on it, and the events the backend reports.
struct Fixture {
    api: StandIn,
    backend: Arc<KubernetesBackend>,
    events: UnboundedReceiver<EnvEvent>,
    dir: tempfile::TempDir,
}

async fn fixture(config: &str) -> Fixture {
    fixture_with(config, |b| b).await
}

async fn fixture_with(
    config: &str,
    adjust: impl FnOnce(KubernetesBackend) -> KubernetesBackend,
) -> Fixture {
    let api = StandIn::start().await.expect("stand-in starts");
    let dir = tempfile::tempdir().expect("temp dir");
    let kubeconfig = dir.path().join("config");
    api.write_kubeconfig(&kubeconfig, "stand-in").unwrap();
    let cluster = connect_with(&[kubeconfig], None)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let config = EphemConfig::parse(config, "ephem.toml").unwrap_or_else(|e| panic!("{e}"));
    let (tx, events) = unbounded_channel();
    let backend = KubernetesBackend::with_cluster(cluster, config, tx)
        .with_teardown_wait(Duration::from_secs(2))
        .with_helm_path(dir.path().join("no-helm-here"));
    Fixture {
        api,
        backend: Arc::new(adjust(backend)),
        events,
        dir,
    }
}

static NEXT_RUN: AtomicU32 = AtomicU32::new(1);

/// Shard `n` of a fresh run: run ids differ per test, so namespaces do.
fn shard(n: u32) -> ShardContext {
    let run = NEXT_RUN.fetch_add(1, Ordering::Relaxed);
    ShardContext {
        run: RunContext {
            run_id: format!("{run:08x}-aaaa-bbbb-cccc-{}", std::process::id()),
            shard_count: n,
            expires_at: SystemTime::now() + Duration::from_secs(1800),
        },
        shard: n,
    }
}

fn namespace_of(shard: &ShardContext) -> String {
    labels::namespace_name("ephem", &shard.run.run_id, shard.shard)
}

fn quick() -> Lifecycle {
    Lifecycle::new(Duration::from_millis(20), Duration::from_millis(50))
}

fn var<'a>(env: &'a Environment, name: &str) -> &'a str {
    env.vars
        .iter()
        .find(|v| v.name == name)
        .map(|v| v.value.as_str())
        .unwrap_or_else(|| panic!("no variable {name}: {:?}", env.vars))
}

/// Creates (POSTs) in the order the stand-in received them: `resource name`.
fn creates(requests: &[RecordedRequest]) -> Vec<String> {
    requests
        .iter()
        .filter(|r| r.method == "POST")
        .map(|r| {
            let resource = r.path.rsplit('/').next().unwrap_or("");
            let name = r
                .json()
                .map(|b| b["metadata"]["name"].as_str().unwrap_or("").to_owned());
            format!("{resource} {}", name.unwrap_or_default())
        })
        .collect()
}

const TWO_SERVICES: &str = r#"
backend = "kubernetes"

[services.db]
image = "postgres:15"
env = { POSTGRES_PASSWORD = "${random}", POSTGRES_DB = "app" }
ports = [5432]
wait = { tcp = 5432 }
startup-timeout = "10s"
export = { DATABASE_URL = "postgres://postgres:${env.POSTGRES_PASSWORD}@${host}:${port.5432}/app" }

[services.app]
image = "app:1"
depends-on = ["db"]
env = { DB_PASSWORD = "${services.db.env.POSTGRES_PASSWORD}", MODE = "test" }
startup-timeout = "10s"
export = { APP_SHARD = "shard-${shard}" }
"#;

#[tokio::test]
async fn a_shards_objects_are_created_in_order_labelled_and_the_secret_kept_out_of_pods() {
    let f = fixture(TWO_SERVICES).await;
    f.api.set_lifecycle(quick());
    let s = shard(2);
    let env = f
        .backend
        .provision(&s)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let ns = namespace_of(&s);
    assert_eq!(
        creates(&f.api.requests()),
        [
            "namespaces ".to_owned() + &ns,
            "resourcequotas ephem-quota".into(),
            "limitranges ephem-limits".into(),
            format!("secrets {SECRET_NAME}"),
            "services db".into(),
            "pods db".into(),
            "pods app".into(),
        ]
    );
    let namespace = f.api.namespace(&ns).expect("the namespace exists");
    let meta = &namespace["metadata"];
    assert_eq!(meta["labels"][labels::MANAGED_BY], labels::MANAGED_BY_VALUE);
    assert_eq!(
        meta["labels"][labels::RUN],
        labels::label_value(&s.run.run_id)
    );
    assert_eq!(meta["labels"][labels::SHARD], "2");
    assert_eq!(
        meta["annotations"][labels::PID],
        std::process::id().to_string()
    );
    assert!(
        meta["annotations"][labels::JANITOR_EXPIRES].is_string(),
        "{meta}"
    );
    assert!(
        meta["annotations"][labels::JANITOR_TTL].is_string(),
        "{meta}"
    );
    for pod in f.api.objects(&ns, "pods") {
        assert_eq!(
            pod["metadata"]["labels"][labels::RUN],
            labels::label_value(&s.run.run_id)
        );
    }

    // The generated password is in the Secret, never in a pod spec, and
    // collected for masking; the export carries the real one.
    assert_eq!(env.secrets.len(), 1, "{:?}", env.secrets);
    let password = &env.secrets[0];
    let pods = serde_json::to_string(&f.api.objects(&ns, "pods")).unwrap();
    assert!(
        !pods.contains(password.as_str()),
        "the password is in a pod spec"
    );
    assert!(pods.contains("secretKeyRef"), "{pods}");
    let url = var(&env, "DATABASE_URL");
    assert!(
        url.starts_with(&format!("postgres://postgres:{password}@127.0.0.1:")),
        "{url}"
    );
    assert_eq!(var(&env, "APP_SHARD"), "shard-2");
    assert!(
        env.connect_hints
            .iter()
            .any(|h| h == &format!("remove with: kubectl --context stand-in delete namespace {ns}")),
        "{:?}",
        env.connect_hints
    );
    f.backend.teardown(&s).await.unwrap();
}

/// Provisions in the background.
fn provision_in_background(
    f: &Fixture,
    s: &ShardContext,
) -> tokio::task::JoinHandle<Result<Environment, EnvError>> {
    let backend = f.backend.clone();
    let s = s.clone();
    tokio::spawn(async move { backend.provision(&s).await })
}

/// A second backend on the same stand-in and configuration.
fn clone_backend(f: &Fixture) -> KubernetesBackend {
    let (tx, _) = unbounded_channel();
    KubernetesBackend::with_cluster(f.backend.cluster().clone(), f.backend.config().clone(), tx)
}

async fn until(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn pod_exists(api: &StandIn, ns: &str, pod: &str) -> bool {
    api.objects(ns, "pods")
        .iter()
        .any(|p| p["metadata"]["name"] == pod)
}

fn running(ready: bool) -> Value {
    json!({
        "phase": "Running",
        "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}],
        "containerStatuses": [{"name": "svc", "image": "x", "imageID": "", "ready": ready,
            "restartCount": 0, "state": {"running": {"startedAt": "2026-01-01T00:00:00Z"}}}],
    })
}

const ONE_SERVICE: &str = r#"
backend = "kubernetes"
[services.svc]
image = "svc:1"
ports = [8080]
startup-timeout = "20s"
"#;

fn one_service(wait: &str) -> String {
    format!("{ONE_SERVICE}wait = {wait}\n")
}

#[tokio::test]
async fn a_probe_wait_ends_with_the_ready_condition_from_watch_events() {
    let f = fixture(&one_service("{ tcp = 8080 }")).await;
    let s = shard(1);
    let ns = namespace_of(&s);
    let task = provision_in_background(&f, &s);
    until("the pod is created", 5, || pod_exists(&f.api, &ns, "svc")).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!task.is_finished(), "ready before the pod ran");
    f.api.set_pod_status(&ns, "svc", running(false));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!task.is_finished(), "ready before the probe passed");
    let pod = &f.api.objects(&ns, "pods")[0];
    assert_eq!(
        pod["spec"]["containers"][0]["readinessProbe"]["tcpSocket"]["port"],
        8080
    );
    f.api.set_pod_status(&ns, "svc", running(true));
    let env = tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("ready once the condition holds")
        .unwrap()
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(env.vars.is_empty());
    let watched = f.api.requests().iter().any(|r| {
        r.path.ends_with(&format!("/namespaces/{ns}/pods"))
            && r.param("watch").as_deref() == Some("true")
    });
    assert!(watched, "readiness comes from a watch");
}

#[tokio::test]
async fn a_running_wait_ends_when_the_container_runs() {
    let f = fixture(ONE_SERVICE).await;
    let s = shard(1);
    let ns = namespace_of(&s);
    let task = provision_in_background(&f, &s);
    until("the pod is created", 5, || pod_exists(&f.api, &ns, "svc")).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!task.is_finished());
    // Not Ready (no probe passed), but running: that is all a service
    // without a wait needs.
    f.api.set_pod_status(&ns, "svc", running(false));
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("ready once running")
        .unwrap()
        .unwrap_or_else(|e| panic!("{e}"));
}

#[tokio::test]
async fn a_log_wait_counts_matching_lines_in_the_followed_log() {
    let f = fixture(&one_service(r#"{ log = "ready to accept", times = 2 }"#)).await;
    let s = shard(1);
    let ns = namespace_of(&s);
    let task = provision_in_background(&f, &s);
    until("the pod is created", 5, || pod_exists(&f.api, &ns, "svc")).await;
    f.api.set_pod_status(&ns, "svc", running(false));
    f.api
        .append_pod_log(&ns, "svc", "starting\nready to accept connections\n");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!task.is_finished(), "ready after one of two lines");
    f.api
        .append_pod_log(&ns, "svc", "restarting\nready to accept connections\n");
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("ready after the second line")
        .unwrap()
        .unwrap_or_else(|e| panic!("{e}"));
    let followed =
        f.api.requests().iter().any(|r| {
            r.path.ends_with("/pods/svc/log") && r.param("follow").as_deref() == Some("true")
        });
    assert!(followed, "the log was followed");
}

#[tokio::test]
async fn a_log_wait_that_times_out_says_how_far_it_got_and_shows_the_log() {
    let config = r#"
backend = "kubernetes"
[services.svc]
image = "svc:1"
wait = { log = "ready to accept", times = 2 }
startup-timeout = "1s"
"#;
    let f = fixture(config).await;
    f.api
        .set_lifecycle(quick().rule("svc", Fate::run(&["ready to accept connections"])));
    let s = shard(1);
    let err = f.backend.provision(&s).await.unwrap_err();
    let EnvError::NotReady {
        reason, logs, wait, ..
    } = &err
    else {
        panic!("not a readiness failure: {err}")
    };
    assert!(
        reason.starts_with("timed out after 1s (last seen: saw 1 of 2 matching log lines)"),
        "{reason}"
    );
    assert_eq!(wait, "log \"ready to accept\" x2 within 1s");
    assert_eq!(logs, &["ready to accept connections"]);
    f.backend.teardown(&s).await.unwrap();
}

/// Provisions `image` by `fate` with a generous startup timeout and
/// returns the error, which must come at once.
async fn failure(fate: Fate) -> (EnvError, StandIn) {
    let config = r#"
backend = "kubernetes"
[services.svc]
image = "svc:1"
ports = [8080]
wait = { tcp = 8080 }
startup-timeout = "60s"
"#;
    let f = fixture(config).await;
    f.api.set_lifecycle(quick().rule("svc", fate));
    let s = shard(3);
    let started = Instant::now();
    let err = f.backend.provision(&s).await.unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "failed only after {:?}: {err}",
        started.elapsed()
    );
    f.backend.teardown(&s).await.unwrap();
    (err, f.api)
}

fn parts(err: &EnvError) -> (&str, &[String]) {
    match err {
        EnvError::NotReady {
            shard,
            service,
            reason,
            logs,
            ..
        } => {
            assert_eq!((*shard, service.as_str()), (3, "svc"), "{err}");
            (reason, logs)
        }
        other => panic!("not a readiness failure: {other}"),
    }
}

#[tokio::test]
async fn an_image_that_cannot_be_pulled_fails_at_once_with_the_kubelets_events() {
    let (err, _api) = failure(Fate::PullFails {
        message: "rpc error: code = NotFound desc = failed to resolve reference \"docker.io/library/svc:1\": not found".into(),
    })
    .await;
    let (reason, logs) = parts(&err);
    // The image as ephem.toml names it: EPHEM_REGISTRY_MIRROR (set when the
    // suite runs) is the Docker daemon's, and never reaches a pod.
    assert!(
        reason.starts_with("container svc cannot pull image \"svc:1\": it does not exist"),
        "{reason}"
    );
    assert!(reason.contains("[pod ephem-"), "{reason}");
    assert!(
        logs.iter()
            .any(|l| l.starts_with("event Warning Failed: Failed to pull image \"svc:1\"")),
        "events instead of logs: {logs:?}"
    );
    let line = err.to_string();
    assert!(
        line.starts_with("shard 3: service svc not ready (tcp 8080 within 1m):"),
        "{line}"
    );
}

#[tokio::test]
async fn an_exit_fails_at_once_with_its_code_and_last_log_lines() {
    let (err, _api) = failure(Fate::exit(
        3,
        &["loading config", "fatal: cannot open config file"],
    ))
    .await;
    let (reason, logs) = parts(&err);
    assert!(
        reason.starts_with("container svc exited with code 3"),
        "{reason}"
    );
    assert_eq!(logs, ["loading config", "fatal: cannot open config file"]);
}

#[tokio::test]
async fn an_unschedulable_pod_is_waited_for_and_a_timeout_says_why() {
    let config = r#"
backend = "kubernetes"
[services.svc]
image = "svc:1"
ports = [8080]
wait = { tcp = 8080 }
startup-timeout = "2s"
"#;
    let f = fixture(config).await;
    f.api.set_lifecycle(quick().rule(
        "svc",
        Fate::Unschedulable {
            message: "0/3 nodes are available: 3 Insufficient memory.".into(),
        },
    ));
    let s = shard(3);
    let err = f.backend.provision(&s).await.unwrap_err();
    f.backend.teardown(&s).await.unwrap();
    let (reason, logs) = parts(&err);
    assert!(
        reason.starts_with(
            "timed out after 2s (last seen: the pod is Unschedulable: 0/3 nodes are available: 3 Insufficient memory.; latest event: FailedScheduling: 0/3 nodes are available: 3 Insufficient memory.)"
        ),
        "{reason}"
    );
    assert_eq!(
        logs,
        ["event Warning FailedScheduling: 0/3 nodes are available: 3 Insufficient memory."]
    );
}

/// A pod whose status the test sets by hand, for reasons our pods only
/// reach through something else (a crash loop needs a restart policy a
/// mutating webhook may have set; a config error, a Secret gone missing).
async fn failure_by_hand(status: Value, log: &str) -> EnvError {
    let f = fixture(&one_service("{ tcp = 8080 }")).await;
    let s = shard(3);
    let ns = namespace_of(&s);
    let task = provision_in_background(&f, &s);
    until("the pod is created", 5, || pod_exists(&f.api, &ns, "svc")).await;
    f.api.append_pod_log(&ns, "svc", log);
    f.api.set_pod_status(&ns, "svc", status);
    let err = tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("fails at once")
        .unwrap()
        .unwrap_err();
    f.backend.teardown(&s).await.unwrap();
    err
}

#[tokio::test]
async fn a_crash_loop_fails_at_once_with_the_last_exit_and_logs() {
    let err = failure_by_hand(
        json!({"phase": "Running", "containerStatuses": [{"name": "svc", "image": "svc:1", "imageID": "",
            "ready": false, "restartCount": 4, "lastState": {"terminated": {"exitCode": 1}},
            "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 40s restarting failed container=svc"}}}]}),
        "panic: no DATABASE_URL\n",
    )
    .await;
    let (reason, logs) = parts(&err);
    assert!(
        reason.starts_with(
            "container svc is in CrashLoopBackOff (it exited with code 1): back-off 40s"
        ),
        "{reason}"
    );
    assert_eq!(logs, ["panic: no DATABASE_URL"]);
}

#[tokio::test]
async fn an_invalid_image_name_fails_at_once() {
    // ephem.toml refuses such names; a mirror or an admission webhook that
    // rewrites images can still produce one.
    let err = failure_by_hand(
        json!({"phase": "Pending", "containerStatuses": [{"name": "svc", "image": "Mirror/svc:1", "imageID": "",
            "ready": false, "restartCount": 0,
            "state": {"waiting": {"reason": "InvalidImageName", "message": "Failed to apply default image tag \"Mirror/svc:1\": invalid reference format"}}}]}),
        "",
    )
    .await;
    let (reason, _) = parts(&err);
    assert!(
        reason.starts_with("container svc is in InvalidImageName: Failed to apply"),
        "{reason}"
    );
}

#[tokio::test]
async fn a_container_config_error_fails_at_once() {
    let err = failure_by_hand(
        json!({"phase": "Pending", "containerStatuses": [{"name": "svc", "image": "svc:1", "imageID": "",
            "ready": false, "restartCount": 0,
            "state": {"waiting": {"reason": "CreateContainerConfigError", "message": "secret \"ephem-secrets\" not found"}}}]}),
        "",
    )
    .await;
    let (reason, _) = parts(&err);
    assert!(
        reason.starts_with(
            "container svc is in CreateContainerConfigError: secret \"ephem-secrets\" not found"
        ),
        "{reason}"
    );
}

#[tokio::test]
async fn a_pod_the_quota_refuses_fails_with_the_admissions_words() {
    let config = format!("{TWO_SERVICES}\n[kubernetes.quota]\npods = 1\n");
    let f = fixture(&config).await;
    f.api.set_lifecycle(quick());
    let s = shard(3);
    let err = f.backend.provision(&s).await.unwrap_err();
    let EnvError::NotReady {
        service, reason, ..
    } = &err
    else {
        panic!("{err}")
    };
    assert_eq!(service, "app");
    assert!(
        reason.contains(
            "exceeded quota: ephem-quota, requested: pods=1, used: pods=1, limited: pods=1"
        ) && reason.contains("[kubernetes.quota]"),
        "{reason}"
    );
    f.backend.teardown(&s).await.unwrap();
}

/// A local server playing the pod's port: answers every request line with
/// `ok <line>`, on every connection.
async fn line_server() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                while let Ok(n) = stream.read(&mut buf).await {
                    if n == 0 {
                        return;
                    }
                    let answer = format!("ok {}", String::from_utf8_lossy(&buf[..n]));
                    if stream.write_all(answer.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

async fn ask(addr: &str, text: &str) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(text.as_bytes()).await.unwrap();
    let mut answer = vec![0u8; 3 + text.len()];
    tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut answer))
        .await
        .expect("an answer through the port-forward")
        .unwrap();
    String::from_utf8(answer).unwrap()
}

#[tokio::test]
async fn port_forwards_carry_bytes_both_ways_on_every_connection_and_exports_point_at_them() {
    let f = fixture(TWO_SERVICES).await;
    f.api.set_lifecycle(quick());
    f.api.forward(None, "db", 5432, line_server().await);
    let s = shard(1);
    let env = f
        .backend
        .provision(&s)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let url = var(&env, "DATABASE_URL");
    let addr = url
        .split('@')
        .nth(1)
        .and_then(|rest| rest.strip_suffix("/app"))
        .unwrap()
        .to_owned();
    assert!(addr.starts_with("127.0.0.1:"), "{addr}");
    // Several connections, each its own stream, some at once.
    let answers = futures_util::future::join_all((0..4).map(|i| {
        let addr = addr.clone();
        async move { ask(&addr, &format!("hello {i}")).await }
    }))
    .await;
    assert_eq!(
        answers,
        ["ok hello 0", "ok hello 1", "ok hello 2", "ok hello 3"]
    );
    assert_eq!(ask(&addr, "again").await, "ok again");
    let streams = f
        .api
        .requests()
        .iter()
        .filter(|r| r.path.ends_with("/pods/db/portforward"))
        .count();
    assert_eq!(streams, 5, "a port-forward stream per connection");
    assert!(
        env.connect_hints
            .iter()
            .any(|h| h.starts_with(&format!("db: {addr} -> 5432 (port-forward"))),
        "{:?}",
        env.connect_hints
    );

    f.backend.teardown(&s).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        TcpStream::connect(&addr).await.is_err(),
        "the listener outlived teardown"
    );
}

#[tokio::test]
async fn inside_the_cluster_exports_name_the_services_dns_name() {
    let config = TWO_SERVICES.replace(
        "backend = \"kubernetes\"\n",
        "backend = \"kubernetes\"\n[kubernetes]\nreach = \"cluster-dns\"\n",
    );
    let f = fixture(&config).await;
    f.api.set_lifecycle(quick());
    let s = shard(1);
    let env = f
        .backend
        .provision(&s)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let ns = namespace_of(&s);
    let url = var(&env, "DATABASE_URL");
    assert!(
        url.ends_with(&format!("@db.{ns}.svc.cluster.local:5432/app")),
        "the Service's full name, which needs no search domain: {url}"
    );
    assert!(
        !f.api
            .requests()
            .iter()
            .any(|r| r.path.ends_with("/portforward")),
        "no port-forward inside the cluster"
    );
    f.backend.teardown(&s).await.unwrap();
}

#[tokio::test]
async fn a_cluster_with_its_own_domain_gets_names_in_it() {
    let config = TWO_SERVICES.replace(
        "backend = \"kubernetes\"\n",
        "backend = \"kubernetes\"\n[kubernetes]\nreach = \"cluster-dns\"\ncluster-domain = \"corp.internal\"\n",
    );
    let f = fixture(&config).await;
    f.api.set_lifecycle(quick());
    let s = shard(1);
    let env = f
        .backend
        .provision(&s)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let ns = namespace_of(&s);
    let url = var(&env, "DATABASE_URL");
    assert!(
        url.ends_with(&format!("@db.{ns}.svc.corp.internal:5432/app")),
        "{url}"
    );
    f.backend.teardown(&s).await.unwrap();
}

/// The next event that is not progress ([`EnvEvent::Waiting`]).
async fn next_event(events: &mut UnboundedReceiver<EnvEvent>) -> EnvEvent {
    loop {
        let event = tokio::time::timeout(Duration::from_secs(5), events.recv())
            .await
            .expect("an event within 5 s")
            .expect("the channel is open");
        if !matches!(event, EnvEvent::Waiting { .. }) {
            return event;
        }
    }
}

fn terminated(code: i32) -> Value {
    json!({"phase": "Failed", "containerStatuses": [{"name": "db", "image": "postgres:15", "imageID": "",
        "ready": false, "restartCount": 0,
        "state": {"terminated": {"exitCode": code, "reason": "Error"}}}]})
}

#[tokio::test]
async fn a_service_that_dies_after_ready_is_reported_once_even_across_a_broken_watch() {
    let mut f = fixture(TWO_SERVICES).await;
    f.api.set_lifecycle(quick());
    let s = shard(2);
    let ns = namespace_of(&s);
    f.backend
        .provision(&s)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    tokio::time::sleep(Duration::from_millis(200)).await;
    // The API server drops every watch; the follower resumes.
    f.api.end_watches();
    tokio::time::sleep(Duration::from_millis(200)).await;
    f.api.set_pod_status(&ns, "db", terminated(137));
    match next_event(&mut f.events).await {
        EnvEvent::ServiceExited {
            shard,
            service,
            exit_code,
            ..
        } => assert_eq!((shard, service.as_str(), exit_code), (2, "db", Some(137))),
        other => panic!("not a service death: {other:?}"),
    }
    // The same death seen again (a re-list) is not reported twice.
    f.api.end_watches();
    tokio::time::sleep(Duration::from_millis(300)).await;
    f.api.update_object(Some(&ns), "pods", "db", |p| {
        p["metadata"]["annotations"] = json!({"touched": "yes"})
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(f.events.try_recv().is_err(), "a death reported twice");
    f.backend.teardown(&s).await.unwrap();
}

#[tokio::test]
async fn a_watch_that_cannot_be_resumed_ends_in_a_warning() {
    let mut f = fixture_with(TWO_SERVICES, |b| {
        b.with_watch_retry(vec![Duration::from_millis(50), Duration::from_millis(50)])
    })
    .await;
    f.api.set_lifecycle(quick());
    let s = shard(2);
    f.backend
        .provision(&s)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    f.api.forbid("watch", "pods");
    f.api.forbid("list", "pods");
    f.api.end_watches();
    match next_event(&mut f.events).await {
        EnvEvent::Warning { shard, message } => {
            assert_eq!(shard, Some(2));
            assert!(
                message.starts_with(
                    "service deaths are no longer reported: the pod watch broke and 2 resumptions"
                ),
                "{message}"
            );
        }
        other => panic!("not a warning: {other:?}"),
    }
    f.api.allow_all();
    f.backend.teardown(&s).await.unwrap();
}

#[tokio::test]
async fn teardown_deletes_the_namespace_by_uid_in_the_background() {
    let f = fixture(TWO_SERVICES).await;
    f.api.set_lifecycle(quick());
    let s = shard(1);
    let ns = namespace_of(&s);
    f.backend
        .provision(&s)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let uid = f.api.namespace(&ns).unwrap()["metadata"]["uid"]
        .as_str()
        .unwrap()
        .to_owned();
    f.api.clear_requests();
    f.backend.teardown(&s).await.unwrap();
    let deletes: Vec<RecordedRequest> = f
        .api
        .requests()
        .into_iter()
        .filter(|r| r.method == "DELETE")
        .collect();
    assert_eq!(deletes.len(), 1, "{deletes:?}");
    assert_eq!(deletes[0].path, format!("/api/v1/namespaces/{ns}"));
    let body = deletes[0].json().unwrap();
    assert_eq!(body["preconditions"]["uid"], uid.as_str());
    assert_eq!(body["propagationPolicy"], "Background");
    assert!(f.api.namespace(&ns).is_none(), "the namespace is gone");
    // Idempotent: a second teardown finds nothing and deletes nothing.
    f.backend.teardown(&s).await.unwrap();
}

#[tokio::test]
async fn a_namespace_still_terminating_is_a_warning_with_what_holds_it() {
    let mut f = fixture(TWO_SERVICES).await;
    f.api.set_lifecycle(quick());
    f.api.set_deletion(NamespaceDeletion::Stuck(vec![Condition::new(
        "NamespaceFinalizersRemaining",
        "SomeFinalizersRemain",
        "Some content in the namespace has finalizers remaining: example.com/hold in 1 resource instances",
    )]));
    let s = shard(4);
    let ns = namespace_of(&s);
    f.backend
        .provision(&s)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let started = Instant::now();
    f.backend.teardown(&s).await.expect("not a failure");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "bounded: {:?}",
        started.elapsed()
    );
    match next_event(&mut f.events).await {
        EnvEvent::Warning { shard, message } => {
            assert_eq!(shard, Some(4));
            assert!(message.starts_with(&format!("namespace {ns} is still Terminating after 2s (NamespaceFinalizersRemaining: Some content")), "{message}");
        }
        other => panic!("not a warning: {other:?}"),
    }
}

#[tokio::test]
async fn a_namespace_whose_create_answer_was_lost_is_found_by_name_and_checked() {
    let f = fixture(TWO_SERVICES).await;
    let s = shard(1);
    let ns = namespace_of(&s);
    // Created, but the runner never heard back: no uid was remembered.
    let uid = f
        .api
        .insert_namespace(json!({"metadata": {"name": ns, "labels": {
            labels::MANAGED_BY: labels::MANAGED_BY_VALUE,
            labels::RUN: labels::label_value(&s.run.run_id),
            labels::SHARD: "1",
        }}}))["metadata"]["uid"]
        .as_str()
        .unwrap()
        .to_owned();
    f.backend.teardown(&s).await.unwrap();
    let delete = f
        .api
        .requests()
        .into_iter()
        .find(|r| r.method == "DELETE")
        .expect("deleted");
    assert_eq!(delete.json().unwrap()["preconditions"]["uid"], uid.as_str());
    assert!(f.api.namespace(&ns).is_none());

    // The same name, but not this run's: left alone.
    let other = shard(1);
    let other_ns = namespace_of(&other);
    f.api.insert_namespace(json!({"metadata": {"name": other_ns, "labels": {
        labels::MANAGED_BY: labels::MANAGED_BY_VALUE, labels::RUN: "someone-else", labels::SHARD: "1",
    }}}));
    f.api.clear_requests();
    f.backend.teardown(&other).await.unwrap();
    assert!(f.api.requests().iter().all(|r| r.method != "DELETE"));
    assert!(f.api.namespace(&other_ns).is_some());
}

const PREPULL: &str = r#"
backend = "kubernetes"
[kubernetes]
prepull = true
[services.db]
image = "postgres:15"
startup-timeout = "10s"
[services.cache]
image = "redis:7"
"#;

fn run_context() -> RunContext {
    shard(1).run
}

#[tokio::test]
async fn prepull_runs_a_daemon_set_until_every_node_is_ready_then_removes_it() {
    let f = fixture(PREPULL).await;
    f.api.set_lifecycle(quick().nodes(3));
    let run = run_context();
    f.backend
        .prepare(&run)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let requests = f.api.requests();
    let ds = requests
        .iter()
        .find(|r| r.method == "POST" && r.path.ends_with("/daemonsets"))
        .expect("a DaemonSet was created");
    let body = ds.json().unwrap();
    assert_eq!(body["metadata"]["name"], PREPULL_NAME);
    let ns = body["metadata"]["namespace"].as_str().unwrap().to_owned();
    assert!(ns.ends_with("-prepull"), "{ns}");
    let images: Vec<&str> = body["spec"]["template"]["spec"]["initContainers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["image"].as_str().unwrap())
        .collect();
    assert_eq!(images, ["redis:7", "postgres:15"]);
    let created_ns = requests
        .iter()
        .find(|r| r.method == "POST" && r.path == "/api/v1/namespaces")
        .and_then(|r| r.json())
        .unwrap();
    assert_eq!(
        created_ns["metadata"]["labels"][labels::MANAGED_BY],
        labels::MANAGED_BY_VALUE
    );
    assert_eq!(
        created_ns["metadata"]["labels"][labels::RUN],
        labels::label_value(&run.run_id)
    );
    assert!(requests
        .iter()
        .any(|r| r.method == "DELETE" && r.path == format!("/api/v1/namespaces/{ns}")));
    assert!(
        f.api.namespace(&ns).is_none(),
        "the prepull namespace is gone"
    );
    let selected = requests.iter().any(|r| {
        r.path == format!("/api/v1/namespaces/{ns}/pods")
            && r.param("labelSelector").as_deref() == Some(&format!("{PREPULL_LABEL}=true"))
    });
    assert!(
        selected,
        "the prepull pods were looked at for pull failures"
    );
}

#[tokio::test]
async fn prepull_reports_an_image_that_cannot_be_pulled_and_still_removes_its_namespace() {
    let f = fixture(PREPULL).await;
    f.api.set_lifecycle(quick().nodes(2).rule(
        "redis",
        Fate::PullFails {
            message: "rpc error: code = NotFound desc = failed to pull and unpack image \"docker.io/library/redis:7\": failed to resolve reference \"docker.io/library/redis:7\": docker.io/library/redis:7: not found".into(),
        },
    ));
    let run = run_context();
    let err = f.backend.prepare(&run).await.unwrap_err();
    let EnvError::Pull {
        image,
        registry,
        reason,
    } = &err
    else {
        panic!("not a pull failure: {err}")
    };
    assert_eq!(
        (image.as_str(), registry.as_str()),
        ("redis:7", "docker.io")
    );
    assert!(
        reason.starts_with(
            "it does not exist: Failed to pull image \"redis:7\": rpc error: code = NotFound"
        ),
        "{reason}"
    );
    let ns = ephem_fixtures::kubernetes::render::prepull_namespace_name("ephem", &run.run_id);
    assert!(
        f.api.namespace(&ns).is_none(),
        "the prepull namespace was left behind"
    );
}

#[tokio::test]
async fn prepull_waits_out_a_throttled_pull() {
    let f = fixture(PREPULL).await;
    f.api.set_lifecycle(quick().nodes(2).rule(
        "redis",
        Fate::PullFailsThen {
            message: "rpc error: code = Unknown desc = failed to pull and unpack image \"docker.io/library/redis:7\": 429 Too Many Requests - Server message: toomanyrequests: You have reached your pull rate limit.".into(),
            failures: 1,
            log: Vec::new(),
        },
    ));
    f.backend
        .prepare(&run_context())
        .await
        .unwrap_or_else(|e| panic!("a throttled pull is retried: {e}"));
}

#[tokio::test]
async fn without_prepull_prepare_does_nothing() {
    let f = fixture(TWO_SERVICES).await;
    f.api.clear_requests();
    f.backend.prepare(&run_context()).await.unwrap();
    assert!(f.api.requests().is_empty(), "{:?}", f.api.requests());
}

const HELM: &str = r#"
backend = "kubernetes"
[kubernetes.helm]
chart = "oci://registry.example/charts/api"
release = "api"
version = "1.2.3"
timeout = "90s"
values = { replicas = 1, image = { tag = "v2" } }
[services.db]
image = "postgres:15"
startup-timeout = "10s"
"#;

/// A fake `helm` in `dir` that records its arguments (and the values file)
/// and exits with `code` after printing `output`.
fn fake_helm(dir: &Path, code: i32, output: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let record = dir.join("helm-args");
    let script = format!(
        "#!/bin/sh\nprintf '%s\\n' \"$@\" > '{record}'\nwhile [ $# -gt 0 ]; do [ \"$1\" = -f ] && cat \"$2\" > '{record}.values'; shift; done\nprintf '%s\\n' '{output}'\nexit {code}\n",
        record = record.display()
    );
    let helm = bin.join("helm");
    std::fs::write(&helm, script).unwrap();
    std::fs::set_permissions(&helm, std::fs::Permissions::from_mode(0o755)).unwrap();
    bin
}

#[tokio::test]
async fn helm_installs_the_chart_into_the_shards_namespace_after_the_services() {
    let f = fixture(HELM).await;
    let bin = fake_helm(
        f.dir.path(),
        0,
        "Release \"api\" has been upgraded. Happy Helming!",
    );
    let backend = clone_backend(&f).with_helm_path(&bin);
    f.api.set_lifecycle(quick());
    let s = shard(1);
    let ns = namespace_of(&s);
    backend
        .provision(&s)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let args = std::fs::read_to_string(f.dir.path().join("helm-args")).unwrap();
    let args: Vec<&str> = args.lines().collect();
    assert_eq!(
        &args[..14],
        [
            "upgrade",
            "--install",
            "api",
            "oci://registry.example/charts/api",
            "--namespace",
            ns.as_str(),
            "--kube-context",
            "stand-in",
            "--atomic",
            "--wait",
            "--timeout",
            "90s",
            "--version",
            "1.2.3",
        ]
    );
    assert_eq!(args[14], "-f");
    let values: Value = serde_json::from_str(
        &std::fs::read_to_string(f.dir.path().join("helm-args.values")).unwrap(),
    )
    .unwrap();
    assert_eq!(values, json!({"replicas": 1, "image": {"tag": "v2"}}));
    assert!(
        !Path::new(args[15]).exists(),
        "the values file was left behind"
    );
    backend.teardown(&s).await.unwrap();
}

#[tokio::test]
async fn a_failing_helm_fails_the_shard_with_its_last_lines() {
    let f = fixture(HELM).await;
    let bin = fake_helm(
        f.dir.path(),
        1,
        "Error: UPGRADE FAILED: context deadline exceeded",
    );
    let backend = clone_backend(&f).with_helm_path(&bin);
    f.api.set_lifecycle(quick());
    let s = shard(1);
    let err = backend.provision(&s).await.unwrap_err();
    let EnvError::NotReady {
        service,
        reason,
        logs,
        ..
    } = &err
    else {
        panic!("{err}")
    };
    assert_eq!(service, "helm release api");
    assert_eq!(
        reason,
        "helm upgrade --install api oci://registry.example/charts/api exited with code 1"
    );
    assert_eq!(logs, &["Error: UPGRADE FAILED: context deadline exceeded"]);
    backend.teardown(&s).await.unwrap();
}

#[tokio::test]
async fn without_helm_on_path_the_error_says_how_to_install_it() {
    let f = fixture(HELM).await;
    f.api.set_lifecycle(quick());
    let s = shard(1);
    let err = f.backend.provision(&s).await.unwrap_err().to_string();
    assert_eq!(
        err,
        "shard 1: [kubernetes.helm] installs its chart with the helm binary, and there is no `helm` on PATH; install Helm (https://helm.sh/docs/intro/install/) or remove [kubernetes.helm] from ephem.toml"
    );
    f.backend.teardown(&s).await.unwrap();
}

/// A fake `helm` that does what a chart would: creates Service `api`
/// (target port `http`) and its pod `api-0` in the release's namespace,
/// through the stand-in's API, then returns once the pod had time to start.
fn chart_helm(dir: &Path, api: &StandIn) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let bin = dir.join("chart-bin");
    std::fs::create_dir_all(&bin).unwrap();
    let service = json!({"metadata": {"name": "api", "labels": {"app.kubernetes.io/instance": "app"}},
        "spec": {"selector": {"app": "api"}, "ports": [{"port": 80, "targetPort": "http"}]}});
    let pod = json!({"metadata": {"name": "api-0", "labels": {"app": "api"}},
        "spec": {"containers": [{"name": "api", "image": "api:1",
            "ports": [{"name": "http", "containerPort": 8000}]}]}});
    let script = format!(
        r#"#!/bin/sh
while [ $# -gt 0 ]; do [ "$1" = --namespace ] && NS=$2; shift; done
post() {{ curl -sf -X POST -H 'Authorization: Bearer {token}' -H 'Content-Type: application/json' "{url}/api/v1/namespaces/$NS/$1" -d "$2" > /dev/null || exit 1; }}
post services '{service}'
post pods '{pod}'
sleep 0.5
echo 'Release "app" has been upgraded.'
"#,
        token = api.token(),
        url = api.url(),
    );
    let helm = bin.join("helm");
    std::fs::write(&helm, script).unwrap();
    std::fs::set_permissions(&helm, std::fs::Permissions::from_mode(0o755)).unwrap();
    bin
}

const CHART_EXPORT: &str = r#"
backend = "kubernetes"
[kubernetes.helm]
chart = "./charts/api"
[services.db]
image = "postgres:15"
export = { API_URL = "http://${service.api}/v1" }
"#;

#[tokio::test]
async fn exports_reach_the_charts_services_by_name() {
    let f = fixture(CHART_EXPORT).await;
    let backend = clone_backend(&f).with_helm_path(chart_helm(f.dir.path(), &f.api));
    f.api.set_lifecycle(quick());
    f.api.forward(None, "api-0", 8000, line_server().await);
    let s = shard(1);
    let env = backend
        .provision(&s)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let url = var(&env, "API_URL");
    let addr = url
        .strip_prefix("http://")
        .and_then(|u| u.strip_suffix("/v1"))
        .unwrap_or_else(|| panic!("{url}"));
    assert!(addr.starts_with("127.0.0.1:"), "{url}");
    assert_eq!(ask(addr, "ping").await, "ok ping");
    assert!(
        env.connect_hints.iter().any(|h| h.starts_with(&format!(
            "service api of release app: {addr} -> pod api-0:8000"
        ))),
        "{:?}",
        env.connect_hints
    );
    backend.teardown(&s).await.unwrap();
}

#[test]
fn chart_services_are_checked_where_they_are_written() {
    let err = EphemConfig::parse(
        &CHART_EXPORT.replace("[kubernetes.helm]\nchart = \"./charts/api\"\n", ""),
        "ephem.toml",
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("services.db.export.API_URL: ${service.api} names a Service of the [kubernetes.helm] chart, and there is none"),
        "{err}"
    );
    let in_env = CHART_EXPORT.replace("export = {", "env = { X = \"${service.api}\" }\nexport = {");
    let err = EphemConfig::parse(&in_env, "ephem.toml")
        .unwrap_err()
        .to_string();
    assert!(err.contains("services.db.env.X: ${service.api} is only known once the Helm chart is installed; use it in export"), "{err}");
}

#[tokio::test]
async fn a_forbidden_create_names_the_verb_and_the_resource() {
    let f = fixture(TWO_SERVICES).await;
    f.api.forbid("create", "pods");
    let s = shard(1);
    let err = f.backend.provision(&s).await.unwrap_err().to_string();
    assert!(
        err.contains(&format!(
            "forbids create on pods in namespace {}",
            namespace_of(&s)
        )) && err.contains("examples/kubernetes/rbac.yaml"),
        "{err}"
    );
    f.backend.teardown(&s).await.unwrap();
    f.api.forbid("create", "namespaces");
    let err = f
        .backend
        .provision(&shard(1))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("forbids create on namespaces at the cluster scope"),
        "{err}"
    );
}

#[tokio::test]
async fn an_unreachable_cluster_fails_within_5s_naming_context_and_server() {
    // A server that accepts connections and never answers.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let _hold = std::thread::spawn(move || {
        let held: Vec<_> = listener.incoming().take(4).collect();
        std::thread::sleep(Duration::from_secs(10));
        drop(held);
    });
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("config");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: http://{addr}\nusers:\n- name: u\n  user:\n    token: t\ncontexts:\n- name: ci-cluster\n  context:\n    cluster: c\n    user: u\ncurrent-context: ci-cluster\n"
        ),
    )
    .unwrap();
    let config = EphemConfig::parse(TWO_SERVICES, "ephem.toml").unwrap();
    let (tx, _) = unbounded_channel();
    let started = Instant::now();
    let err = KubernetesBackend::connect_with(&[kubeconfig], config, tx)
        .await
        .err()
        .expect("no cluster answers")
        .to_string();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(
        err.contains(&format!("http://{addr}")) && err.contains("context ci-cluster"),
        "{err}"
    );
}
